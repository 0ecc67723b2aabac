"""Fast paths against fp32 on the probe set: bf16 and fp16 keep 0.999 cosine, int8 what it states."""

import pytest

from clip_server.model.factory import EncoderOptions, build_encoder, preprocessor
from clip_server.model.parity import PROBE_TEXTS, compare, main, probe_images
from clip_server.model.registry import lookup
from clip_server.types import Runtime

# What docs/benchmark.md states for int8 (ONNX Runtime dynamic quantization).
INT8_MIN_COSINE = 0.99


def encoders(arch: str, runtime: Runtime, dtype: str, weights, cache):
    spec = lookup(arch)
    built = [
        build_encoder(spec, runtime, EncoderOptions(model_path=weights[arch], dtype=d, threads=1))
        for d in ('fp32', dtype)
    ]
    return built, preprocessor(spec)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path))


def test_an_encoder_matches_itself_exactly(tiny_weights):
    (reference, _), model_input = encoders('tiny-vit', Runtime.TORCH, 'fp32', tiny_weights, None)
    parity = compare(reference, reference, model_input)
    assert parity.identity_top1 == parity.cross_modal_top1 == 1.0
    assert parity.text_min_cosine > 0.99999 and parity.image_min_cosine > 0.99999


@pytest.mark.parametrize('arch', ['tiny-vit', 'tiny-rn'])
@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_half_precision_keeps_min_cosine_0999(arch, dtype, tiny_weights):
    (reference, candidate), model_input = encoders(arch, Runtime.TORCH, dtype, tiny_weights, None)
    parity = compare(reference, candidate, model_input)
    assert parity.text_min_cosine >= 0.999 and parity.image_min_cosine >= 0.999, parity
    assert parity.identity_top1 == 1.0, parity


def test_int8_keeps_what_the_docs_state(tiny_weights, cache):
    (reference, candidate), model_input = encoders('tiny-vit', Runtime.ONNX, 'int8', tiny_weights, cache)
    parity = compare(reference, candidate, model_input)
    assert parity.text_min_cosine >= INT8_MIN_COSINE and parity.image_min_cosine >= INT8_MIN_COSINE, parity
    assert parity.identity_top1 == 1.0, parity
    assert parity.text_min_cosine < 0.99999  # really quantized, not the fp32 graph again


def test_the_probe_set_is_varied_and_fixed():
    assert len(set(PROBE_TEXTS)) == len(PROBE_TEXTS) and '' in PROBE_TEXTS
    first, again = probe_images(), probe_images()
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]
    assert len({image.tobytes() for image in first}) == len(first)


def test_the_command_prints_the_figures(tiny_weights, capsys):
    main(['tiny-vit', '--dtype', 'bf16', '--weights', str(tiny_weights['tiny-vit'])])
    out = capsys.readouterr().out
    assert 'bf16 against fp32: min cosine texts 0.99' in out
    assert "served pixels against the model's own transform: max 0.0" in out  # torch's resize: a level or two


def test_int8_of_a_graph_with_external_weights_keeps_them_external(tiny_weights, tmp_path):
    from clip_server.model.factory import export_onnx

    spec = lookup('tiny-vit')
    folder = export_onnx(spec, tiny_weights['tiny-vit'], tmp_path / 'int8', dtype='int8', external_data=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ['textual.onnx', 'textual.onnx.data', 'visual.onnx', 'visual.onnx.data']
    )
    fp32 = build_encoder(
        spec,
        Runtime.ONNX,
        EncoderOptions(model_path=export_onnx(spec, tiny_weights['tiny-vit'], tmp_path / 'fp32'), threads=1),
    )
    int8 = build_encoder(spec, Runtime.ONNX, EncoderOptions(model_path=folder, threads=1))
    assert compare(fp32, int8, preprocessor(spec)).text_min_cosine >= INT8_MIN_COSINE
