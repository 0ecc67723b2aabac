"""`python -m clip_server` as a child process: started in its own session, found, measured, stopped.
The tests start their servers with these too."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from clip_server.benchmark import START_TIMEOUT, BenchmarkError
from clip_server.model.quiet import without_log


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
        peaks = [peak for pid in session_pids(self.process.pid) if (peak := _vm_hwm(pid)) is not None]
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
