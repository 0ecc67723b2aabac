"""What the benchmark sends: captions and photo-like JPEGs, made on the fly (nothing to download)."""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SUBJECTS = (
    'a golden retriever',
    'two children in matching red jackets',
    'an old fisherman',
    'a vintage blue car',
    'a steaming bowl of ramen',
    'a young woman holding an umbrella',
    'a flock of seagulls',
    'a small wooden sailboat',
    'a sleepy tabby cat',
    'a cyclist in a bright helmet',
    'a stack of old books',
    'a street musician with a guitar',
)
_ACTIONS = ('running along', 'sitting next to', 'parked in front of', 'waiting near', 'resting on', 'passing by')
_PLACES = (
    'a sandy beach',
    'a busy city street',
    'a snowy mountain trail',
    'the kitchen table',
    'a crowded night market',
    'an empty parking lot',
    'a quiet library',
    'a field of sunflowers',
)
_DETAILS = (
    'at sunset',
    'in the rain',
    'on a foggy morning',
    'with tall trees in the background',
    'under a clear blue sky',
    'surrounded by tourists',
    'in black and white',
    'seen from above',
    'lit by neon signs',
)


def captions(count: int, seed: int = 0) -> list[str]:
    """Photo captions of varied length (about 10 to 25 tokens), the same on every run."""
    rng = random.Random(seed)
    return [
        ' '.join(
            [rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_PLACES), *rng.sample(_DETAILS, rng.randint(1, 2))]
        )
        for _ in range(count)
    ]


def photo_jpeg(seed: int, width: int = 640, height: int = 480) -> bytes:
    """A JPEG that decodes and compresses like a photo: a gradient, soft shapes and sensor grain.

    Pure noise would make files several times larger than photos, and slower to send and decode.
    """
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(0, 255, (2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, width / 4), rng.uniform(20, height / 4)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
    pixels += rng.normal(0, 5, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def slices(items: Sequence, size: int) -> list[list]:
    """Consecutive slices of `size`; a shorter rest is left out, so every batch has `size` items."""
    return [list(items[i : i + size]) for i in range(0, len(items) - size + 1, size)]


def batches(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive slices of `size`, round and round, so successive requests differ."""
    return itertools.cycle(slices(items, size))
