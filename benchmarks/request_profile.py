"""Where a text request's time goes, in a served Flow.

    python benchmarks/request_profile.py [FLOW_YAML] [--seconds S] [--requests N] [--texts-per-request K]

Starts the Flow (random weights of its model, as `python -m clip_server.benchmark --random-weights`)
and measures two things:

1. One request of K texts (default 1) at a time: the latency the client sees, split by the
   timestamps jina records on each hop of the response (gateway in, each executor's start and
   end, gateway out), beside the model's own time for the same texts in-process.
2. 16 single-text requests in flight: the CPU seconds each process of the server (gateway, each
   executor) and the client spend per request, read from /proc before and after.

Prints both tables; docs/benchmark.md ("Where a request's time goes") holds a run of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from docarray import Document, DocumentArray

from clip_server.benchmark.flows import (
    encoder_options,
    executor_config,
    executor_runtime,
    read_flow,
    use_local_ports,
    use_random_weights,
)
from clip_server.benchmark.inputs import captions
from clip_server.benchmark.processes import ServerProcess, free_port, session_pids
from clip_server.model import factory
from clip_server.model.factory import resolve
from clip_server.model.registry import DEFAULT_MODEL

TICKS = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def process_roles(server: ServerProcess) -> dict[int, str]:
    """Each process of the server named by what it runs (jina's log lines say `name/rep-0@pid`)."""
    named = {int(pid): name for name, pid in re.findall(r'(\S+)/rep-\d+@(\d+)', server.log_tail(10_000))}
    named[server.process.pid] = 'python -m clip_server'
    return {pid: named.get(pid, '?') for pid in session_pids(server.process.pid)}


def seconds_of(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def hop_breakdown(client, texts: list[str], requests: int, size: int = 1) -> dict[str, list[float]]:
    """Milliseconds per part of a request of `size` texts, one request at a time, from jina's route timestamps."""
    parts: dict[str, list[float]] = {}
    for i in range(requests):
        docs = DocumentArray(Document(text=texts[(i * size + j) % len(texts)]) for j in range(size))
        sent = time.time()
        [response] = client.post('/encode', docs, request_size=size, return_responses=True)
        received = time.time()
        routes = list(response.routes)
        marks = [('client -> gateway', sent)]
        for route in routes[1:]:
            marks.append((f'-> {route.executor}', seconds_of(route.start_time)))
            marks.append((f'{route.executor}', seconds_of(route.end_time)))
        marks.append(('-> client', received))
        for (_, before), (name, after) in zip(marks, marks[1:], strict=False):
            parts.setdefault(name, []).append((after - before) * 1000)
        parts.setdefault('total', []).append((received - sent) * 1000)
    return parts


def model_ms(flow: dict, texts: list[str], requests: int, size: int = 1) -> float:
    """The median time the Flow's model takes for `size` texts, in this process (as many threads as the server)."""
    config = executor_config(flow)
    spec = resolve(config.params.get('name', DEFAULT_MODEL))
    options = encoder_options(config, threads=os.cpu_count() or 1)
    model_input = factory.preprocessor(spec, options.model_path)
    encoder = factory.build_encoder(spec, executor_runtime(config), options, model_input)
    times = []
    for i in range(requests):
        begun = time.perf_counter()
        encoder.encode_text(model_input.tokenize([texts[(i * size + j) % len(texts)] for j in range(size)]))
        times.append((time.perf_counter() - begun) * 1000)
    return statistics.median(times)


def cpu_per_request(client, session: int, texts: list[str], seconds: float, in_flight: int = 16):
    """CPU milliseconds per request of each server process and of this client, under load."""
    pids = session_pids(session)
    before = {pid: cpu_seconds(pid) for pid in pids}
    own_before = time.process_time()
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.aencode([texts[done % len(texts)]], show_progress=False)
            done += 1

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(in_flight)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    used = {pid: (cpu_seconds(pid) - before[pid]) * 1000 / done for pid in pids}
    client_ms = (time.process_time() - own_before) * 1000 / done
    return done / elapsed, used, client_ms


def _sample(pid: int, role: str, folder: Path, seconds: float) -> subprocess.Popen:
    """py-spy's collapsed stacks of one process over the loaded seconds (`pip install py-spy`)."""
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f'{role.replace(" ", "_")}.txt'
    command = ['py-spy', 'record', '--pid', str(pid), '--duration', str(int(seconds)), '--format', 'raw']
    return subprocess.Popen([*command, '--nonblocking', '--output', str(output)], stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('flow_yaml', nargs='?', default='torch-flow.yml')
    parser.add_argument('--seconds', type=float, default=10)
    parser.add_argument('--requests', type=int, default=200)
    parser.add_argument('--texts-per-request', type=int, default=1, help='texts in each timed request (default 1)')
    parser.add_argument('--py-spy', type=Path, metavar='DIR', help="also sample each process's stacks under load")
    args = parser.parse_args()
    from clip_client import Client as ClipClient
    from jina import Client

    flow = read_flow(args.flow_yaml)
    texts = captions(256)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        use_random_weights(flow, resolve(executor_config(flow).params.get('name', DEFAULT_MODEL)), folder)
        port = use_local_ports(flow, free_port)
        with ServerProcess(flow, port, folder, 'profiled') as server:
            clip = ClipClient(f'grpc://127.0.0.1:{port}')
            server.cold_start(lambda: clip.encode(texts[:1], show_progress=False))
            jina_client = Client(host='127.0.0.1', port=port, protocol='grpc')
            size = args.texts_per_request
            hop_breakdown(jina_client, texts, 20, size)  # warm-up
            parts = hop_breakdown(jina_client, texts, args.requests, size)
            roles = process_roles(server)
            sampled = roles.items() if args.py_spy else []
            samplers = [_sample(pid, role, args.py_spy, args.seconds) for pid, role in sampled]
            rate, used, client_ms = cpu_per_request(clip, server.process.pid, texts, args.seconds)
            for sampler in samplers:
                sampler.wait()
        model_alone = model_ms(flow, texts, args.requests, size)
    print(f'one request at a time ({args.requests} requests of {size} texts), median ms:')
    for name, values in parts.items():
        print(f'  {name:<28} {statistics.median(values):7.2f}')
    print(f'  {"model alone, same texts":<28} {model_alone:7.2f}')
    print(f'\n16 single-text requests in flight: {rate:.1f} requests/s; CPU ms per request:')
    for pid, ms in sorted(used.items(), key=lambda item: -item[1]):
        print(f'  {roles.get(pid, "?"):<28} {ms:7.2f}')
    print(f'  {"client (this process)":<28} {client_ms:7.2f}')


if __name__ == '__main__':
    main()
