"""Command line: ``python -m clip_server [FLOW_YAML | -i]`` serves the Flow a YAML describes.

The YAML is the only configuration. This module alone deals with argv, stdin and
YAML files; it turns every start-up failure, and every failure that stops a serving
Flow (see clip_server.supervision), into one message on stderr and a non-zero exit,
while jina's own logs (on stdout) keep the details.
"""

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import yaml
from jina import Flow
from jina.enums import ProtocolType
from jina.excepts import InternalNetworkError, PortAlreadyUsed, RuntimeFailToStart

from clip_server.flow_config import adjusted_flow_yaml
from clip_server.internal_auth import ensure_internal_token
from clip_server.resources import BUNDLED_FLOWS, bundled_flow
from clip_server.supervision import ServingFailed, release, supervise


class _Fail(Exception):
    """A start-up failure, worded for the user."""


class _FlowFailed(_Fail):
    """A failure in the Flow's own processes, whose tracebacks JINA_LOG_LEVEL=DEBUG prints."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='clip_server',
        description='Serve CLIP embeddings with the Jina Flow that a YAML file describes.',
    )
    parser.add_argument(
        'flow_yaml',
        nargs='?',
        metavar='FLOW_YAML',
        help=f'a Flow YAML file, or one of the bundled {", ".join(BUNDLED_FLOWS)} (default: torch-flow.yml)',
    )
    parser.add_argument('-i', dest='from_stdin', action='store_true', help='read the Flow YAML from stdin')
    args = parser.parse_args(argv)
    if args.from_stdin and args.flow_yaml:
        parser.error('give either FLOW_YAML or -i, not both')
    return args


def _load_flow(flow_yaml: str | None, from_stdin: bool) -> Flow:
    if from_stdin:
        return _parse_flow(sys.stdin.read(), '<stdin>', search_dir=None)
    if flow_yaml is None or (flow_yaml in BUNDLED_FLOWS and not Path(flow_yaml).exists()):
        source = bundled_flow(flow_yaml or 'torch-flow.yml')  # a file of that name here is yours: it wins
    else:
        source = Path(flow_yaml).expanduser()
    try:
        text = source.read_text(encoding='utf-8')
    except (OSError, UnicodeError) as e:
        raise _Fail(f'cannot read {source}: {getattr(e, "strerror", None) or e}') from e
    return _parse_flow(text, str(source), search_dir=os.path.dirname(str(source)))


def _parse_flow(text: str, name: str, search_dir: str | None) -> Flow:
    """Check the YAML ourselves first: jina shifts line numbers and drops the file name."""
    stream = io.StringIO(text)
    stream.name = name  # PyYAML names the source in its error marks
    try:
        root = yaml.compose(stream, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise _Fail(f'invalid YAML: {e}') from e
    if not _is_flow(root):
        raise _Fail(f'{name} does not describe a Flow: expected a mapping with "jtype: Flow"')
    try:
        text = adjusted_flow_yaml(root)
    except ValueError as e:
        raise _Fail(f'invalid Flow in {name}: {e}') from e
    try:
        flow = Flow.load_config(io.StringIO(text), extra_search_paths=[search_dir] if search_dir else None)
    except Exception as e:
        raise _Fail(f'invalid Flow in {name}: {_describe(e)}') from e
    _check_grpc_key(flow)
    return flow


def _check_grpc_key(flow: Flow) -> None:
    """Refuse a password-protected key for gRPC: jina would only say 'Failed to bind to address'.

    `uvicorn_kwargs: {ssl_keyfile_password: ...}` unlocks the key for the HTTP and WebSocket
    servers alone; jina's gRPC server reads the key file as it is.
    """
    args = flow.gateway_args
    if not args.ssl_keyfile or ProtocolType.GRPC not in args.protocol:
        return
    try:
        lines = Path(args.ssl_keyfile).read_bytes().splitlines()
    except OSError:
        return  # jina names the missing file itself
    if any(line.startswith((b'-----BEGIN ENCRYPTED', b'Proc-Type: 4,ENCRYPTED')) for line in lines):
        raise _Fail(
            f'ssl_keyfile {args.ssl_keyfile} is password-protected, which gRPC cannot use: '
            'give gRPC an unencrypted key (ssl_keyfile_password applies to http and websocket only)'
        )


def _is_flow(root: yaml.Node | None) -> bool:
    if not isinstance(root, yaml.MappingNode):
        return False
    return root.tag == '!Flow' or any(key.value == 'jtype' and value.value == 'Flow' for key, value in root.value)


def _describe(error: BaseException, limit: int | None = None) -> str:
    """The error's type and first line (cut to `limit` characters)."""
    lines = str(error).strip().splitlines()
    text = f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 1] + '…'


def _debug() -> bool:
    return os.environ.get('JINA_LOG_LEVEL', '').upper() == 'DEBUG'


class _ChildErrors:
    """Collects the exceptions that the Flow's processes log while it starts.

    When an executor fails in its own process (unknown module or jtype, an error in
    its __init__), jina raises a bare RuntimeFailToStart here and the real error is
    only logged over there. A log-record factory, inherited by the forked processes,
    copies each logged exception into a pipe that this process reads.
    """

    def __enter__(self) -> '_ChildErrors':
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)  # never stall a process on a full pipe
        self._make_record = logging.getLogRecordFactory()
        logging.setLogRecordFactory(self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.setLogRecordFactory(self._make_record)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _record(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self._make_record(*args, **kwargs)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            # the gateway failing to reach an executor that is not up is a consequence, not the cause
            if not isinstance(error, InternalNetworkError):
                with contextlib.suppress(OSError):  # pipe full: the log still has it
                    os.write(self._write_fd, f'{record.name}: {_describe(error)}\n'.encode())
            if not _debug():  # the error's one line; its traceback and chained errors only under DEBUG
                record.msg, record.args = f'{_describe(error, limit=120)} (JINA_LOG_LEVEL=DEBUG: traceback)', ()
                record.exc_info = record.exc_text = None
        return record

    def read(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            return list(dict.fromkeys(os.read(self._read_fd, 1 << 16).decode().splitlines()))
        return []


def _serve(flow: Flow) -> None:
    """Serve until SIGINT or SIGTERM, then stop the gateway and every executor.

    Meanwhile `supervise` replaces the executor replicas that die; when the Flow cannot go on,
    it is stopped too, as a failure, so that the server exits non-zero.

    jina stops cleanly on KeyboardInterrupt, but SIGTERM would kill this process
    alone and orphan the Flow's processes: so both signals raise KeyboardInterrupt.
    gRPC code can swallow that exception while the Flow starts, so the signal is
    also remembered, and then the Flow stops as soon as it has started.
    """
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _ChildErrors() as child_errors:
            try:
                if not any((getattr(d.args, 'shards', 1) or 1) > 1 for _, d in flow):
                    ensure_internal_token()  # the Flow's processes inherit it (not shard heads': see there)
                flow.start()
            except RuntimeFailToStart as e:
                reason = '; '.join(child_errors.read()) or 'see the log above'
                raise _FlowFailed(f'the Flow failed to start: {reason}') from e
            except PortAlreadyUsed as e:
                raise _Fail(f'the gateway port is already in use ({e})') from e
            except Exception as e:
                raise _FlowFailed(f'the Flow failed to start: {_describe(e)}') from e
        if not received:
            try:
                supervise(flow)  # returns on KeyboardInterrupt
            except ServingFailed as e:
                raise _Fail(str(e)) from e
    finally:
        try:
            release(flow)  # so that closing waits for no dead process
        finally:
            flow.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _show_model_logs() -> None:
    """Let the model layer's progress (downloads, exports, engine builds) reach the terminal.

    It logs with plain `logging`, which nothing configures in the Flow's processes; they are
    forked from this one and inherit this handler.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(levelname)-7s %(name)s: %(message)s'))
    package = logging.getLogger('clip_server')
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if _debug() else logging.INFO)
    package.propagate = False
    # huggingface_hub gives its logger a handler of its own when its logging module is first
    # imported, and its records also reach the root logger, which another library configures: each
    # download retry was printed twice. Imported here, before the Flow's processes fork, its lines
    # go through this handler, once.
    import huggingface_hub.utils.logging  # noqa: F401

    hub = logging.getLogger('huggingface_hub')
    hub.handlers, hub.propagate = [handler], False


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parse_args(argv)
    os.environ.setdefault('JINA_HIDE_SURVEY', '1')  # jina's survey banner means nothing to our users
    _show_model_logs()
    try:
        _serve(_load_flow(args.flow_yaml, args.from_stdin))
    except _Fail as e:
        if _debug():
            traceback.print_exc()
        print(f'clip_server: error: {e}', file=sys.stderr)
        if isinstance(e, _FlowFailed) and not _debug():
            print('clip_server: JINA_LOG_LEVEL=DEBUG shows the tracebacks', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped before the Flow was ready
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
