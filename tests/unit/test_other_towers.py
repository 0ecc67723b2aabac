"""open_clip models whose towers are not CLIP's: MobileCLIP's timm FastViT tower (re-parameterised
for inference) and CoCa's (attentional pooling, a CLS token; its contrastive embeddings), on
torch and ONNX, equal to open_clip's own output."""

import numpy as np
import open_clip
import torch

from clip_server.model.factory import builder_for, export_onnx, preprocessor
from clip_server.model.registry import lookup
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from helpers import sample_image, torch_encoder

TEXTS = ['a photo of a cat', 'word ' * 100]


def check_served_equal_open_clip(arch: str, weights, tmp_path) -> None:
    """Torch and ONNX serving of `arch` against open_clip's encode_text/encode_image (raw)."""
    spec = lookup(arch)
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=str(weights))
    images = [sample_image(seed) for seed in range(2)]
    with torch.no_grad():
        texts = model.eval().encode_text(open_clip.get_tokenizer(arch)(TEXTS), normalize=False).numpy()
        pixels = model.encode_image(torch.stack([transform(image) for image in images]), normalize=False).numpy()
    pre = preprocessor(spec)
    tokens, inputs = pre.tokenize(TEXTS), np.stack([pre.pixels(image) for image in images])
    onnx = ONNXEncoder(export_onnx(spec, weights, tmp_path / 'onnx'), image_size=spec.image_size)
    for encoder in (torch_encoder(spec, weights), onnx):
        np.testing.assert_allclose(encoder.encode_text(tokens), texts, atol=1e-4)
        np.testing.assert_allclose(encoder.encode_image(inputs), pixels, atol=1e-4)


def test_mobileclip_is_folded_for_inference_and_equals_open_clip(tiny_weights, tmp_path):
    spec, weights = lookup('tiny-mobileclip'), tiny_weights['tiny-mobileclip']
    towers = builder_for(spec).towers(spec, weights)
    unfolded = open_clip.create_model('tiny-mobileclip').visual
    assert sum(p.numel() for p in towers.image.parameters()) < sum(p.numel() for p in unfolded.parameters())
    check_served_equal_open_clip('tiny-mobileclip', weights, tmp_path)


def test_coca_serves_its_contrastive_embeddings(tiny_weights, tmp_path):
    assert preprocessor(lookup('tiny-coca')).tokenize(['x']).shape == (1, 76)  # CoCa's own context
    check_served_equal_open_clip('tiny-coca', tiny_weights['tiny-coca'], tmp_path)
