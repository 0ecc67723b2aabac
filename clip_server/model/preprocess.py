"""The model's own input pipeline: its tokenizer and its image transform.

Pixels come out exactly as the model's own open_clip transform makes them, so a served
embedding equals the one computed in-process from the same image. Which tokenizer a model
uses is its family's business (`clip_server.model.factory.preprocessor` builds one).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clip_server.model.device_pixels import DevicePixels
from clip_server.model.families.base import Tokenizer
from clip_server.model.registry import ModelSpec


def image_transform(spec: ModelSpec, hub_preprocess: dict | None = None):
    """open_clip's eval transform with the pretrained weights' own size, mean/std and resizing
    (for an `hf-hub:` model, `hub_preprocess`: its repo config's `preprocess_cfg`)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else hub_preprocess or {}
    return open_clip.image_transform(
        spec.image_size,
        is_train=False,
        mean=cfg.get('mean'),
        std=cfg.get('std'),
        resize_mode=cfg.get('resize_mode'),
        interpolation=cfg.get('interpolation'),
    )


class Preprocessor:
    """Texts into token rows and images into pixels, as the model was trained on them.

    The transform's PIL steps (resize, crop, RGB) run as they are; its last two, ToTensor and
    Normalize, run in numpy with the same float32 arithmetic (identical pixels). torch would
    run them on its intra-op threads, which the model's forward pass is using at the same
    time: the preprocessing workers and the model then fight over the cores.

    The resize costs what it outputs: the short side goes to the input size S before the crop,
    so an image R times longer than wide becomes S x R*S pixels first. Client images come
    through `ContentLimits` (`clip_server.executors.content`), whose `max_image_aspect_ratio`
    bounds R before they are decoded; so every model's resize (shortest side, squash, longest)
    stays small.
    """

    def __init__(self, tokenizer: Tokenizer, transform):
        self._tokenizer = tokenizer
        self._transform = transform
        self._pil_steps, self._normalization = _split_transform(transform)

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
        if self._normalization is None:
            return self._transform(image).numpy()
        for step in self._pil_steps:
            image = step(image)
        mean, std = self._normalization
        return (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255) - mean) / std

    def on_device(self, device: str) -> DevicePixels | None:
        """This transform done on `device` for JPEG files (`clip_server.model.device_pixels`), if it
        is the plain one (short-side resize, center crop, normalise); else None."""
        if self._normalization is None:
            return None
        mean, std = (values.reshape(-1).tolist() for values in self._normalization)
        return DevicePixels.of_transform(self._pil_steps, mean, std, device)


def _split_transform(transform) -> tuple[list, tuple[np.ndarray, np.ndarray] | None]:
    """(the PIL steps, (mean, std)) of a Compose ending in ToTensor then Normalize; else ([], None)."""
    from torchvision.transforms import Normalize, ToTensor  # open_clip's MaybeToTensor is a ToTensor

    steps = list(getattr(transform, 'transforms', []))
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        return [], None
    shape = (-1, 1, 1)
    mean, std = (np.asarray(values, dtype=np.float32).reshape(shape) for values in (steps[-1].mean, steps[-1].std))
    return steps[:-2], (mean, std)
