import numpy as np
import pytest

from clip_server.model.factory import builder_for, preprocessor
from clip_server.model.families.openclip import quick_gelu_for
from clip_server.model.registry import lookup
from clip_server.model.torch_utils import usable_device
from clip_server.types import Family, Runtime, parse_dtype
from helpers import reference_image_embeddings, reference_text_embeddings, sample_image, torch_encoder

TEXTS = ['a photo of a cat', 'ein Hund im Schnee', '', 'x ' * 200]


@pytest.mark.parametrize('arch', ['tiny-vit', 'tiny-rn'])
@pytest.mark.parametrize('jit', [False, True])
def test_embeddings_equal_open_clip_in_process(arch, jit, tiny_weights, reference):
    spec = lookup(arch)
    model = torch_encoder(spec, tiny_weights[arch], jit=jit)
    tokens_and_pixels = preprocessor(spec)
    images = [sample_image(seed) for seed in range(3)]

    texts = model.encode_text(tokens_and_pixels.tokenize(TEXTS))
    pixels = model.encode_image(np.stack([tokens_and_pixels.pixels(image) for image in images]))

    assert texts.dtype == pixels.dtype == np.float32
    assert texts.shape == (len(TEXTS), spec.dim) and pixels.shape == (3, spec.dim)
    np.testing.assert_allclose(texts, reference_text_embeddings(reference(arch), TEXTS), atol=1e-5)
    np.testing.assert_allclose(pixels, reference_image_embeddings(reference(arch), images), atol=1e-5)


def test_bf16_stays_close_and_returns_float32(tiny_weights, reference):
    spec = lookup('tiny-vit')
    model = torch_encoder(spec, tiny_weights['tiny-vit'], dtype='bf16')
    embeddings = model.encode_text(preprocessor(spec).tokenize(TEXTS[:2]))
    assert embeddings.dtype == np.float32
    expected = reference_text_embeddings(reference('tiny-vit'), TEXTS[:2])
    assert np.abs(embeddings - expected).max() < 0.1 * np.abs(expected).max()


def test_activation_follows_the_weights():
    assert quick_gelu_for(lookup('ViT-B-32::openai'))
    assert quick_gelu_for(lookup('ViT-B-32::laion400m_e32'))
    assert quick_gelu_for(lookup('RN50::yfcc15m'))
    assert not quick_gelu_for(lookup('ViT-B-32::laion2b-s34b-b79k'))
    assert not quick_gelu_for(lookup('tiny-vit'))


def test_bad_runtime_options_are_named():
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        parse_dtype('fp8', Runtime.TORCH)
    with pytest.raises(ValueError, match="device 'gpu'"):
        usable_device('gpu')
    if not __import__('torch').cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            usable_device('cuda')


def test_mclip_is_built_by_its_own_family():
    assert builder_for(lookup('M-CLIP/XLM-Roberta-Large-Vit-B-32')).family is Family.MCLIP
    assert builder_for(lookup('tiny-vit')).family is Family.OPEN_CLIP


def test_openai_style_torchscript_archive_loads(tiny_weights, reference, tmp_path):
    """OpenAI publishes TorchScript archives (with three extra scalars); they load like a state dict."""
    import torch

    from clip_server.model.families.openclip import create_open_clip_model, is_torchscript_archive

    spec = lookup('tiny-vit')
    scripted = torch.jit.script(create_open_clip_model(spec, tiny_weights['tiny-vit']))
    scripted.input_resolution = 224  # as in OpenAI's archives
    archive = tmp_path / 'ViT-tiny.pt'
    torch.jit.save(scripted, str(archive))
    assert is_torchscript_archive(archive) and not is_torchscript_archive(tiny_weights['tiny-vit'])

    model = torch_encoder(spec, archive)
    tokens = preprocessor(spec).tokenize(TEXTS)
    np.testing.assert_allclose(
        model.encode_text(tokens), reference_text_embeddings(reference('tiny-vit'), TEXTS), atol=1e-5
    )
