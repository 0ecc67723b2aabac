"""What container tests share besides fixtures: the engine, the host user's ids, a running container,
waiting for a deployment's readiness (open_clip's reference embeddings are tests/helpers.py's). The
fixtures built on these are in this folder's conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = REPO / 'Dockerfiles'
BASE_IMAGE = 'python:3.11-slim-bookworm'
TAG_PREFIX = 'clip-server-test'  # not clip-server: a user's own images keep their tags
# Where the weights cache keeps ViT-B-32::openai (open_clip's hub entry for it), and the file
# open_clip prefers there.
VIT_B32_REPO = 'timm/vit_base_patch32_clip_224.openai'
VIT_B32_FILE = 'open_clip_model.safetensors'
HUB_COMMIT = 'c0ffee' * 6 + 'c0ff'  # the snapshot that the cache's refs/main names
# The ids of the image user and of the cache mounted from the host. A root CI runner has no
# ordinary user: it stands in for one with the images' default ids.
HOST_IDS = (os.getuid(), os.getgid()) if os.getuid() != 0 else (1000, 1000)


def find_engine() -> str | None:
    """docker when its daemon answers (a client alone cannot run anything), else podman when installed."""
    if shutil.which('docker'):
        if subprocess.run(['docker', 'info'], capture_output=True, timeout=60).returncode == 0:
            return 'docker'
    return 'podman' if shutil.which('podman') else None


def has_image(engine: str, tag: str) -> bool:
    return subprocess.run([engine, 'image', 'inspect', tag], capture_output=True, timeout=60).returncode == 0


def wait_until_http_ready(url: str, deadline: float, logs: Callable[[], str], what: str) -> None:
    """Poll a `/health/ready` URL until it answers 200; past `deadline` (monotonic), fail the test
    with `logs()` (the containers' own words on why)."""
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f'{what} never became ready:\n{logs()}')
        time.sleep(2)


def not_owned_by_host_user(root: Path) -> list[str]:
    """Files and folders under `root` (itself included) that the host user does not own."""
    return [
        f'{path} ({stat.st_uid}:{stat.st_gid})'
        for path in [root, *root.rglob('*')]
        if ((stat := path.lstat()).st_uid, stat.st_gid) != HOST_IDS
    ]


class Container:
    """`ENGINE run --rm IMAGE ARGS...` in the foreground, as a user starts it; `stop()` is `ENGINE stop`.

    `ports` maps container ports to host ports (`-p`, on 127.0.0.1); `cache` is mounted as the
    image user's ~/.cache; `stdin` is piped in and closed (with `-i`, for `clip_server -i`).
    """

    def __init__(
        self,
        engine: str,
        image: str,
        args: tuple[str, ...] = (),
        *,
        log: Path,
        cache: Path | None = None,
        ports: dict[int, int] | None = None,
        stdin: str | None = None,
    ):
        self.engine = engine
        self.name = f'clip-test-{uuid.uuid4().hex[:10]}'
        self.ports = ports or {}
        self.log = log
        command = [engine, 'run', '--rm', '--name', self.name]
        for inside, outside in self.ports.items():
            command += ['-p', f'127.0.0.1:{outside}:{inside}']
        if cache is not None:
            command += ['-v', f'{cache}:/home/cas/.cache']
        if stdin is not None:
            command.append('-i')
        self._log_file = open(log, 'wb')
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*command, image, *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        if stdin is not None:
            self.process.stdin.write(stdin.encode())
            self.process.stdin.close()

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors='replace')

    def wait_ready(self, protocol: str = 'grpc', port: int = 51000, timeout: float = 300) -> float:
        """Wait until jina's client finds the Flow ready on the host side of `port`; returns the
        seconds since `run` (the cold start)."""
        from jina import Client

        client = Client(host='127.0.0.1', port=self.ports[port], protocol=protocol)
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'the container exited with {self.process.returncode}:\n{self.output()[-5000:]}')
            if client.is_flow_ready(timeout=1):
                return time.monotonic() - self.started
            time.sleep(0.5)
        raise TimeoutError(f'not ready after {timeout}s:\n{self.output()[-5000:]}')

    def wait_exit(self, timeout: float) -> int:
        """The container's exit status, once it exits by itself within `timeout` seconds."""
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def stop(self, grace_s: int = 40) -> int:
        """`ENGINE stop -t grace_s` (SIGTERM, the server drains); the container's exit status."""
        if self.process.poll() is None:
            stop = [self.engine, 'stop', '-t', str(grace_s), self.name]
            subprocess.run(stop, capture_output=True, timeout=grace_s + 30)
        return self.wait_exit(timeout=30)
