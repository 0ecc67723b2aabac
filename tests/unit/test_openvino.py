"""OpenVINO runtime: fp32 equals PyTorch, bf16 and int8 keep the stated parity, int8 is made once."""

import re
import sys

import numpy as np
import pytest

from clip_server.model.factory import EncoderOptions, build_encoder, export_onnx, preprocessor
from clip_server.model.parity import compare
from clip_server.model.registry import lookup
from clip_server.types import ConfigurationError, DType, MissingExtraError, Runtime
from helpers import sample_image, torch_encoder

pytest.importorskip('openvino')
pytest.importorskip('nncf')

ARCHS = ['tiny-vit', 'tiny-rn']
TEXTS = ['a photo of a cat', 'hello! world!', '', 'x ' * 200]
TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.99  # what docs/benchmark.md states for int8, as for ONNX Runtime's


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def openvino(arch: str, weights, dtype: str = 'fp32', **options):
    options = {'dtype': dtype, 'threads': 1, **options}
    return build_encoder(lookup(arch), Runtime.OPENVINO, EncoderOptions(model_path=weights[arch], **options))


@pytest.mark.parametrize('arch', ARCHS)
def test_fp32_embeddings_equal_the_pytorch_runtime(arch, tiny_weights, cache):
    spec = lookup(arch)
    model, reference = openvino(arch, tiny_weights), torch_encoder(spec, tiny_weights[arch])
    model_input = preprocessor(spec)
    for batch in (1, 4):  # the batch axis, and the text rows' length, are dynamic
        tokens = model_input.tokenize((TEXTS * batch)[:batch])
        pixels = np.stack([model_input.pixels(sample_image(seed)) for seed in range(batch)])
        texts, images = model.encode_text(tokens), model.encode_image(pixels)
        assert texts.dtype == images.dtype == np.float32
        assert texts.shape == images.shape == (batch, spec.dim)
        np.testing.assert_allclose(texts, reference.encode_text(tokens), atol=TOLERANCE)
        np.testing.assert_allclose(images, reference.encode_image(pixels), atol=TOLERANCE)
    assert model.description.startswith('OpenVINO') and 'fp32' in model.description


def test_bf16_keeps_min_cosine_0999(tiny_weights, cache):
    spec = lookup('tiny-vit')
    reference = torch_encoder(spec, tiny_weights['tiny-vit'])
    parity = compare(reference, openvino('tiny-vit', tiny_weights, 'bf16'), preprocessor(spec))
    assert parity.text_min_cosine >= 0.999 and parity.image_min_cosine >= 0.999, parity
    assert parity.identity_top1 == 1.0, parity


@pytest.mark.parametrize('arch', ARCHS)
def test_int8_keeps_what_the_docs_state_and_is_quantized_once(arch, tiny_weights, cache):
    spec = lookup(arch)
    model = openvino(arch, tiny_weights, 'int8')
    parity = compare(torch_encoder(spec, tiny_weights[arch]), model, preprocessor(spec))
    assert parity.text_min_cosine >= INT8_MIN_COSINE and parity.image_min_cosine >= INT8_MIN_COSINE, parity
    assert parity.identity_top1 == 1.0, parity
    assert parity.text_min_cosine < 0.99999  # really quantized, not the fp32 graphs again
    (made,) = (path for path in (cache / 'openvino' / arch).iterdir() if path.is_dir())
    assert sorted(p.name for p in made.iterdir()) == ['textual.bin', 'textual.xml', 'visual.bin', 'visual.xml']
    stamp = made.stat().st_mtime_ns
    openvino(arch, tiny_weights, 'int8')  # a second start reuses it
    assert [p.name for p in (cache / 'openvino' / arch).iterdir() if p.is_dir()] == [made.name]
    assert made.stat().st_mtime_ns == stamp


def test_an_exported_folder_is_served_as_is(tiny_weights, tmp_path, cache):
    spec = lookup('tiny-rn')
    folder = export_onnx(spec, tiny_weights['tiny-rn'], tmp_path / 'exported')
    model = build_encoder(spec, Runtime.OPENVINO, EncoderOptions(model_path=folder, dtype='fp32', threads=1))
    pixels = preprocessor(spec).pixels(sample_image(1))[None]
    reference = torch_encoder(spec, tiny_weights['tiny-rn'])
    np.testing.assert_allclose(model.encode_image(pixels), reference.encode_image(pixels), atol=TOLERANCE)
    assert not cache.exists()


def test_given_graphs_and_settings_make_the_same_encoder(tiny_weights, tmp_path, cache):
    """`from_models` (the benchmark's way in) compiles what it is given, and is otherwise the runtime's encoder."""
    from clip_server.model.runtimes.openvino_runtime import OpenVINOEncoder, compile_properties, native_bf16

    spec = lookup('tiny-vit')
    folder = export_onnx(spec, tiny_weights['tiny-vit'], tmp_path / 'exported')
    served = build_encoder(spec, Runtime.OPENVINO, EncoderOptions(model_path=folder, dtype='bf16', threads=1))
    properties = compile_properties(DType.BF16, 1)
    given = OpenVINOEncoder.from_models(
        folder, folder / 'textual.onnx', folder / 'visual.onnx', properties, dtype=DType.BF16
    )
    model_input = preprocessor(spec)
    tokens = model_input.tokenize(TEXTS)
    pixels = model_input.pixels(sample_image(1))[None]
    np.testing.assert_array_equal(given.encode_text(tokens), served.encode_text(tokens))
    np.testing.assert_array_equal(given.encode_image(pixels), served.encode_image(pixels))
    assert given.description == served.description
    precision = 'bf16' if native_bf16() else r'\w+'  # OpenVINO may run f32 where bf16 is not native
    layers = (
        rf'texts: FullyConnected {precision} x\d+; images: Convolution {precision} x1, FullyConnected {precision} x\d+'
    )
    assert re.fullmatch(layers, given.layer_precisions()), given.layer_precisions()


@pytest.mark.parametrize('options, message', [({'device': 'cuda'}, 'serves on CPU'), ({'dtype': 'fp16'}, 'fp16')])
def test_what_it_cannot_run_is_refused(options, message, tiny_weights):
    with pytest.raises(ConfigurationError, match=message):
        openvino('tiny-vit', tiny_weights, **options)


def test_without_the_extra_the_error_names_it(tiny_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "clip-server\[openvino\]"'):
        build_encoder(lookup('tiny-vit'), Runtime.OPENVINO, EncoderOptions(model_path=tiny_weights['tiny-vit']))
