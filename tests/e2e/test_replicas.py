"""Replica supervision (clip_server.supervision) on real servers with two encoder replicas.

A replica that dies is logged at ERROR and replaced on its own port while the other one serves;
a crash loop stops the server with a non-zero status; SIGTERM stops it at once, where jina alone
waited 60 s for each dead replica.

Each replica process announces itself through a probe module that the YAML lists in
`py_modules`: jina imports it in every replica process, replacements included, so the probe's
lines name each replica's processes in the order they started.
"""

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import requests
from clip_client import Client

from clip_server.benchmark.processes import session_pids
from helpers import Server, flow_yaml, free_port, start_server

# One line per replica process, appended to a file kept for these lines in a single write (atomic
# with O_APPEND), not printed to the server's stdout, where another process's log line could cut into it.
PROBE = """import os
line = f"replica-start name={os.environ.get('JINA_DEPLOYMENT_NAME')} pid={os.getpid()}\\n"
log = os.open(os.environ['REPLICA_PROBE'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(log, line.encode())
os.close(log)
"""
PROBE_LINE = re.compile(r'^replica-start name=(\S+) pid=(\d+)$', re.M)
PROBE_LOG = 'replica-starts.txt'
# A clean stop takes a second or two; jina alone waited timeout_ctrl (60 s) per dead replica.
PROMPT_STOP_SECONDS = 15


def start_supervised(tiny_weights, folder: Path, monitoring: list[int] | None = None) -> Server:
    """Serve two replicas of the tiny encoder, each with its monitoring port if `monitoring` gives
    them; return once the Flow has started, which is when supervision begins (the gateway may
    answer before: when one replica of each executor is up)."""
    probe = folder / 'replica_probe.py'
    probe.write_text(PROBE)
    # jina exports JINA_DEPLOYMENT_NAME, which the probe prints, only to executors with an env: of their own
    extra = f'\n    replicas: 2\n    env: {{REPLICA_PROBE: {folder / PROBE_LOG}}}'
    if monitoring:
        extra += f'\n    monitoring: true\n    port_monitoring: [{monitoring[0]}, {monitoring[1]}]'
    port = free_port()
    text = flow_yaml(
        port,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'num_worker_preprocess': 1},
        executor_extra=extra,
    )
    text = text.replace('      py_modules:\n', f'      py_modules:\n          - {probe}\n', 1)
    return start_server(folder, text, port, is_ready=lambda server: 'Flow is ready to serve!' in server.output())


def replica_pids(server: Server) -> dict[str, list[int]]:
    """Each replica's process ids, in the order they started."""
    pids: dict[str, list[int]] = {}
    for name, pid in PROBE_LINE.findall((server.log.parent / PROBE_LOG).read_text()):
        pids.setdefault(name, []).append(int(pid))
    return pids


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie that its parent has yet to reap."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(stat.read_text().rpartition(')')[2].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return found


def wait_for(condition: Callable[[], bool], server: Server, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'{what}: not after {timeout} s\n{server.output()}'
        time.sleep(0.2)


def up_again(server: Server, replica: int) -> bool:
    return f'clip_server.supervision: executor clip replica {replica} is up again' in server.output()


def served(monitoring: list[int]) -> dict[str, float]:
    """Requests served per replica since its process started, from each replica's own metrics."""
    counts = {}
    for port in monitoring:
        scrape = requests.get(f'http://127.0.0.1:{port}/', timeout=10).text
        for replica, count in re.findall(
            r'^jina_receiving_request_seconds_count\{.*runtime_name="([^"]+)".*\} (\S+)$', scrape, re.M
        ):
            counts[replica] = float(count)
    return counts


def test_a_killed_replica_is_logged_and_replaced_while_the_other_serves(tiny_weights, tmp_path):
    monitoring = [free_port(), free_port()]
    server = start_supervised(tiny_weights, tmp_path, monitoring)
    try:
        client = Client(server.address)
        killed = replica_pids(server)['clip/rep-0'][0]
        outcomes, up_at = [], None
        deadline = time.monotonic() + 60
        # Steady load: 3 requests, the kill, then on until 5 requests after the replacement is up.
        while up_at is None or len(outcomes) < up_at + 5:
            assert time.monotonic() < deadline, f'no replacement within 60 s\n{server.output()}'
            if len(outcomes) == 3:
                os.kill(killed, signal.SIGKILL)
                outcomes.append('kill')
            elif up_at is None and 'kill' in outcomes and up_again(server, 0):
                up_at = len(outcomes)
            try:
                outcomes.append(client.encode(['steady load', 'two texts']).shape == (2, 32))
            except Exception:  # counted below
                outcomes.append(False)
        after = outcomes[outcomes.index('kill') + 1 :]
        print(f'{len(after)} requests after the kill, {after.count(False)} failed; replacement up after {up_at - 4}')
        # One client sends one request at a time, so the killed replica held at most one request,
        # and jina's gateway retries a request on the other replica when one cannot be reached:
        # at most that one request can fail.
        assert after.count(False) <= 1, outcomes

        log = server.output()
        assert re.search(
            rf'^ERROR +clip_server\.supervision: executor clip replica 0 \(clip/rep-0, pid {killed}\) '
            rf'was killed by SIGKILL; starting a replacement on port \d+$',
            log,
            re.M,
        ), log
        old, new = replica_pids(server)['clip/rep-0']
        assert old == killed and not running(old) and running(new)
        assert f'executor clip replica 0 is up again (pid {new})' in log

        # Both replicas serve again: jina's gateway sends single requests to each in turn.
        before = served(monitoring)
        Client(server.address).encode([f'text {i}' for i in range(8)], batch_size=1)  # 8 requests
        after_counts = served(monitoring)
        assert set(after_counts) == {'clip/rep-0', 'clip/rep-1'}, after_counts
        assert all(after_counts[replica] > before.get(replica, 0) for replica in after_counts), (before, after_counts)
        assert server.stop(timeout=PROMPT_STOP_SECONDS) == 0
    finally:
        server.stop(timeout=5)


def test_both_replicas_killed_are_replaced_then_a_crash_loop_stops_the_server(tiny_weights, tmp_path):
    """Two deaths are replaced; the 4th death within a minute is a crash loop: exit status 1."""
    server = start_supervised(tiny_weights, tmp_path)
    try:
        first = replica_pids(server)
        for pids in first.values():
            os.kill(pids[0], signal.SIGKILL)
        # well within the crash-loop window (60 s) that the next two deaths are to fall in
        wait_for(lambda: up_again(server, 0) and up_again(server, 1), server, 45, 'both replicas replaced')
        assert Client(server.address).encode(['served again']).shape == (1, 32)
        log = server.output()
        for replica in (0, 1):
            assert re.search(
                rf'^ERROR +clip_server\.supervision: executor clip replica {replica} .* SIGKILL', log, re.M
            )
        second = replica_pids(server)
        assert all(len(pids) == 2 and running(pids[1]) for pids in second.values()), second

        for pids in second.values():
            os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        server.process.wait(timeout=PROMPT_STOP_SECONDS + 5)
        print(f'exited {time.monotonic() - killed_at:.1f} s after the 3rd and 4th deaths')
        assert time.monotonic() - killed_at < PROMPT_STOP_SECONDS
        assert server.process.returncode == 1
        log = server.output()
        assert re.search(
            r'^ERROR +clip_server\.supervision: executor clip replica [01] .* was killed by SIGKILL: '
            r'4 replica deaths within 60 s, a crash loop; stopping the server$',
            log,
            re.M,
        ), log
        assert re.search(r'^clip_server: error: executor clip replica [01] .* a crash loop$', log, re.M), log
        assert 'Shutdown signal was not received' not in log
        assert session_pids(server.process.pid) == []  # the gateway and every replica were stopped
    finally:
        server.stop(timeout=5)


def test_sigterm_right_after_a_replica_is_killed_stops_the_server_at_once(tiny_weights, tmp_path):
    """The signal comes before the supervisor's next look: closing the Flow must not wait for the
    dead replica (nor for a replacement still loading, had the supervisor started one)."""
    server = start_supervised(tiny_weights, tmp_path)
    try:
        os.kill(replica_pids(server)['clip/rep-0'][0], signal.SIGKILL)
        server.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        server.process.wait(timeout=PROMPT_STOP_SECONDS + 5)
        print(f'stopped {time.monotonic() - signalled_at:.1f} s after SIGTERM')
        assert time.monotonic() - signalled_at < PROMPT_STOP_SECONDS
        assert server.process.returncode == 0
        log = server.output()
        assert 'Shutdown signal was not received' not in log
        assert session_pids(server.process.pid) == []
    finally:
        server.stop(timeout=5)


def test_a_dead_gateway_stops_the_server_with_status_1(tiny_weights, tmp_path):
    """Only executor replicas are replaced: without its gateway the server is of no use, and its
    own supervisor (Docker, systemd, Kubernetes) is to restart it."""
    server = start_supervised(tiny_weights, tmp_path)
    try:
        replicas = {pids[0] for pids in replica_pids(server).values()}
        [gateway] = children(server.process.pid) - replicas
        os.kill(gateway, signal.SIGKILL)
        killed_at = time.monotonic()
        server.process.wait(timeout=PROMPT_STOP_SECONDS + 5)
        assert time.monotonic() - killed_at < PROMPT_STOP_SECONDS
        assert server.process.returncode == 1
        log = server.output()
        assert re.search(
            rf'^ERROR +clip_server\.supervision: the gateway \(gateway/rep-0, pid {gateway}\) was killed by SIGKILL; '
            r'only executor replicas are replaced; stopping the server$',
            log,
            re.M,
        ), log
        assert session_pids(server.process.pid) == []
    finally:
        server.stop(timeout=5)
