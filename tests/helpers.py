"""Test helpers: reference embeddings, sample images, and a real `python -m clip_server` process."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from clip_server.benchmark.processes import free_port as free_port  # re-exported: the tests take it from here
from clip_server.benchmark.processes import interrupt
from clip_server.model.factory import EncoderOptions, build_encoder
from clip_server.model.registry import ModelSpec
from clip_server.types import Runtime

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / 'tests'


def reference_text_embeddings(reference_model, texts: list[str]) -> np.ndarray:
    model, _, tokenizer = reference_model
    with torch.no_grad():
        return model.encode_text(tokenizer(texts)).numpy()


def reference_image_embeddings(reference_model, images: list[Image.Image]) -> np.ndarray:
    model, transform, _ = reference_model
    with torch.no_grad():
        return model.encode_image(torch.stack([transform(image) for image in images])).numpy()


def torch_encoder(spec: ModelSpec, weights, **options):
    """The PyTorch runtime's encoder of `spec` with `weights`, built as the executor builds it
    (in fp32 unless `dtype` says otherwise, to compare with open_clip's own output)."""
    options.setdefault('dtype', 'fp32')
    return build_encoder(spec, Runtime.TORCH, EncoderOptions(model_path=weights, **options))


def sample_image(seed: int = 0, size: tuple[int, int] = (97, 61), mode: str = 'RGB') -> Image.Image:
    """A noisy picture, different per seed, with a non-square size to exercise resize and crop."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def check_rank(client) -> list:
    """Rank a picture's three candidates, one of them the same picture: it comes first at cosine 1,
    the softmax scores are sorted best first and sum to 1. Returns the ranked matches."""
    from docarray import Document

    image = sample_image(4)
    query = Document(
        blob=encoded(image),
        matches=[
            Document(text='a caption'),
            Document(id='same', tensor=np.asarray(image)),
            Document(blob=encoded(sample_image(5))),
        ],
    )
    ranked = client.rank([query])[0].matches
    assert ranked[0].id == 'same'
    assert ranked[0].scores['clip_score_cosine'].value == pytest.approx(1.0, abs=1e-4)
    scores = [match.scores['clip_score'].value for match in ranked]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    return ranked


def encoded(image: Image.Image, fmt: str = 'PNG', **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def flow_yaml(
    port: int | list[int],
    *,
    protocol: str | list[str] = 'grpc',
    module: str = 'clip_server.executors.clip_torch',
    with_params: dict | None = None,
    flow_extra: str = '',
    executor_extra: str = '',
    jina_batching: tuple[int, int] | None = None,
) -> str:
    """A Flow YAML like the bundled ones, on 127.0.0.1, with the tiny architectures registered.

    The encoder runs in fp32 unless `with_params` sets `dtype`, so its embeddings can be
    compared with open_clip's own fp32 output. `jina_batching` (preferred batch size, timeout
    in ms) adds jina's own dynamic batching with `InputErrors` after it, as Flows written for
    earlier releases did (the encoder batches across requests itself without it).
    """
    if jina_batching:
        size, timeout = jina_batching
        executor_extra += (
            f'\n    uses_dynamic_batching:\n      encode: {{preferred_batch_size: {size}, timeout: {timeout}}}'
        )
    with_params = {'dtype': 'fp32', **(with_params or {})}
    params = ''.join(f'\n        {key}: {value!r}' for key, value in with_params.items())
    return f"""jtype: Flow
version: '1'
with:
  port: {_yaml_value(port)}
  protocol: {_yaml_value(protocol)}
  host: 127.0.0.1{flow_extra}
executors:
  - name: clip
    timeout_ready: 120000{executor_extra}
    uses:
      jtype: CLIPEncoder
      with:{params or ' {}'}
      metas:
        py_modules:
          - {TESTS / 'tiny_models.py'}
          - {module}
""" + (_INPUT_ERRORS if jina_batching else '')


_INPUT_ERRORS = """  - name: input_errors
    uses:
      jtype: InputErrors
      metas:
        py_modules:
          - clip_server.executors.input_errors
"""


def _yaml_value(value) -> str:
    return f'[{", ".join(map(str, value))}]' if isinstance(value, list) else str(value)


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(JINA_OPTOUT_TELEMETRY='1', NO_VERSION_CHECK='1', HF_HUB_OFFLINE='1')
    env.update(extra or {})
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
    return env


class Server:
    """`python -m clip_server <yaml>` as a user starts it, stopped with Ctrl-C."""

    def __init__(
        self,
        yaml_path: Path,
        port: int,
        protocol: str = 'grpc',
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.port = port
        self.protocol = protocol
        self.log = yaml_path.with_suffix('.log')
        self._log_file = open(self.log, 'wb')
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'clip_server', str(yaml_path), *args],
            cwd=yaml_path.parent,
            env=server_env(env),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a hung stop can end every child too
        )

    @property
    def address(self) -> str:
        return f'{self.protocol}://127.0.0.1:{self.port}'

    def wait_ready(self, timeout: float = 120, is_ready: Callable[[Server], bool] | None = None) -> Server:
        """Wait until `is_ready(server)`; by default, until jina's client finds the Flow ready."""
        from jina import Client

        deadline = time.monotonic() + timeout
        client = Client(host='127.0.0.1', port=self.port, protocol=self.protocol)
        is_ready = is_ready or (lambda server: client.is_flow_ready(timeout=1))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'server exited with {self.process.returncode}:\n{self.output()}')
            if is_ready(self):
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f'server not ready after {timeout}s:\n{self.output()}')

    def output(self) -> str:
        if not self._log_file.closed:  # after stop() the log is complete on disk
            self._log_file.flush()
        return self.log.read_text(errors='replace')

    def stop(self, timeout: float = 30) -> int:
        interrupt(self.process, timeout)
        self._log_file.close()
        return self.process.returncode


def http_ready(port: int, seen: list[int] | None = None) -> bool:
    """Whether the gateway's readiness probe on HTTP `port` says ready; each answer goes to `seen`."""
    try:
        status = requests.get(f'http://127.0.0.1:{port}/health/ready', timeout=2).status_code
    except requests.ConnectionError:
        return False
    if seen is not None:
        seen.append(status)
    return status == 200


def start_server(
    tmp_path: Path,
    yaml_text: str,
    port: int,
    protocol: str = 'grpc',
    env: dict[str, str] | None = None,
    is_ready: Callable[[Server], bool] | None = None,
) -> Server:
    """Serve `yaml_text` from tmp_path/flow.yml (relative paths in it are relative to tmp_path)."""
    path = tmp_path / 'flow.yml'
    path.write_text(yaml_text)
    return Server(path, port, protocol, env=env).wait_ready(is_ready=is_ready)


def launch(folder: Path, module: str, with_params: dict, cache: Path) -> Server:
    """A server of `module`'s encoder (not waited for: start several, then `all_ready`) whose
    model cache is `cache`, so that what it exports or quantizes at start can be checked."""
    port = free_port()
    folder.mkdir()
    (folder / 'flow.yml').write_text(flow_yaml(port, module=module, with_params=with_params))
    server = Server(folder / 'flow.yml', port, env={'CLIP_SERVER_CACHE': str(cache)})
    server.cache = cache
    return server


@contextlib.contextmanager
def all_ready(servers: dict[str, Server]):
    """Servers started together (their start-ups overlap): wait for each, stop them all at the end."""
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
