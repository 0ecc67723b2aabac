"""open_clip models with timm image towers: MobileCLIP's re-parameterised for inference, on
torch and ONNX, equal to open_clip's own (un-folded) output."""

import numpy as np
import open_clip
import torch

from clip_server.model.factory import builder_for, export_onnx, preprocessor
from clip_server.model.registry import resolve
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from helpers import sample_image, torch_encoder

TEXTS = ['a photo of a cat', 'word ' * 100]


def test_mobileclip_is_folded_for_inference_and_equals_open_clip(tiny_weights, tmp_path):
    spec, weights = resolve('tiny-mobileclip'), tiny_weights['tiny-mobileclip']
    model, _, transform = open_clip.create_model_and_transforms('tiny-mobileclip', pretrained=str(weights))
    images = [sample_image(seed) for seed in range(2)]
    with torch.no_grad():
        expected_texts = model.eval().encode_text(open_clip.get_tokenizer('tiny-mobileclip')(TEXTS)).numpy()
        expected_images = model.encode_image(torch.stack([transform(image) for image in images])).numpy()
    towers = builder_for(spec).towers(spec, weights)
    folded = sum(p.numel() for p in towers.image.parameters())
    assert folded < sum(p.numel() for p in model.visual.parameters())  # the branches were merged
    pre = preprocessor(spec)
    tokens, pixels = pre.tokenize(TEXTS), np.stack([pre.pixels(image) for image in images])
    served = torch_encoder(spec, weights)
    np.testing.assert_allclose(served.encode_text(tokens), expected_texts, atol=1e-4)
    np.testing.assert_allclose(served.encode_image(pixels), expected_images, atol=1e-4)
    onnx = ONNXEncoder(export_onnx(spec, weights, tmp_path / 'onnx'), image_size=spec.image_size)
    np.testing.assert_allclose(onnx.encode_text(tokens), expected_texts, atol=1e-4)
    np.testing.assert_allclose(onnx.encode_image(pixels), expected_images, atol=1e-4)
