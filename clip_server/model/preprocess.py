"""Turning client content into model input: image bytes/arrays into pixels, texts into tokens.

Pixels come out exactly as the model's own open_clip transform makes them, so a served
embedding equals the one computed in-process from the same image.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clip_server.model.registry import MCLIP, ModelSpec


class InvalidInputError(ValueError):
    """Client content that cannot become model input; the message says why."""


def bytes_from_data_uri(uri: str) -> bytes:
    """Decode a `data:[<mime>][;base64],<payload>` URI (RFC 2397)."""
    header, sep, payload = uri.partition(',')
    if not header.startswith('data:') or not sep:
        raise InvalidInputError('malformed data URI: expected "data:[<mime>][;base64],<payload>"')
    if header.endswith(';base64'):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError(f'data URI has invalid base64: {exc}') from exc
    return unquote_to_bytes(payload)


# Formats decoded in-process by Pillow; others (EPS would run Ghostscript on client bytes) are refused.
IMAGE_FORMATS = ('JPEG', 'PNG', 'WEBP', 'GIF', 'BMP', 'TIFF')  # JPEG covers cameras' MPO files


def image_from_bytes(data: bytes) -> Image.Image:
    """Decode an encoded image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), upright per its EXIF."""
    if not data:
        raise InvalidInputError('image content is empty (0 bytes)')
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:  # checked before the pixels are decoded
            raise Image.DecompressionBombError(
                f'{image.width}x{image.height} pixels is more than the limit of {Image.MAX_IMAGE_PIXELS}'
            )
        image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f'image is too large to decode safely: {exc}') from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError(
            f'cannot decode image ({len(data)} bytes): not one of the accepted formats ({", ".join(IMAGE_FORMATS)})'
        ) from exc
    except Exception as exc:
        raise InvalidInputError(f'cannot decode image ({len(data)} bytes): {exc}') from exc
    return _upright(image)


def image_from_array(array: np.ndarray) -> Image.Image:
    """An HxWx3 (or HxW, HxWx4) uint8 array as a PIL image."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InvalidInputError(f'image tensor must be uint8 HxWx3, got dtype {array.dtype}')
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f'image tensor must be HxWx3 (or HxW, HxWx4), got shape {array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f'image tensor is empty: shape {array.shape}')
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the image
        return image


class Preprocessor:
    """The model's own input pipeline: its tokenizer and its image transform.

    CLIP's BPE tokenizer ships with open_clip; a `transformers` tokenizer (M-CLIP's, or
    an open_clip HF-text-tower model's) comes from a `model_path` folder holding
    tokenizer.json, else from the Hub through the cache.
    """

    def __init__(self, spec: ModelSpec, model_path: str | os.PathLike | None = None, context_length: int = 77):
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
        self._transform = open_clip.image_transform(
            spec.image_size,
            is_train=False,
            mean=cfg.get('mean'),
            std=cfg.get('std'),
            resize_mode=cfg.get('resize_mode'),
            interpolation=cfg.get('interpolation'),
        )
        self._tokenizer = _tokenizer(spec, model_path, context_length)

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


def _tokenizer(spec: ModelSpec, model_path: str | os.PathLike | None, context_length: int):
    import open_clip

    from clip_server.model import hf_text

    folder = model_path if model_path and Path(model_path).expanduser().is_dir() else None
    if spec.family == MCLIP:
        return hf_text.HFTokenizer(hf_text.tokenizer_folder(spec.name, folder), context_length)
    text_cfg = open_clip.get_model_config(spec.arch)['text_cfg']
    if not text_cfg.get('hf_tokenizer_name'):
        return open_clip.get_tokenizer(spec.arch, context_length=context_length)
    # open_clip's own wrapper (its text cleaning and options), loading from our cache, not by Hub name
    return open_clip.tokenizer.HFTokenizer(
        str(hf_text.tokenizer_folder(text_cfg['hf_tokenizer_name'], folder)),
        context_length=context_length,
        tokenizer_mode=text_cfg.get('tokenizer_mode'),
        **text_cfg.get('tokenizer_kwargs', {}),
    )
