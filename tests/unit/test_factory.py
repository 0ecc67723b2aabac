"""The model factory: the family x runtime table, refusals before any download, one interface."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clip_server import types
from clip_server.model.encoder import Encoder
from clip_server.model.factory import (
    FAMILIES,
    EncoderOptions,
    build_encoder,
    check_supported,
    preprocessor,
)
from clip_server.model.registry import MODELS, lookup
from clip_server.types import (
    CPU,
    ClipServerError,
    DType,
    Family,
    MissingExtraError,
    Runtime,
    UnsupportedError,
    auto_dtype,
    parse_device,
    parse_dtype,
    require,
)


def test_every_family_has_a_builder_of_its_own():
    assert set(FAMILIES) == set(Family)
    assert all(served.builder.family is family for family, served in FAMILIES.items())


def test_mclip_on_tensorrt_is_refused_with_the_runtimes_that_serve_it(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    with pytest.raises(UnsupportedError) as refused:
        check_supported(lookup('M-CLIP/XLM-Roberta-Large-Vit-B-32'), Runtime.TENSORRT)
    assert str(refused.value) == (
        'M-CLIP/XLM-Roberta-Large-Vit-B-32 cannot be served with TensorRT: its text graph takes texts of any '
        'length, and TensorRT engines are built for graphs whose batch axis alone varies; '
        'serve it with PyTorch, ONNX Runtime or OpenVINO'
    )
    assert not any(tmp_path.iterdir())  # nothing fetched


REFUSED = [(family, runtime) for family, served in FAMILIES.items() for runtime in served.refused]


@pytest.mark.parametrize(('family', 'runtime'), REFUSED, ids=lambda value: str(value))
def test_a_refusal_names_exactly_the_runtimes_the_table_serves_it_with(family, runtime):
    served = FAMILIES[family]
    spec = next(spec for spec in MODELS if spec.family is family)
    with pytest.raises(UnsupportedError) as refused:
        check_supported(spec, runtime)
    reason, _, serve_with = str(refused.value).partition('; serve it with ')
    assert reason == f'{spec.name} cannot be served with {runtime.label}: {served.refused[runtime]}'
    assert re.split(r', | or ', serve_with) == [r.label for r in Runtime if r in served.runtimes], serve_with
    assert runtime not in served.runtimes and Runtime.TORCH in served.runtimes


@pytest.mark.parametrize('runtime', [Runtime.TORCH, Runtime.ONNX])
def test_encoders_share_one_interface(runtime, tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))
    spec = lookup('tiny-vit')
    encoder = build_encoder(spec, runtime, EncoderOptions(model_path=tiny_weights['tiny-vit'], threads=1))
    assert isinstance(encoder, Encoder)
    assert encoder.dim == spec.dim and encoder.dtype is parse_dtype('auto', runtime, CPU)
    assert str(encoder.device) == 'cpu'
    tokens = preprocessor(spec).tokenize(['a cat'])
    assert encoder.encode_text(tokens).dtype == np.float32


def test_dtypes_are_checked_per_runtime_in_one_place():
    cpu, gpu = parse_device('cpu'), parse_device('cuda:1')
    assert parse_dtype(None, Runtime.ONNX, gpu) is parse_dtype('auto', Runtime.TORCH, gpu) is DType.FP16
    assert parse_dtype('bf16', Runtime.TORCH, cpu) is DType.BF16
    assert parse_dtype('int8', Runtime.ONNX, cpu) is DType.INT8
    with pytest.raises(ClipServerError, match="dtype 'bf16' is not one of auto, fp16, fp32 for the TensorRT runtime"):
        parse_dtype('bf16', Runtime.TENSORRT, gpu)
    with pytest.raises(ClipServerError, match='dtype int8 runs on CPU only with the ONNX Runtime runtime'):
        parse_dtype('int8', Runtime.ONNX, gpu)


@pytest.mark.parametrize(
    'flags, runtime, expected',
    [
        ({'avx512f', 'amx_bf16', 'avx512_bf16'}, Runtime.TORCH, DType.BF16),
        ({'avx512f', 'avx512_bf16'}, Runtime.TORCH, DType.BF16),
        ({'avx512f', 'avx512_vnni'}, Runtime.TORCH, DType.FP32),
        ({'avx2'}, Runtime.TORCH, DType.FP32),
        ({'amx_bf16'}, Runtime.ONNX, DType.FP32),  # no bf16 kernels in ONNX Runtime's CPU provider
    ],
)
def test_auto_picks_bf16_only_on_cpus_that_run_it_natively(flags, runtime, expected, monkeypatch):
    monkeypatch.setattr(types, 'cpu_flags', lambda: frozenset(flags))
    dtype, why = auto_dtype(runtime, CPU)
    assert dtype is expected and why
    assert parse_dtype(None, runtime, CPU) is parse_dtype('auto', runtime, CPU) is expected
    assert auto_dtype(runtime, parse_device('cuda'))[0] is DType.FP16


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
