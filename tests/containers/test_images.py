"""The torch and ONNX images, built by Dockerfiles/build.sh and served as docs/docker.md says:
the host cache mounted, the bundled Flow, a Flow YAML piped in with `-i`, clip_client over gRPC and
HTTP. Served vectors must equal open_clip's own for the checkpoint in the mounted cache, and what
the server writes there must belong to the host user."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from clip_client import Client
from container_helpers import HOST_IDS, not_owned_by_host_user
from docarray import Document, DocumentArray

from helpers import encoded, reference_image_embeddings, reference_text_embeddings, sample_image

RUNTIMES = ['torch', 'onnx']
MODULES = {'torch': 'clip_server.executors.clip_torch', 'onnx': 'clip_server.executors.clip_onnx'}
TEXTS = ['a photo of a dog', 'ein Foto einer Katze', 'word ' * 100]
PICTURES = [sample_image(1), sample_image(2, size=(300, 200))]
# fp32 in the container against fp32 here (the torch in the image may be a newer release)
TOLERANCE = 1e-4
# `dtype: auto` may pick bf16 on CPU; the README's bound for it
AUTO_MIN_COSINE = 0.999
STOP_GRACE_S = 40  # above the gateway's drain_seconds (30), as docs/docker.md advises


@pytest.fixture(scope='module')
def caches(host_cache) -> dict[str, Path]:
    """One host cache per runtime for the module: the ONNX export the first start writes is reused."""
    return {runtime: host_cache() for runtime in RUNTIMES}


def encode_all(client: Client) -> tuple[np.ndarray, np.ndarray]:
    texts = client.encode(TEXTS)
    pictures = client.encode(DocumentArray([Document(blob=encoded(p), mime_type='image/png') for p in PICTURES]))
    return texts, np.stack(pictures.embeddings)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_bundled_flow_serves_the_weights_of_the_mounted_cache(runtime, image, container, caches, reference):
    cache = caches[runtime]
    server = container(image(runtime), cache=cache)  # the image's default: the runtime's bundled Flow
    server.wait_ready()
    texts, pictures = encode_all(Client(f'grpc://127.0.0.1:{server.ports[51000]}'))
    assert texts.shape == (len(TEXTS), 512) and pictures.shape == (len(PICTURES), 512)
    assert cosines(texts, reference_text_embeddings(reference, TEXTS)).min() >= AUTO_MIN_COSINE
    assert cosines(pictures, reference_image_embeddings(reference, PICTURES)).min() >= AUTO_MIN_COSINE

    assert server.stop(STOP_GRACE_S) == 0, server.output()[-3000:]  # SIGTERM: drained and exited cleanly
    assert not_owned_by_host_user(cache) == []
    if runtime == 'onnx':  # the first start exported the model into the mounted cache
        exported = {path.name for path in (cache / 'clip' / 'onnx').rglob('*.onnx')}
        assert {'textual.onnx', 'visual.onnx'} <= exported, exported


@pytest.mark.parametrize('runtime', RUNTIMES)
def test_yaml_on_stdin_over_grpc_and_http(runtime, image, container, caches, reference):
    flow = f"""jtype: Flow
version: '1'
with:
  protocol: [grpc, http]
  port: [51000, 51001]
executors:
  - name: clip
    uses:
      jtype: CLIPEncoder
      with:
        name: ViT-B-32::openai
        dtype: fp32
      metas:
        py_modules:
          - {MODULES[runtime]}
"""
    cache = caches[runtime]
    server = container(image(runtime), '-i', cache=cache, ports=(51000, 51001), stdin=flow)
    server.wait_ready()
    want_texts, want_pictures = (
        reference_text_embeddings(reference, TEXTS),
        reference_image_embeddings(reference, PICTURES),
    )
    for protocol, port in (('grpc', 51000), ('http', 51001)):
        texts, pictures = encode_all(Client(f'{protocol}://127.0.0.1:{server.ports[port]}'))
        np.testing.assert_allclose(texts, want_texts, atol=TOLERANCE, err_msg=protocol)
        np.testing.assert_allclose(pictures, want_pictures, atol=TOLERANCE, err_msg=protocol)
    assert server.stop(STOP_GRACE_S) == 0, server.output()[-3000:]
    assert not_owned_by_host_user(cache) == []


def test_tensorrt_flow_refuses_in_one_line_without_tensorrt_and_gpu(image, container, caches):
    """The ONNX image has what the TensorRT runtime needs but TensorRT itself (and here, a GPU)."""
    server = container(image('onnx'), 'tensorrt-flow.yml', cache=caches['onnx'])
    assert server.wait_exit(timeout=180) == 1
    errors = [line for line in server.output().splitlines() if line.startswith('clip_server: error:')]
    assert len(errors) == 1, server.output()[-3000:]
    assert 'The TensorRT runtime needs the `tensorrt` package' in errors[0]
    assert 'and an NVIDIA GPU with a working CUDA driver' in errors[0]


@pytest.mark.tensorrt_image
def test_tensorrt_image_refuses_in_one_line_without_a_gpu(image, container, caches):
    """The TensorRT image has TensorRT; on a machine without a GPU it names the GPU alone."""
    server = container(image('tensorrt'), cache=caches['torch'])
    assert server.wait_exit(timeout=180) == 1
    errors = [line for line in server.output().splitlines() if line.startswith('clip_server: error:')]
    assert len(errors) == 1, server.output()[-3000:]
    assert 'The TensorRT runtime needs an NVIDIA GPU with a working CUDA driver' in errors[0]
    assert 'tensorrt` package' not in errors[0]


def test_the_image_user_has_the_host_ids(engine, image):
    """`--user-id`/`--group-id` of build.sh are the ids the server runs as (what keeps the cache shared)."""
    ran = subprocess.run(
        [engine, 'run', '--rm', '--entrypoint', 'id', image('torch')], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert f'uid={HOST_IDS[0]}(cas) gid={HOST_IDS[1]}(cas)' in ran.stdout


def test_search_flow_keeps_its_index_in_the_mounted_cache_across_containers(image, container, host_cache):
    """`docker run IMAGE search-flow.yml`: the index lives in the mounted cache, belongs to the
    host user, and a new container on the same cache finds what the first one indexed."""
    cache = host_cache()
    first = container(image('torch'), 'search-flow.yml', cache=cache)
    first.wait_ready()
    Client(f'grpc://127.0.0.1:{first.ports[51000]}').index(TEXTS)
    assert first.stop(STOP_GRACE_S) == 0, first.output()[-3000:]
    assert any((cache / 'clip' / 'index' / 'default').iterdir())
    assert not_owned_by_host_user(cache) == []

    second = container(image('torch'), 'search-flow.yml', cache=cache)
    second.wait_ready()
    matches = Client(f'grpc://127.0.0.1:{second.ports[51000]}').search([TEXTS[1]], limit=2)[0].matches
    assert [match.text for match in matches][0] == TEXTS[1]
    assert matches[0].scores['cosine'].value == pytest.approx(1.0, abs=1e-3)
    assert second.stop(STOP_GRACE_S) == 0, second.output()[-3000:]
