"""The model's own input pipeline: its tokenizer and its image transform.

Pixels come out as the model's own open_clip transform makes them (within one level of 255
where torch resizes, see `Preprocessor`), so a served embedding matches the one computed
in-process from the same image. Which tokenizer a model
uses is its family's business (`clip_server.model.factory.preprocessor` builds one).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from clip_server.model.device_pixels import DevicePixels, resized_center_crop
from clip_server.model.families.base import Tokenizer
from clip_server.model.registry import ModelSpec

# What torch's uint8 resize does as Pillow does (within a level): RGB and greyscale images, these filters
TORCH_MODES = ('RGB', 'L')
TORCH_INTERPOLATIONS = (InterpolationMode.BICUBIC, InterpolationMode.BILINEAR)
# How far served pixels may stray from open_clip's transform on a full decode, after normalisation
# (largest and mean absolute difference): JPEG draft decoding and torch's resize stay within it.
PIXEL_TOLERANCE = (0.06, 0.004)  # draft decoding alone: up to 0.057 and 0.0037 on generated photos


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

    The plain transform (short side resized, bicubic or bilinear, then a square center crop:
    every pretrained model's) runs on RGB and greyscale images larger than the input size in
    torch's uint8 resize, 6x faster than Pillow's for a 640x480 photo; its pixels differ from
    open_clip's by one level of 255 at most (0.015 after normalisation; docs/benchmark.md, "Image
    decoding and resizing"). Smaller images (an upscale costs little; their pixels stay open_clip's
    bit for bit), other modes (alpha, palette, CMYK, 16-bit: Pillow resizes them its own way) and
    other transforms run the transform's PIL steps as they are. ToTensor and Normalize then run in numpy with the same
    float32 arithmetic (identical pixels). torch would run them on its intra-op threads, which the
    model's forward pass is using at the same time: the preprocessing workers and the model then
    fight over the cores (the uint8 resize is single-threaded: it does not).

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
        plain = self.on_device('cpu')
        self._resize = plain if plain is not None and plain.interpolation in TORCH_INTERPOLATIONS else None

    @property
    def transform(self):
        """The model's own open_clip transform: what the served pixels are checked against."""
        return self._transform

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
        if self._resize is not None and image.mode in TORCH_MODES and min(image.size) > self._resize.size:
            rgb = torch.from_numpy(np.array(image.convert('RGB') if image.mode != 'RGB' else image))
            crop = resized_center_crop(rgb.permute(2, 0, 1), self._resize.size, self._resize.interpolation)
            array = crop.permute(1, 2, 0).numpy()  # S x S x 3, as Pillow's crop would be
        else:
            for step in self._pil_steps:
                image = step(image)
            array = np.asarray(image)
        mean, std = self._normalization
        return (array.astype(np.float32).transpose(2, 0, 1) / np.float32(255) - mean) / std

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
