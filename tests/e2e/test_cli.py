"""`python -m clip_server` as a real process: it serves, stops cleanly, and fails clearly.

A tiny echo executor stands in for the CLIP encoders so that a Flow starts in a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docarray import Document, DocumentArray
from jina import Client

from clip_server.resources import BUNDLED_FLOWS, bundled_flow
from helpers import REPO, free_port, server_env

ECHO = Path(__file__).with_name('echo_executor.py')
ENV = server_env({'JINA_HIDE_SURVEY': '1'})


def flow_yaml(port: int, jtype: str = 'Echo', module: str = str(ECHO), with_: str = '{}') -> str:
    return f"""jtype: Flow
version: '1'
with:
  port: {port}
  host: 127.0.0.1
executors:
  - name: echo
    uses:
      jtype: {jtype}
      with: {with_}
      metas:
        py_modules:
          - {module}
"""


def cli(*args: str, stdin=None, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log_dir / 'stdout.log', 'wb') as out, open(log_dir / 'stderr.log', 'wb') as err:
        return subprocess.Popen(
            [sys.executable, '-m', 'clip_server', *args],
            cwd=log_dir,
            env={**ENV, **(env or {})},
            stdin=stdin,
            stdout=out,
            stderr=err,
        )


def run_cli(*args: str, log_dir: Path, timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run to completion; return the exit status and stderr."""
    process = cli(*args, log_dir=log_dir, env=env)
    try:
        process.wait(timeout)
    finally:
        process.kill()
    return process.returncode, (log_dir / 'stderr.log').read_text()


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


def assert_no_process_left(yaml_path: Path) -> None:
    """No live process names the YAML (forked children share the command line); kill any."""
    leftovers = []
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            if str(yaml_path) in cmdline.read_text() and running(int(cmdline.parent.name)):
                leftovers.append(int(cmdline.parent.name))
        except OSError:
            continue
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


def wait_ready(process: subprocess.Popen, port: int, log_dir: Path, timeout: float = 30) -> None:
    client = Client(host='127.0.0.1', port=port, protocol='grpc')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f'server exited with {process.returncode}: {read_logs(log_dir)}')
        if client.is_flow_ready(timeout=1) and 'ready to serve' in read_logs(log_dir):
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail(f'server not ready after {timeout}s: {read_logs(log_dir)}')


def read_logs(log_dir: Path) -> str:
    return (log_dir / 'stdout.log').read_text() + (log_dir / 'stderr.log').read_text()


def test_bundled_names_are_files_inside_the_package():
    package = REPO / 'clip_server'
    for name in BUNDLED_FLOWS:
        path = Path(str(bundled_flow(name)))
        assert path.is_file()
        assert path.resolve().is_relative_to(package.resolve())
        assert 'jtype: Flow' in path.read_text()


def test_a_file_here_named_like_a_bundled_flow_is_the_one_served(tmp_path):
    """A user's edited copy keeps its bundled name: the copy wins (here an invalid one, to tell)."""
    (tmp_path / 'search-flow.yml').write_text(flow_yaml(free_port()).replace('jtype: Flow', 'jtype: Executor'))
    status, stderr = run_cli('search-flow.yml', log_dir=tmp_path)
    assert status == 1 and 'search-flow.yml does not describe a Flow' in stderr


def test_help_prints_usage(tmp_path):
    process = subprocess.run(
        [sys.executable, '-m', 'clip_server', '-h'],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0
    assert process.stdout.startswith('usage: clip_server')
    assert '-i' in process.stdout and 'FLOW_YAML' in process.stdout


@pytest.mark.parametrize(
    'from_stdin, stop_signal',
    [(False, signal.SIGINT), (False, signal.SIGTERM), (True, signal.SIGINT)],
    ids=['file-SIGINT', 'file-SIGTERM', 'stdin-SIGINT'],
)
def test_serves_until_signalled_then_leaves_no_process(tmp_path, from_stdin, stop_signal):
    port = free_port()
    path = tmp_path / 'my.yml'
    path.write_text(flow_yaml(port))
    if from_stdin:
        with open(path) as stdin:
            process = cli('-i', stdin=stdin, log_dir=tmp_path)
    else:
        process = cli(str(path), log_dir=tmp_path)
    children: set[int] = set()
    try:
        wait_ready(process, port, tmp_path)
        children = descendants(process.pid)
        assert len(children) >= 2  # the gateway and the executor

        reply = Client(host='127.0.0.1', port=port, protocol='grpc').post(
            '/', DocumentArray([Document(text='hi'), Document(text='there')]), timeout=10
        )
        assert reply.texts == ['echo:hi', 'echo:there']

        process.send_signal(stop_signal)
        assert process.wait(timeout=30) == 0
        assert [pid for pid in children if running(pid)] == []
        assert 'Traceback' not in (tmp_path / 'stderr.log').read_text()
    finally:  # whatever went wrong, leave no process behind
        for pid in children | descendants(process.pid):
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        process.kill()


def test_sigterm_while_an_executor_loads_stops_everything(tmp_path):
    path = tmp_path / 'slow.yml'
    path.write_text(flow_yaml(free_port(), with_='{load_seconds: 3}'))
    process = cli(str(path), log_dir=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while 'gateway' not in (tmp_path / 'stdout.log').read_text():  # started, not ready
            assert time.monotonic() < deadline and process.poll() is None, read_logs(tmp_path)
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, read_logs(tmp_path)
    finally:
        process.kill()
    assert_no_process_left(path)


def _port_taken():
    """A listening socket, so the Flow's gateway port is in use."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    'case, expected',
    [
        ('missing', ['cannot read', 'missing.yml', 'No such file']),
        ('invalid-yaml', ['invalid YAML', 'invalid-yaml.yml', 'line 8, column 11']),
        ('not-a-flow', ['not-a-flow.yml', 'does not describe a Flow']),
        ('unknown-module', ['failed to start', 'echo/rep-0', 'no_such_module_xyz']),
        ('unknown-jtype', ['failed to start', 'echo/rep-0', 'NoSuchEncoder']),
        ('executor-init-fails', ['echo/rep-0', "ValueError: bad model name 'XYZ'"]),
        ('port-in-use', ['port is already in use']),
    ],
)
def test_each_error_is_one_clear_message(tmp_path, case, expected):
    port = free_port()
    taken = None
    texts = {
        'invalid-yaml': flow_yaml(port).replace('    uses:', '    uses: [', 1),
        'not-a-flow': flow_yaml(port).replace('jtype: Flow', 'jtype: Executor'),
        'unknown-module': flow_yaml(port, module='no_such_module_xyz'),
        'unknown-jtype': flow_yaml(port, jtype='NoSuchEncoder'),
        'executor-init-fails': flow_yaml(port, with_='{fail: "bad model name \'XYZ\'"}'),
    }
    if case == 'port-in-use':
        taken = _port_taken()
        texts[case] = flow_yaml(taken.getsockname()[1])
    path = tmp_path / f'{case}.yml'
    if case in texts:
        path.write_text(texts[case])
    try:
        status, stderr = run_cli(str(path), log_dir=tmp_path)
    finally:
        if taken:
            taken.close()

    assert status != 0
    assert 'Traceback' not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith('clip_server: error:')]
    assert len(errors) == 1, stderr
    for part in expected:
        assert part in stderr, stderr
    assert_no_process_left(path)


def test_yaml_from_stdin_and_a_file_together_is_a_usage_error(tmp_path):
    status, stderr = run_cli('-i', 'my.yml', log_dir=tmp_path)
    assert status == 2
    assert 'not both' in stderr and 'usage: clip_server' in stderr


@pytest.mark.parametrize('debug', [False, True], ids=['quiet', 'debug'])
def test_an_offline_first_start_fails_in_a_handful_of_lines(tmp_path, debug):
    """The bundled Flow, offline, with an empty cache: the clear error and a hint, no traceback
    unless JINA_LOG_LEVEL=DEBUG asks for it."""
    path = tmp_path / 'torch-flow.yml'
    path.write_text(bundled_flow('torch-flow.yml').read_text().replace('51000', str(free_port())))
    env = {'HF_HUB_OFFLINE': '1', 'CLIP_SERVER_CACHE': str(tmp_path / 'empty-cache')}
    if debug:
        env['JINA_LOG_LEVEL'] = 'DEBUG'
    status, stderr = run_cli(str(path), log_dir=tmp_path, env=env, timeout=120)
    output = (tmp_path / 'stdout.log').read_text() + stderr
    assert status == 1
    assert 'clip_server: error: the Flow failed to start: clip_t/rep-0: WeightsUnavailableError: Cannot get' in stderr
    if debug:
        assert 'Traceback' in output
    else:
        assert 'Traceback' not in output and 'JINA_LOG_LEVEL=DEBUG shows the tracebacks' in stderr
        assert len(output.splitlines()) <= 20, output
    assert_no_process_left(path)
