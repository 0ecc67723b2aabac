"""Client content as images and texts: data URIs, encoded image files, pixel arrays.

The request side of preprocessing: what a client sent, checked and decoded, with errors
that say what is wrong (the caller adds which document). Model input is made from the
result by the model's own preprocessor (`clip_server.model.preprocess`).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from clip_server.types import ConfigurationError, InvalidInputError

ORIENTATION = 0x0112  # the EXIF tag of how a camera held the picture
END_OF_IMAGE = b'\xff\xd9'  # a JPEG's last marker


@dataclass(frozen=True)
class ContentLimits:
    """The most one document may carry. Each refusal names the limit, its value and what was sent.

    Texts are cut to the model's context anyway; `max_text_chars` only stops absurd payloads.
    `max_image_pixels` stops decompression bombs (small files that decode to huge images)
    before any pixel is decoded.

    `max_image_aspect_ratio` bounds the model's resize, which costs what it outputs, not what
    was decoded: open_clip's transform scales the short side to the model's input size S and
    only then crops the center, so an image whose long side is R times its short side becomes
    S x R*S pixels first (a 178-byte 100000x1 PNG would take 224 x 22,400,000: 5 GB). At the
    default 100 that output stays under 100*S^2 pixels: 5 M at 224, 20 M at 448 (20 and 80 MB),
    checked with the pixel count, before decoding. Cropping before resizing would bound it at any
    ratio, but PIL's resize of a box of the source does not give resize-then-crop's pixels bit for
    bit (its box corners are float32 and its pass order depends on the sizes), and served
    pixels must stay within a level of open_clip's (`clip_server.model.preprocess`).
    """

    max_image_bytes: int = 32 * 2**20  # 32 MiB of encoded image
    max_image_pixels: int = 64_000_000  # 8000x8000; a 12 MP phone photo is 4032x3024
    max_text_chars: int = 100_000
    max_image_aspect_ratio: int = 100  # long side over short side; phone panoramas stay under 10

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f'{name} must be a positive integer, got {value!r}')

    def check_text(self, text: str) -> str:
        if len(text) > self.max_text_chars:
            raise InvalidInputError(f'text has {len(text):,} characters, over max_text_chars ({self.max_text_chars:,})')
        return text

    def check_image_bytes(self, data: bytes) -> bytes:
        if len(data) > self.max_image_bytes:
            raise InvalidInputError(
                f'image content is {len(data):,} bytes, over max_image_bytes ({self.max_image_bytes:,})'
            )
        return data

    def check_pixels(self, width: int, height: int) -> None:
        """Refuse an image by its size alone, before its pixels are decoded or resized."""
        if width * height > self.max_image_pixels:
            raise InvalidInputError(
                f'image is too large: {width}x{height} = {width * height:,} pixels, '
                f'over max_image_pixels ({self.max_image_pixels:,})'
            )
        short, long = sorted((width, height))
        if long > self.max_image_aspect_ratio * short:
            raise InvalidInputError(
                f'image is too elongated: {width}x{height}, its long side {long / short:,.1f} times its short side, '
                f'over max_image_aspect_ratio ({self.max_image_aspect_ratio})'
            )


DEFAULT_LIMITS = ContentLimits()


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


def image_from_bytes(data: bytes, min_side: int | None = None, limits: ContentLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode an encoded image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), upright per its EXIF.

    `min_side`: a JPEG at least twice that on its short side is decoded at 1/2, 1/4 or 1/8
    scale in the DCT (PIL's draft mode), keeping its short side >= `min_side`. Pass twice the
    model's input size: the resize that follows still averages 2+ pixels into one, and a 12 MP
    photo decodes 3x faster (measured: 4032x3024 in 31 ms instead of 103; pixels within 0.03 of
    the full decode after normalisation, embeddings at cosine 0.99999; see docs/benchmark.md).
    """
    if not data:
        raise InvalidInputError('image content is empty (0 bytes)')
    limits.check_image_bytes(data)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        limits.check_pixels(image.width, image.height)  # before the pixels are decoded
        if min_side and isinstance(image, JpegImageFile):  # MPO (cameras' JPEGs) included
            image.draft(image.mode, (min_side, min_side))
        image.load()
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses at open above twice its own limit
        raise InvalidInputError(
            f'image is too large: over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, the most PIL decodes '
            f'whatever max_image_pixels says'
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError(
            f'cannot decode image ({len(data)} bytes): not one of the accepted formats ({", ".join(IMAGE_FORMATS)})'
        ) from exc
    except Exception as exc:
        raise InvalidInputError(f'cannot decode image ({len(data)} bytes): {exc}') from exc
    return _upright(image)


def decodable_on_device(data: bytes, limits: ContentLimits = DEFAULT_LIMITS) -> bool:
    """Whether a file can go to `DevicePixels` (`decode_on_device`): a baseline JPEG, RGB or
    greyscale, upright (no EXIF rotation), whole (ending with its end-of-image marker: nvJPEG
    decodes a file cut short as far as it goes, where Pillow refuses it; seen on an H200), within
    the limits; read from its header alone. Anything else, refusals included, takes the CPU path,
    which decodes it or says why not."""
    if not data.endswith(END_OF_IMAGE):
        return False
    try:
        limits.check_image_bytes(data)
        image = Image.open(io.BytesIO(data), formats=['JPEG'])
        limits.check_pixels(image.width, image.height)
        upright = image.getexif().get(ORIENTATION, 1) == 1
    except Exception:  # not a JPEG, over a limit, a broken header: the CPU path says which
        return False
    progressive = image.info.get('progressive') or image.info.get('progression')
    return image.format == 'JPEG' and image.mode in ('RGB', 'L') and upright and not progressive


def image_from_array(array: np.ndarray, limits: ContentLimits = DEFAULT_LIMITS) -> Image.Image:
    """An HxWx3 (or HxW, HxWx4) uint8 array as a PIL image."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InvalidInputError(f'image tensor must be uint8 HxWx3, got dtype {array.dtype}')
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f'image tensor must be HxWx3 (or HxW, HxWx4), got shape {array.shape}')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f'image tensor is empty: shape {array.shape}')
    limits.check_pixels(array.shape[1], array.shape[0])
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the image
        return image
