"""The model's own input pipeline: its tokenizer and its image transform.

Pixels come out exactly as the model's own open_clip transform makes them, so a served
embedding equals the one computed in-process from the same image. Which tokenizer a model
uses is its family's business (`clip_server.model.factory.preprocessor` builds one).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clip_server.model.families.base import Tokenizer
from clip_server.model.registry import ModelSpec


def image_transform(spec: ModelSpec):
    """open_clip's eval transform with the pretrained weights' own size, mean/std and resizing."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    return open_clip.image_transform(
        spec.image_size,
        is_train=False,
        mean=cfg.get('mean'),
        std=cfg.get('std'),
        resize_mode=cfg.get('resize_mode'),
        interpolation=cfg.get('interpolation'),
    )


class Preprocessor:
    """Texts into token rows and images into pixels, as the model was trained on them."""

    def __init__(self, tokenizer: Tokenizer, transform):
        self._tokenizer = tokenizer
        self._transform = transform

    @property
    def pad_token_id(self) -> int | None:
        """The padding id of a `transformers` tokenizer that pads with something other than CLIP's 0."""
        return getattr(self._tokenizer, 'pad_token_id', None)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int64 [N, 77] token ids; longer texts are cut, keeping the end-of-text token last."""
        tokens = self._tokenizer(texts)
        return tokens if isinstance(tokens, np.ndarray) else tokens.numpy()

    def pixels(self, image: Image.Image) -> np.ndarray:
        """float32 [3, S, S]: RGB, short side resized, center-cropped, normalised."""
        return self._transform(image).numpy()
