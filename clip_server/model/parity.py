"""How close a fast path (bf16, fp16, int8) stays to fp32, on a fixed probe set.

`compare(reference, candidate, preprocessor)` embeds the same probe texts and images with
both encoders and reports the smallest cosine between an item's two embeddings, and two
top-1 retrieval agreements: whether each candidate embedding finds its own reference
embedding first among all of its modality (identity), and whether each text's best image
(and each image's best text) stays the same (cross-modal; with random weights the margins
between images are tiny, so this one is only meaningful for trained models). The test suite checks the bounds on tiny
models; `python -m clip_server.model.parity NAME --runtime R --dtype D [--weights FILE]`
prints the figures for a real model (docs/benchmark.md has ViT-B-32's), and how far the served
pixels of the probe images stray from the model's own transform (`pixel_parity`: torch resizes
RGB images, see `clip_server.model.preprocess`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clip_server.model.encoder import Encoder
from clip_server.model.preprocess import Preprocessor

PROBE_TEXTS = (
    'a photo of a cat',
    'a dog running on the beach at sunset',
    'two people riding bicycles through a busy city street in the rain',
    'A RED CAR!!!',
    'une crème brûlée sur une table en bois',
    'ein Hund schläft auf dem Sofa',
    '東京の夜景',
    '一只熊猫在吃竹子',
    'pizza 🍕 with extra cheese 🧀',
    'Tom &amp; Jerry &lt;cartoon&gt;',
    'the quick brown fox jumps over the lazy dog; then it runs away, fast.',
    'diagram of a neural network',
    'x',
    '',
    'a very long description of a mountain landscape with snow, pine trees, a frozen lake ' * 4,
    'close-up of a yellow flower',
)


def probe_images(count: int = 16, size: int = 256) -> list[Image.Image]:
    """Deterministic pictures with shapes and colour gradients: varied, and not pure noise."""
    rng = np.random.default_rng(1234)
    images = []
    for _ in range(count):
        ramp = np.linspace(0, 1, size)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 100, 3)
        pixels = np.broadcast_to(ramp, (size, size, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, size, 2)
            radius = int(rng.integers(10, size // 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x - radius, y - radius, x + radius, y + radius), fill=colour)
        images.append(image)
    return images


@dataclass(frozen=True)
class Parity:
    """The candidate against the reference on the probe set (1.0 everywhere: identical)."""

    text_min_cosine: float
    image_min_cosine: float
    identity_top1: float  # share of items whose nearest reference embedding is their own (or ties with it)
    cross_modal_top1: float  # share of texts (and images) whose best match in the other modality is the same

    def __str__(self) -> str:
        return (
            f'min cosine texts {self.text_min_cosine:.5f}, images {self.image_min_cosine:.5f}; '
            f'top-1 agreement: identity {self.identity_top1:.0%}, cross-modal {self.cross_modal_top1:.0%}'
        )


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _best(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return (queries @ targets.T).argmax(1)


def compare(reference: Encoder, candidate: Encoder, preprocessor: Preprocessor) -> Parity:
    """Embed the probe set with both encoders and measure how far the candidate strays."""
    tokens = preprocessor.tokenize(list(PROBE_TEXTS))
    pixels = np.stack([preprocessor.pixels(image) for image in probe_images()])
    ref_text, ref_image = _normalised(reference.encode_text(tokens)), _normalised(reference.encode_image(pixels))
    new_text, new_image = _normalised(candidate.encode_text(tokens)), _normalised(candidate.encode_image(pixels))
    return Parity(
        text_min_cosine=float((ref_text * new_text).sum(1).min()),
        image_min_cosine=float((ref_image * new_image).sum(1).min()),
        identity_top1=float(
            np.mean(np.concatenate([_finds_itself(new_text, ref_text), _finds_itself(new_image, ref_image)]))
        ),
        cross_modal_top1=float(
            np.mean(
                np.concatenate(
                    [
                        _best(new_text, new_image) == _best(ref_text, ref_image),
                        _best(new_image, new_text) == _best(ref_image, ref_text),
                    ]
                )
            )
        ),
    )


def pixel_parity(reference: Encoder, preprocessor: Preprocessor) -> str:
    """The served pixels of the probe images against the model's own transform's, and their embeddings."""
    images = probe_images()
    served = np.stack([preprocessor.pixels(image) for image in images])
    own = np.stack([preprocessor.transform(image).numpy() for image in images])
    gap = np.abs(served - own)
    embedded = (_normalised(reference.encode_image(pixels)) for pixels in (served, own))
    cosine = float(np.prod(list(embedded), axis=0).sum(1).min())
    return (
        f"served pixels against the model's own transform: max {gap.max():.4f}, mean {gap.mean():.5f}; "
        f'{reference.dtype} image min cosine {cosine:.6f}'
    )


def _finds_itself(candidates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Whether each candidate's nearest reference is its own (ties count: two probes a tokenizer
    maps to the same ids embed alike)."""
    similarity = candidates @ references.T
    return similarity.diagonal() >= similarity.max(axis=1) - 1e-6


def main(argv: list[str] | None = None) -> None:
    from clip_server.model import factory
    from clip_server.model.factory import resolve
    from clip_server.types import AUTO, DType, Runtime

    parser = argparse.ArgumentParser(description='A fast path of a model against its fp32 output, on a probe set.')
    parser.add_argument('name', help='a model name, e.g. ViT-B-32::openai')
    parser.add_argument('--runtime', choices=[r.value for r in Runtime], default=Runtime.TORCH.value)
    parser.add_argument(
        '--dtype', default=AUTO, choices=[AUTO, *DType], help='the fast path to check (default: what auto picks here)'
    )
    parser.add_argument('--weights', help='a local weights file (default: the pretrained weights)')
    args = parser.parse_args(argv)
    spec, runtime = resolve(args.name), Runtime(args.runtime)
    preprocessor = factory.preprocessor(spec, args.weights)
    reference, candidate = (
        factory.build_encoder(spec, runtime, factory.EncoderOptions(model_path=args.weights, dtype=dtype), preprocessor)
        for dtype in (DType.FP32, args.dtype)
    )
    print(
        f'{spec.name} on {runtime.label}, {candidate.dtype} against fp32: {compare(reference, candidate, preprocessor)}'
    )
    print(f'{spec.name}: {pixel_parity(reference, preprocessor)}')


if __name__ == '__main__':
    main()
