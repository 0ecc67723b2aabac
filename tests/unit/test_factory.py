"""The model factory: the family x runtime table, refusals before any download, one interface."""

from __future__ import annotations

import numpy as np
import pytest

from clip_server.model.encoder import Encoder
from clip_server.model.factory import FAMILIES, EncoderOptions, build_encoder, check_supported, preprocessor
from clip_server.model.registry import resolve
from clip_server.types import (
    ClipServerError,
    DType,
    Family,
    MissingExtraError,
    Runtime,
    UnsupportedError,
    parse_device,
    parse_dtype,
    require,
)


def test_every_family_has_a_builder_of_its_own():
    assert set(FAMILIES) == set(Family)
    assert all(served.builder.family is family for family, served in FAMILIES.items())


def test_mclip_on_tensorrt_is_refused_with_the_runtimes_that_serve_it(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    with pytest.raises(
        UnsupportedError, match='cannot be served with TensorRT: .* serve it with PyTorch or ONNX Runtime'
    ):
        check_supported(resolve('M-CLIP/XLM-Roberta-Large-Vit-B-32'), Runtime.TENSORRT)
    assert not any(tmp_path.iterdir())  # nothing fetched


@pytest.mark.parametrize('runtime', [Runtime.TORCH, Runtime.ONNX])
def test_encoders_share_one_interface(runtime, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    spec = resolve('tiny-vit')
    encoder = build_encoder(spec, runtime, EncoderOptions(model_path=tiny_weights['tiny-vit'], threads=1))
    assert isinstance(encoder, Encoder)
    assert encoder.dim == spec.dim and encoder.dtype is DType.FP32 and str(encoder.device) == 'cpu'
    tokens = preprocessor(spec).tokenize(['a cat'])
    assert encoder.encode_text(tokens).dtype == np.float32


def test_dtypes_are_checked_per_runtime_in_one_place():
    cpu, gpu = parse_device('cpu'), parse_device('cuda:1')
    assert parse_dtype(None, Runtime.TORCH, cpu) is DType.FP32
    assert parse_dtype(None, Runtime.ONNX, gpu) is DType.FP16
    assert parse_dtype('bf16', Runtime.TORCH, cpu) is DType.BF16
    with pytest.raises(ClipServerError, match="dtype 'bf16' is not one of fp16, fp32 for the TensorRT runtime"):
        parse_dtype('bf16', Runtime.TENSORRT, gpu)


@pytest.mark.parametrize('text, expected', [('cpu', 'cpu'), ('cuda', 'cuda'), ('CUDA:2', 'cuda:2')])
def test_devices_are_parsed_in_one_place(text, expected):
    assert str(parse_device(text)) == expected


@pytest.mark.parametrize('text', ['gpu', 'cpu:1', 'cuda:x', ''])
def test_other_devices_are_refused(text):
    with pytest.raises(ClipServerError, match='is not a device name such as "cpu", "cuda" or "cuda:1"'):
        parse_device(text)


def test_a_missing_extra_names_what_to_install():
    with pytest.raises(MissingExtraError, match=r'pip install "clip-server\[onnx\]"'):
        require('no_such_package_for_clip_server', 'onnx')
    assert require('numpy', 'onnx') is np
