"""SigLIP-style open_clip models: their own Hub tokenizer at their own context length, the
bidirectional tower's full rows, on torch and ONNX, equal to open_clip's in-process output."""

import numpy as np
import open_clip
import pytest
import torch

import tiny_hf
from clip_server.model.factory import export_onnx, preprocessor
from clip_server.model.registry import lookup
from clip_server.model.runtimes.onnx_folder import read_text_metadata
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from clip_server.types import CLIP_SCORING, Scoring
from helpers import sample_image, torch_encoder

TEXTS = ['a photo of a cat', 'ein Hund auf der Wiese', 'word ' * 40]
TOLERANCE = 1e-4


@pytest.fixture
def siglip(tiny_weights, tmp_path, monkeypatch):
    """The tiny SigLIP's spec, weights, tokenizer folder, and open_clip's own model and tokenizer."""
    folder = tiny_hf.publish_siglip_tokenizer(tmp_path / 'cache')
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'cache'))
    model, _, transform = open_clip.create_model_and_transforms(
        'tiny-siglip', pretrained=str(tiny_weights['tiny-siglip'])
    )
    reference_tokenizer = open_clip.tokenizer.HFTokenizer(str(folder), context_length=16, clean='canonicalize')
    return lookup('tiny-siglip'), tiny_weights['tiny-siglip'], model.eval(), transform, reference_tokenizer


def test_the_tokenizer_is_the_models_own_at_its_context_length(siglip):
    spec, _, _, _, reference_tokenizer = siglip
    tokens = preprocessor(spec).tokenize(TEXTS)
    assert tokens.shape == (3, 16)
    np.testing.assert_array_equal(tokens, reference_tokenizer(TEXTS).numpy())
    end_of_text = reference_tokenizer.tokenizer.convert_tokens_to_ids('</s>')
    assert tokens[2, -1] == end_of_text  # a long text is cut keeping the tokenizer's own end token


def test_torch_and_onnx_equal_open_clip(siglip, tmp_path):
    spec, weights, model, transform, reference_tokenizer = siglip
    with torch.no_grad():
        texts = model.encode_text(reference_tokenizer(TEXTS)).numpy()
        images = model.encode_image(torch.stack([transform(sample_image(seed)) for seed in range(2)])).numpy()
    pre = preprocessor(spec)
    tokens, pixels = pre.tokenize(TEXTS), np.stack([pre.pixels(sample_image(seed)) for seed in range(2)])
    served = torch_encoder(spec, weights)
    np.testing.assert_allclose(served.encode_text(tokens), texts, atol=TOLERANCE)
    np.testing.assert_allclose(served.encode_image(pixels), images, atol=TOLERANCE)
    folder = export_onnx(spec, weights, tmp_path / 'onnx')
    assert read_text_metadata(folder).context_length == 16  # what TensorRT sizes its profile by
    onnx = ONNXEncoder(folder, image_size=spec.image_size)
    np.testing.assert_allclose(onnx.encode_text(tokens), texts, atol=TOLERANCE)
    np.testing.assert_allclose(onnx.encode_image(pixels), images, atol=TOLERANCE)
    # /rank follows the model's sigmoid, with its own learned scale and bias, on both runtimes
    expected = Scoring(scale=float(model.logit_scale.exp()), bias=float(model.logit_bias))
    assert served.scoring == onnx.scoring == expected and expected.bias == -10


def test_clip_trained_models_keep_clips_softmax(tiny_weights, tmp_path):
    spec = lookup('tiny-vit')
    onnx = ONNXEncoder(export_onnx(spec, tiny_weights['tiny-vit'], tmp_path / 'onnx'))
    assert torch_encoder(spec, tiny_weights['tiny-vit']).scoring == onnx.scoring == CLIP_SCORING
