"""Throughput of a Flow as clip_client sees it, beside the same model in-process and plain open_clip.

    python -m clip_server.benchmark FLOW_YAML [--seconds 8] [--skip-ceiling] [--skip-yardstick] [--texts-file F]

Everything is measured in one run on one machine, one cell after another (never two at once), so
the rows compare: what serving costs over the model in-process, what the gateway alone can carry
(a no-op executor behind the same gateway: the ceiling), and how the Flow's runtime and dtype fare
against open_clip in fp32 (the yardstick). docs/benchmark.md explains each row.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import io
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from clip_server.model import factory
from clip_server.model.factory import EncoderOptions, resolve
from clip_server.model.quiet import without_log
from clip_server.model.registry import DEFAULT_MODEL, ModelSpec
from clip_server.types import ClipServerError, Runtime, require

BATCH = 32  # items per request of the single client, and per in-process batch
IN_FLIGHT = 16  # concurrent single-item requests from the one async client
START_TIMEOUT = 1800.0  # seconds; a first start may download and convert a model


class BenchmarkError(Exception):
    """A Flow this benchmark cannot measure, or a server that failed; the message says which."""


# ----------------------------------------------------------------------------- inputs

_SUBJECTS = (
    'a golden retriever',
    'two children in matching red jackets',
    'an old fisherman',
    'a vintage blue car',
    'a steaming bowl of ramen',
    'a young woman holding an umbrella',
    'a flock of seagulls',
    'a small wooden sailboat',
    'a sleepy tabby cat',
    'a cyclist in a bright helmet',
    'a stack of old books',
    'a street musician with a guitar',
)
_ACTIONS = ('running along', 'sitting next to', 'parked in front of', 'waiting near', 'resting on', 'passing by')
_PLACES = (
    'a sandy beach',
    'a busy city street',
    'a snowy mountain trail',
    'the kitchen table',
    'a crowded night market',
    'an empty parking lot',
    'a quiet library',
    'a field of sunflowers',
)
_DETAILS = (
    'at sunset',
    'in the rain',
    'on a foggy morning',
    'with tall trees in the background',
    'under a clear blue sky',
    'surrounded by tourists',
    'in black and white',
    'seen from above',
    'lit by neon signs',
)


def captions(count: int, seed: int = 0) -> list[str]:
    """Photo captions of varied length (about 10 to 25 tokens), the same on every run."""
    rng = random.Random(seed)
    return [
        ' '.join(
            [rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_PLACES), *rng.sample(_DETAILS, rng.randint(1, 2))]
        )
        for _ in range(count)
    ]


def photo_jpeg(seed: int, width: int = 640, height: int = 480) -> bytes:
    """A JPEG that decodes and compresses like a photo: a gradient, soft shapes and sensor grain.

    Pure noise would make files several times larger than photos, and slower to send and decode.
    """
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(0, 255, (2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, width / 4), rng.uniform(20, height / 4)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
    pixels += rng.normal(0, 5, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def batches(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive slices of `size`, round and round, so successive requests differ."""
    return itertools.cycle([list(items[i : i + size]) for i in range(0, len(items) - size + 1, size)])


# ----------------------------------------------------------------------------- the Flow YAML


class _FlowLoader(yaml.SafeLoader):
    """Reads jina's tagged mappings (`uses: !CLIPEncoder {...}`) as mappings with that `jtype`."""


def _construct_tagged(loader: _FlowLoader, tag: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {'jtype': tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_FlowLoader.add_multi_constructor('!', _construct_tagged)


def load_flow(text: str) -> dict:
    """The Flow YAML as plain data; jina's tags become `jtype:` keys, which jina reads the same."""
    flow = yaml.load(text, Loader=_FlowLoader)
    if not isinstance(flow, dict) or flow.get('jtype') != 'Flow':
        raise BenchmarkError('the YAML does not describe a Flow: expected a mapping with "jtype: Flow"')
    return flow


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def absolute_py_modules(flow: dict, base_dir: Path) -> None:
    """Make relative `.py` paths absolute: the server reads a copy of the YAML from another folder."""
    for executor in flow.get('executors') or []:
        uses = executor.get('uses')
        holders = [executor, *([uses.get('metas') or {}] if isinstance(uses, dict) else [])]
        for holder in holders:
            if 'py_modules' in holder:
                holder['py_modules'] = [_absolute(entry, base_dir) for entry in _as_list(holder['py_modules'])]


def _absolute(entry: str, base_dir: Path) -> str:
    path = Path(entry).expanduser()
    if entry.endswith('.py') and not path.is_absolute() and (base_dir / path).exists():
        return str(base_dir / path)
    return entry


def use_local_ports(flow: dict, free_port: Callable[[], int]) -> int:
    """Serve the gateway on 127.0.0.1 with free ports (one per protocol); returns the gRPC one."""
    settings = flow.get('with') or {}
    gateway = flow.get('gateway') or {}
    if 'ssl_certfile' in settings or 'ssl_certfile' in gateway:
        raise BenchmarkError('the Flow serves TLS; the benchmark connects in plaintext, so give it a Flow without TLS')
    protocols = [str(p).lower() for p in _as_list(settings.get('protocol', 'grpc'))]
    if 'grpc' not in protocols:
        raise BenchmarkError(f'the Flow serves {", ".join(protocols)}; the benchmark needs gRPC among its protocols')
    ports = [free_port() for _ in protocols]
    settings['port'] = ports if isinstance(settings.get('protocol'), list) else ports[0]
    settings['host'] = '127.0.0.1'
    flow['with'] = settings
    return ports[protocols.index('grpc')]


def ceiling_flow(flow: dict, dim: int) -> dict:
    """The same Flow with a no-op executor in place of the encoder (the executors after it,
    such as `InputErrors`, kept): the ceiling of the serving stack around the model."""
    noop = {
        'jtype': 'BenchmarkNoopEncoder',
        'with': {'dim': dim},
        'metas': {'py_modules': ['clip_server.benchmark_noop']},
    }
    return {**flow, 'executors': [{'name': 'noop', 'uses': noop}, *flow['executors'][1:]]}


@dataclass(frozen=True)
class ExecutorConfig:
    """The Flow's one executor: its class, the modules that define it, its `with:` and replicas."""

    jtype: str
    py_modules: tuple[str, ...]
    params: dict
    replicas: int = 1
    omp_threads: int | None = None  # OMP_NUM_THREADS in the executor's own `env:`


def executor_config(flow: dict) -> ExecutorConfig:
    """Read the encoder (the Flow's first executor; `InputErrors` may follow it) as jina would:
    `uses:` with its `with:` and `metas:`, overridden by `uses_with:`."""
    executors = flow.get('executors') or []
    if not executors:
        raise BenchmarkError('the Flow has no executor; the benchmark measures its first one, the encoder')
    executor = executors[0]
    uses = executor.get('uses')
    if not isinstance(uses, dict) or 'jtype' not in uses:
        raise BenchmarkError('the executor\'s "uses:" must be a mapping with "jtype:", as in the bundled Flow YAMLs')
    modules = _as_list((uses.get('metas') or {}).get('py_modules')) + _as_list(executor.get('py_modules'))
    omp = (executor.get('env') or {}).get('OMP_NUM_THREADS')
    return ExecutorConfig(
        jtype=uses['jtype'],
        py_modules=tuple(modules),
        params={**(uses.get('with') or {}), **(executor.get('uses_with') or {})},
        replicas=int(executor.get('replicas', 1)),
        omp_threads=int(omp) if omp else None,
    )


def encoder_options(config: ExecutorConfig, threads: int) -> EncoderOptions:
    """The options the executor gives the factory, with `threads` unless the YAML sets them."""
    params = config.params
    return EncoderOptions(
        model_path=params.get('model_path'),
        device=params.get('device'),
        dtype=params.get('dtype'),
        jit=bool(params.get('jit', False)),
        threads=params.get('intra_op_threads') or config.omp_threads or threads,
        max_batch=minibatch_size(config),
    )


def minibatch_size(config: ExecutorConfig) -> int:
    return int(config.params.get('minibatch_size', 32))


def executor_runtime(config: ExecutorConfig) -> Runtime:
    """Import the py_modules as jina does (they may register models) and ask the executor class."""
    runtime = None
    for module in map(_import, config.py_modules):
        executor_class = getattr(module, config.jtype, None)
        if isinstance(getattr(executor_class, 'runtime', None), Runtime):
            runtime = executor_class.runtime
    if runtime is None:
        raise BenchmarkError(f'no CLIPEncoder named {config.jtype} in py_modules {", ".join(config.py_modules)}')
    return runtime


def _import(entry: str) -> ModuleType:
    if not entry.endswith('.py'):
        return importlib.import_module(entry)
    spec = importlib.util.spec_from_file_location(Path(entry).stem, entry)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f'cannot import py_module {entry}')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


_READY_LINE = re.compile(r'(\S+) ready on (.+?), (\d+)-d embeddings')


class ServerProcess:
    """`python -m clip_server` serving a copy of the Flow, in its own session so its processes can be found."""

    def __init__(self, flow: dict, port: int, folder: Path, name: str):
        self.port = port
        yaml_path = folder / f'{name}.yml'
        yaml_path.write_text(yaml.safe_dump(flow, sort_keys=False))
        self.log_path = folder / f'{name}.log'
        env = {**os.environ, 'COLUMNS': '1000'}  # jina's logs would wrap at 80 columns in a file
        with open(self.log_path, 'wb') as log:
            self.spawned = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'clip_server', str(yaml_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def cold_start(self, encode: Callable[[], object], timeout: float = START_TIMEOUT) -> float:
        """Seconds from spawning the server to the end of its first successful encode."""
        from jina import Client

        probe = Client(host='127.0.0.1', port=self.port, protocol='grpc')
        while time.perf_counter() - self.spawned < timeout:
            if self.process.poll() is not None:
                raise BenchmarkError(f'the server exited with status {self.process.returncode}:\n{self.log_tail()}')
            # jina's client logs an error for each probe of a server still starting
            with without_log(logger=probe.logger.logger):
                ready = probe.is_flow_ready(timeout=1)
            if ready:
                encode()
                return time.perf_counter() - self.spawned
            time.sleep(0.2)
        raise BenchmarkError(f'the server did not get ready within {timeout:.0f} s:\n{self.log_tail()}')

    def ready_line(self) -> str | None:
        """The executor's own words on what it runs: '<model> ready on <runtime>, <device and dtype>'."""
        match = _READY_LINE.search(self.log_path.read_text(errors='replace'))
        return match and f'{match[1]} on {match[2]}, {match[3]}-d embeddings'

    def peak_rss(self) -> tuple[int, int] | None:
        """(bytes, processes): the sum over the server's processes of each one's peak resident set.

        An upper bound of the tree's peak, as each process peaks at its own time. None without /proc.
        """
        peaks = [_vm_hwm(pid) for pid in session_pids(self.process.pid)]
        peaks = [peak for peak in peaks if peak is not None]
        return (sum(peaks), len(peaks)) if peaks else None

    def log_tail(self, lines: int = 40) -> str:
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        interrupt(self.process, timeout)


def interrupt(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ctrl-C, as a user stops a server started in its own session; the whole session is killed
    if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def session_pids(session: int, proc: Path = Path('/proc')) -> list[int]:
    """The processes of a session (a server started with start_new_session leads its own)."""
    pids = []
    for stat in proc.glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rpartition(')')[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == session:
            pids.append(int(stat.parent.name))
    return pids


def _vm_hwm(pid: int) -> int | None:
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return None
    match = re.search(r'^VmHWM:\s+(\d+) kB', status, re.MULTILINE)
    return int(match[1]) * 1024 if match else None


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Rate:
    """Items per second of one cell, and the latency of each call it made (a request or a batch)."""

    per_second: float
    latencies_ms: tuple[float, ...]

    def percentiles(self) -> tuple[float, float]:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return float(p50), float(p99)


@dataclass(frozen=True)
class Row:
    what: str
    texts: Rate | None
    images: Rate | None


def timed(call: Callable[[], int], seconds: float) -> Rate:
    """Repeat `call` (which returns how many items it did) for `seconds`, after one untimed warm-up."""
    call()
    latencies, items = [], 0
    started = time.perf_counter()
    while (begun := time.perf_counter()) - started < seconds:
        items += call()
        latencies.append((time.perf_counter() - begun) * 1000)
    return Rate(items / (time.perf_counter() - started), tuple(latencies))


def timed_in_flight(call: Callable[[], Awaitable[int]], seconds: float, in_flight: int = IN_FLIGHT) -> Rate:
    """`in_flight` tasks repeat `call` for `seconds`, so that many requests are always outstanding."""
    latencies: list[float] = []
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while (begun := time.perf_counter()) < deadline:
            items = await call()  # not `done += await ...`, which reads `done` before awaiting
            done += items
            latencies.append((time.perf_counter() - begun) * 1000)

    async def run() -> float:
        await asyncio.gather(*(call() for _ in range(in_flight)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(in_flight)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return Rate(done / elapsed, tuple(latencies))


def _image_docs(jpegs: Sequence[bytes]) -> Any:
    """Fresh Documents per request: clip_client writes embeddings into those it sends."""
    from docarray import Document, DocumentArray

    return DocumentArray(Document(blob=jpeg, mime_type='image/jpeg') for jpeg in jpegs)


def client_rows(client: Any, label: str, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float) -> list[Row]:
    """The two loads: one client sending requests of BATCH, and IN_FLIGHT single-item requests."""
    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    single_texts, single_jpegs = itertools.cycle(texts), itertools.cycle(jpegs)

    def encode(content: Any) -> int:
        return len(client.encode(content, batch_size=BATCH, show_progress=False))

    async def aencode(content: Any) -> int:
        return len(await client.aencode(content, show_progress=False))

    return [
        Row(
            f'{label}, 1 client, requests of {BATCH}',
            timed(lambda: encode(next(text_batches)), seconds),
            timed(lambda: encode(_image_docs(next(jpeg_batches))), seconds),
        ),
        Row(
            f'{label}, {IN_FLIGHT} single-item requests in flight',
            timed_in_flight(lambda: aencode([next(single_texts)]), seconds),
            timed_in_flight(lambda: aencode(_image_docs([next(single_jpegs)])), seconds),
        ),
    ]


@dataclass(frozen=True)
class ServerResult:
    rows: list[Row]
    cold_start_s: float
    peak_rss: tuple[int, int] | None = None
    ready_line: str | None = None


def measure_server(
    flow: dict, folder: Path, name: str, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float
) -> ServerResult:
    """Start the Flow, wait for its first encode, run both loads, and stop it."""
    client_module = require('clip_client', 'test')
    flow = {**flow, 'with': dict(flow.get('with') or {})}
    port = use_local_ports(flow, free_port)
    with ServerProcess(flow, port, folder, name) as server:
        client = client_module.Client(f'grpc://127.0.0.1:{port}')
        cold = server.cold_start(lambda: client.encode(texts[:1], show_progress=False))
        rows = client_rows(client, name, texts, jpegs, seconds)
        return ServerResult(rows, cold, server.peak_rss(), server.ready_line())


def in_process_row(
    spec: ModelSpec,
    runtime: Runtime,
    options: EncoderOptions,
    texts: Sequence[str],
    jpegs: Sequence[bytes],
    seconds: float,
) -> tuple[Row, str]:
    """The Flow's model built as its executor builds it, with preprocessing, in batches of BATCH."""
    from clip_server.executors.content import image_from_bytes

    model_input = factory.preprocessor(spec, options.model_path)
    encoder = factory.build_encoder(spec, runtime, options, model_input)
    size = options.max_batch  # the executor's minibatch_size

    def encode_texts(batch: list[str]) -> int:
        for start in range(0, len(batch), size):
            encoder.encode_text(model_input.tokenize(batch[start : start + size]))
        return len(batch)

    def encode_images(batch: list[bytes]) -> int:
        for start in range(0, len(batch), size):
            jpegs = batch[start : start + size]
            pixels = [model_input.pixels(image_from_bytes(jpeg, min_side=2 * spec.image_size)) for jpeg in jpegs]
            encoder.encode_image(np.stack(pixels))
        return len(batch)

    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    row = Row(
        f'in-process {runtime.label} {encoder.dtype}, batch {BATCH}',
        timed(lambda: encode_texts(next(text_batches)), seconds),
        timed(lambda: encode_images(next(jpeg_batches)), seconds),
    )
    return row, f'{runtime.label}, {encoder.description}'


def yardstick_row(
    spec: ModelSpec, options: EncoderOptions, texts: Sequence[str], jpegs: Sequence[bytes], seconds: float
) -> Row:
    """open_clip as its README uses it, in fp32 with as many threads: the same weights file if any, else random ones."""
    import open_clip
    import torch

    model_path = options.model_path
    torch.set_num_threads(options.threads)
    weights = str(model_path) if model_path and Path(model_path).expanduser().is_file() else None
    model, _, transform = open_clip.create_model_and_transforms(spec.arch, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)  # pads every text to the 77-token context

    def encode_images(batch: list[bytes]) -> int:
        return len(model.encode_image(torch.stack([transform(Image.open(io.BytesIO(jpeg))) for jpeg in batch])))

    text_batches, jpeg_batches = batches(texts, BATCH), batches(jpegs, BATCH)
    with torch.inference_mode():
        return Row(
            f'yardstick: open_clip {spec.arch} fp32, batch {BATCH}',
            timed(lambda: len(model.encode_text(tokenizer(next(text_batches)))), seconds),
            timed(lambda: encode_images(next(jpeg_batches)), seconds),
        )


# ----------------------------------------------------------------------------- the report

HEADER = (
    'what',
    'texts/s',
    'images/s',
    'texts vs yardstick',
    'images vs yardstick',
    'text p50/p99 ms',
    'image p50/p99 ms',
)


def ratio(rate: Rate | None, base: Rate | None) -> str:
    return f'{rate.per_second / base.per_second:.2f}' if rate and base else '–'


def _per_second(rate: Rate | None) -> str:
    return f'{rate.per_second:.1f}' if rate else '–'


def _latency(rate: Rate | None) -> str:
    return '{:.1f} / {:.1f}'.format(*rate.percentiles()) if rate and rate.latencies_ms else '–'


def markdown_table(rows: Sequence[Row], yardstick: Row | None) -> str:
    """One line per row; the ratio columns are empty without a yardstick."""
    lines = [HEADER, ('---',) * len(HEADER)]
    for row in rows:
        texts_base, images_base = (yardstick.texts, yardstick.images) if yardstick else (None, None)
        lines.append(
            (
                row.what,
                _per_second(row.texts),
                _per_second(row.images),
                ratio(row.texts, texts_base),
                ratio(row.images, images_base),
                _latency(row.texts),
                _latency(row.images),
            )
        )
    return '\n'.join(f'| {" | ".join(cells)} |' for cells in lines)


def server_ratios(server_rows: Sequence[Row], in_process: Row) -> list[str]:
    """How much of the in-process rate each server load keeps."""
    return [
        f'server / in-process, {row.what}: texts {ratio(row.texts, in_process.texts)}, '
        f'images {ratio(row.images, in_process.images)}'
        for row in server_rows
    ]


def cpu_name(cpuinfo: Path = Path('/proc/cpuinfo')) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ''
    match = re.search(r'^model name\s*:\s*(.+)$', text, re.MULTILINE)
    return match[1].strip() if match else 'unknown'


def _mib(size: int) -> str:
    return f'{size / (1 << 20):.0f} MiB'


def machine_lines(server: ServerResult, flow_line: str, in_process_line: str, threads: int) -> list[str]:
    rss = server.peak_rss
    return [
        f'CPU: {cpu_name()}; cores: {os.cpu_count()}; inference threads in-process: {threads}',
        f'flow: {flow_line}',
        f'in-process: {in_process_line}',
        f'cold start: {server.cold_start_s:.1f} s (spawning `python -m clip_server` to its first encoded text)',
        'peak RSS of the server: '
        + (f'{_mib(rss[0])} (sum of the peaks of its {rss[1]} processes)' if rss else 'unknown (no /proc)'),
    ]


# ----------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m clip_server.benchmark', description=__doc__.splitlines()[0])
    parser.add_argument('flow_yaml', metavar='FLOW_YAML', help='the Flow to measure, or a bundled one (torch-flow.yml)')
    parser.add_argument('--seconds', type=float, default=8.0, help='measuring time of each cell (default: 8)')
    parser.add_argument('--skip-ceiling', action='store_true', help='do not measure the gateway with a no-op executor')
    parser.add_argument('--skip-yardstick', action='store_true', help='do not measure open_clip in fp32')
    parser.add_argument('--texts-file', type=Path, help='texts to send, one per line (default: generated captions)')
    parser.add_argument(
        '--random-weights',
        action='store_true',
        help="serve random weights of the model's architecture: no download, same speed (open_clip models)",
    )
    return parser.parse_args(argv)


def use_random_weights(flow: dict, spec: ModelSpec, folder: Path) -> None:
    """Point the encoder at a random state dict of `spec`'s architecture, saved in `folder`, with
    its cache there too (exports of these weights are of no use later). Weights do not change speed."""
    import torch

    from clip_server.model.families.openclip import create_open_clip_model

    if factory.builder_for(spec).checkpoint_is_folder:
        raise BenchmarkError(f'--random-weights serves open_clip models; {spec.name} needs a checkpoint folder')
    path = folder / 'random-weights.pt'
    try:
        torch.save(create_open_clip_model(spec, None).state_dict(), path)
    except Exception as e:  # e.g. a `transformers` text tower whose config is not cached
        raise BenchmarkError(f'--random-weights cannot build {spec.name} here: {e}') from e
    executor = flow['executors'][0]
    executor['uses_with'] = {**(executor.get('uses_with') or {}), 'model_path': str(path)}
    os.environ['CLIP_SERVER_CACHE'] = str(folder / 'cache')


def _read_flow(name: str) -> dict:
    from clip_server.__main__ import BUNDLED_FLOWS, bundled_flow

    source = bundled_flow(name) if name in BUNDLED_FLOWS else Path(name).expanduser()
    try:
        flow = load_flow(source.read_text(encoding='utf-8'))
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f'cannot read {name}: {e}') from e
    absolute_py_modules(flow, Path(name).expanduser().resolve().parent)
    return flow


def _texts(path: Path | None) -> list[str]:
    if path is None:
        return captions(256)
    texts = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    if len(texts) < BATCH:
        raise BenchmarkError(f'{path} has {len(texts)} texts; give at least {BATCH}')
    return texts


def _flow_line(server: ServerResult, spec: ModelSpec, runtime: Runtime, config: ExecutorConfig) -> str:
    described = server.ready_line or f'{spec.name} on {runtime.label}, dtype {config.params.get("dtype", "default")}'
    return f'{described}; replicas: {config.replicas}'


def run(args: argparse.Namespace) -> str:
    """Every measurement in sequence; returns the report."""
    flow = _read_flow(args.flow_yaml)
    runtime = executor_runtime(executor_config(flow))
    spec = resolve(executor_config(flow).params.get('name', DEFAULT_MODEL))
    texts, jpegs = _texts(args.texts_file), [photo_jpeg(seed) for seed in range(2 * BATCH)]
    threads = int(os.environ.get('OMP_NUM_THREADS') or 0) or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix='clip-benchmark-') as scratch:
        if args.random_weights:
            use_random_weights(flow, spec, Path(scratch))
        config = executor_config(flow)
        server = measure_server(flow, Path(scratch), 'server', texts, jpegs, args.seconds)
        rows = list(server.rows)
        if not args.skip_ceiling:
            ceiling = ceiling_flow(flow, spec.dim)
            rows += measure_server(ceiling, Path(scratch), 'ceiling', texts, jpegs, args.seconds).rows
        options = encoder_options(config, threads)
        in_process, in_process_line = in_process_row(spec, runtime, options, texts, jpegs, args.seconds)
        rows.append(in_process)
        yardstick = None
        if not args.skip_yardstick:
            yardstick = yardstick_row(spec, options, texts, jpegs, args.seconds)
            rows.append(yardstick)
    lines = machine_lines(server, _flow_line(server, spec, runtime, config), in_process_line, options.threads)
    return '\n'.join([*lines, '', markdown_table(rows, yardstick), '', *server_ratios(server.rows, in_process)])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = _parse_args(argv)
    # Measure the server, not jina's telemetry posts or clip_client's online version check.
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    os.environ.setdefault('NO_VERSION_CHECK', '1')
    os.environ.setdefault('JINA_HIDE_SURVEY', '1')
    try:
        print(run(args))
    except (BenchmarkError, ClipServerError) as e:
        print(f'clip_server.benchmark: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
