"""TensorRT: what can be checked without a GPU here, and parity tests that run where one is lent."""

import contextlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from clip_server.model.runtimes import tensorrt_runtime
from clip_server.model.runtimes.tensorrt_runtime import (
    EngineKey,
    cached_engines,
    missing_pieces,
    onnx_sha256,
    profile_shapes,
    require_tensorrt,
)
from clip_server.types import Device, DType

MISSING = missing_pieces()
needs_gpu = pytest.mark.skipif(bool(MISSING), reason=f'TensorRT needs {" and ".join(MISSING)}')


def test_importing_the_runtime_needs_neither_tensorrt_nor_a_gpu():
    code = (
        'import sys, clip_server.executors.clip_tensorrt, clip_server.model.runtimes.tensorrt_runtime; '
        'print("tensorrt" in sys.modules)'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ['False']


@pytest.mark.skipif(not MISSING, reason='this machine has TensorRT and a GPU')
def test_refusal_names_every_missing_piece():
    with pytest.raises(RuntimeError) as error:
        require_tensorrt()
    assert str(error.value) == f'The TensorRT runtime needs {" and ".join(MISSING)}.'


@pytest.mark.skipif(not MISSING, reason='this machine has TensorRT and a GPU')
def test_executor_refuses_before_loading_anything_naming_the_alternatives():
    """The model layer names what is missing; the executor adds the commands that serve instead."""
    from clip_server.executors.advice import OTHER_RUNTIMES
    from clip_server.executors.clip_tensorrt import CLIPEncoder

    with pytest.raises(RuntimeError, match='The TensorRT runtime needs') as error:
        CLIPEncoder(name='tiny-vit', model_path='/does/not/matter')
    assert str(error.value).endswith(f'. {OTHER_RUNTIMES}') and 'onnx-flow.yml' in OTHER_RUNTIMES


def test_profile_shapes_cover_one_to_a_minibatch():
    assert profile_shapes((-1, 77), 32) == ((1, 77), (32, 77), (32, 77))
    assert profile_shapes((-1, 3, 224, 224), 8) == ((1, 3, 224, 224), (8, 3, 224, 224), (8, 3, 224, 224))
    # texts cut after their batch's last end-of-text token: 1 token up to CLIP's context
    assert profile_shapes((-1, -1), 8) == ((1, 1), (8, 77), (8, 77))
    assert profile_shapes((-1, -1), 8, context_length=32) == ((1, 1), (8, 32), (8, 32))  # the model's own
    with pytest.raises(ValueError, match='only the batch axis'):
        profile_shapes((-1, 3, -1, -1), 8)


def test_engine_key_changes_with_everything_an_engine_depends_on():
    base = dict(
        onnx_sha256='a' * 64,
        tensorrt_version='10.8.0',
        gpu_name='NVIDIA H100',
        compute_capability='9.0',
        fp16=True,
        max_batch=32,
    )
    digest = EngineKey(**base).digest()
    assert EngineKey(**base).digest() == digest
    changes = dict(
        onnx_sha256='b' * 64,
        tensorrt_version='10.9.0',
        gpu_name='NVIDIA A10',
        compute_capability='8.6',
        fp16=False,
        max_batch=64,
    )
    for field, value in changes.items():
        assert EngineKey(**{**base, field: value}).digest() != digest, field


def test_onnx_digest_follows_the_files(tmp_path):
    (tmp_path / 'textual.onnx').write_bytes(b'text graph')
    (tmp_path / 'visual.onnx').write_bytes(b'image graph')
    first = onnx_sha256(tmp_path)
    (tmp_path / 'visual.onnx.data').write_bytes(b'weights')
    assert onnx_sha256(tmp_path) != first


def test_engines_are_built_on_the_gpu_asked_for_without_changing_the_process_gpu(monkeypatch, tmp_path):
    """A global `set_device` would move every other model of the process to that GPU too."""
    calls = []

    @contextlib.contextmanager
    def selected(gpu):
        calls.append(f'select {gpu}')
        yield
        calls.append('restore')

    def build_once(folder, build, what):
        calls.append('build')
        return folder

    def set_device(gpu):
        pytest.fail('torch.cuda.set_device changes the GPU of the whole process')

    key = EngineKey('a' * 64, '10.8.0', 'NVIDIA H100', '9.0', fp16=True, max_batch=4)
    monkeypatch.setattr(torch.cuda, 'device', selected)
    monkeypatch.setattr(torch.cuda, 'set_device', set_device)
    monkeypatch.setattr(tensorrt_runtime, 'engine_key', lambda folder, gpu, **options: key)
    monkeypatch.setattr(tensorrt_runtime, 'build_once', build_once)
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    folder = cached_engines('tiny-vit', tmp_path, device=Device('cuda', 1), dtype=DType.FP16, max_batch=4)
    assert calls == ['select cuda:1', 'build', 'restore']
    assert folder == tmp_path / 'tensorrt' / 'tiny-vit' / key.digest()


@needs_gpu
@pytest.mark.parametrize('dtype, tolerance', [('fp32', 1e-3), ('fp16', 2e-2)])
def test_tensorrt_matches_pytorch(request, tmp_path, monkeypatch, tiny_weights, dtype, tolerance):
    """fp16 tolerance: relative to the embedding norm, half precision keeps ~3 decimal digits per layer."""
    from clip_server.executors.clip_tensorrt import CLIPEncoder
    from helpers import sample_image, torch_encoder

    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    encoder = CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), dtype=dtype, minibatch_size=4)
    request.addfinalizer(encoder.close)
    reference = torch_encoder(encoder.spec, tiny_weights['tiny-vit'], device='cpu', dtype='fp32')
    assert encoder.model.cut_at_end_of_text  # the export's causal text tower takes short rows
    tokens = encoder.preprocessor.tokenize(['a dog', 'ein Hund', 'x'])
    long_tokens = encoder.preprocessor.tokenize(['a dog', 'word ' * 100])  # the full 77-token profile
    np.testing.assert_allclose(
        encoder.model.encode_text(long_tokens),
        reference.encode_text(long_tokens),
        atol=tolerance * np.abs(reference.encode_text(long_tokens)).max(),
    )
    pixels = np.stack([encoder.preprocessor.pixels(sample_image(seed)) for seed in range(3)])
    for served, expected in (
        (encoder.model.encode_text(tokens), reference.encode_text(tokens)),
        (encoder.model.encode_image(pixels), reference.encode_image(pixels)),
    ):
        assert served.dtype == np.float32
        assert np.abs(served - expected).max() <= tolerance * np.abs(expected).max()


@pytest.mark.skipif(not MISSING, reason='this machine has TensorRT and a GPU')
def test_cli_refuses_with_one_clear_line(tmp_path):
    from helpers import flow_yaml, free_port, server_env

    path = tmp_path / 'trt.yml'
    path.write_text(
        flow_yaml(free_port(), module='clip_server.executors.clip_tensorrt', with_params={'name': 'tiny-vit'})
    )
    done = subprocess.run(
        [sys.executable, '-m', 'clip_server', str(path)], capture_output=True, text=True, timeout=120, env=server_env()
    )
    assert done.returncode == 1
    assert 'clip_server: error:' in done.stderr and 'The TensorRT runtime needs' in done.stderr
    assert 'onnx-flow.yml' in done.stderr and 'Traceback' not in done.stderr


@needs_gpu
def test_engines_are_built_once_and_reused(tmp_path, monkeypatch, tiny_weights):
    from clip_server.executors.clip_tensorrt import CLIPEncoder

    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_size=4).close()
    (engines,) = (tmp_path / 'tensorrt' / 'tiny-vit').glob('*/textual.engine')
    built = engines.stat().st_mtime_ns
    CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), minibatch_size=4).close()
    assert engines.stat().st_mtime_ns == built


def test_mclip_is_refused_before_anything_is_fetched(monkeypatch):
    """Even where TensorRT runs (its check passes here by fiat), M-CLIP is refused first, offline."""
    from clip_server.executors.clip_tensorrt import CLIPEncoder
    from clip_server.model.runtimes import tensorrt_runtime

    monkeypatch.setattr(tensorrt_runtime, 'require_tensorrt', lambda: None)
    with pytest.raises(NotImplementedError, match='serve it with PyTorch, ONNX Runtime or OpenVINO$'):
        CLIPEncoder(name='M-CLIP/XLM-Roberta-Large-Vit-B-32')
