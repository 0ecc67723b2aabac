"""`decode_on_device`: JPEGs decoded and resized by torch on the model's device.

On a GPU that is nvJPEG; here the same code runs on the CPU (torchvision's libjpeg path), which
checks the transform, the batching, the fallbacks and the failures. The GPU's own figures are in
docs/benchmark.md ("On a GPU").
"""

import asyncio
import base64
import io

import numpy as np
import open_clip
import pytest
import torch
from docarray import Document, DocumentArray
from PIL import Image

from clip_server.executors.clip_torch import CLIPEncoder
from clip_server.executors.content import decodable_on_device
from clip_server.model.device_pixels import DevicePixels
from clip_server.model.factory import preprocessor
from clip_server.model.preprocess import Preprocessor
from clip_server.model.registry import lookup
from clip_server.types import ConfigurationError
from clip_server.wire import ERROR_TAG
from helpers import encoded, sample_image

# torch's antialiased bicubic is not Pillow's, nor nvJPEG's chroma upsampling libjpeg's: on an H200,
# 0.073 at most for 640x480 photos, 0.128 for a 97x61 picture (upscaled 3.7x) (normalised units)
PIXEL_TOLERANCE = 0.15


def photo(size: tuple[int, int], mode: str = 'RGB', **options) -> bytes:
    """A smooth picture (JPEG's own kind of content), so that resampling differences stay small."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    pixels = np.stack([255 * x, 255 * y, 127 + 100 * np.sin(6 * x + 3 * y)], axis=-1).astype(np.uint8)
    return encoded(Image.fromarray(pixels).convert(mode), 'JPEG', quality=92, **options)


def truncated_jpeg() -> bytes:
    """A JPEG cut short: its header reads, its data stops (Pillow refuses it; nvJPEG would decode it)."""
    data = photo((120, 90))
    return data[: data.index(b'\xff\xda') + 40]


def broken_jpeg() -> bytes:
    """A JPEG whose header and end marker read (so it goes to the device) with no image data between."""
    data = photo((120, 90))
    return data[: data.index(b'\xff\xda')] + b'\xff\xd9'


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='nvJPEG needs a GPU (benchmarks/gpu_check.sh)')


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=needs_cuda)])
@pytest.mark.parametrize('size', [(640, 480), (480, 640), (224, 224), (97, 61), (1000, 300)])
@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_pixels_stay_within_tolerance_of_the_models_own_transform(size, mode, device):
    transform = preprocessor(lookup('ViT-B-32::openai'))
    on_device = transform.on_device(device)
    data = photo(size, mode)
    expected = transform.pixels(Image.open(io.BytesIO(data)))
    got = on_device([data])[0].cpu().numpy()
    assert got.shape == expected.shape == (3, 224, 224)
    assert np.abs(got - expected).max() < PIXEL_TOLERANCE


@pytest.mark.parametrize('resize_mode', ['squash', 'longest'])
def test_other_transforms_are_not_done_on_the_device(resize_mode):
    transform = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode)
    assert Preprocessor(tokenizer=None, transform=transform).on_device('cpu') is None


def test_only_upright_baseline_rgb_or_grey_jpegs_go_to_the_device():
    assert decodable_on_device(photo((64, 48)))
    assert decodable_on_device(photo((64, 48), 'L'))
    assert not decodable_on_device(photo((64, 48), progressive=True))
    assert not decodable_on_device(truncated_jpeg())
    assert not decodable_on_device(photo((64, 48), 'CMYK'))
    assert not decodable_on_device(encoded(sample_image(0), 'PNG'))
    rotated = Image.open(io.BytesIO(photo((64, 48))))
    exif = rotated.getexif()
    exif[0x0112] = 6  # held sideways: Pillow turns it upright, the device path would not
    assert not decodable_on_device(encoded(rotated, 'JPEG', exif=exif.tobytes()))


@pytest.fixture(scope='module')
def encoders(tiny_weights):
    """The same weights with Pillow's pixels and with the device's (2 per minibatch: several batches;
    batched as under `uses_dynamic_batching`, so that a bad document is tagged, not the request failed)."""
    options = dict(
        name='tiny-vit',
        model_path=str(tiny_weights['tiny-vit']),
        device='cpu',  # the executor's logic; nvJPEG's pixels are checked above
        minibatch_size=2,
        dtype='fp32',
        dynamic_batching={'encode': {'preferred_batch_size': 8, 'timeout': 10}},
    )
    pillow, device = CLIPEncoder(**options), CLIPEncoder(decode_on_device=True, **options)
    yield pillow, device
    pillow.close()
    device.close()


def mixed_images() -> DocumentArray:
    jpeg = photo((320, 200))
    return DocumentArray(
        [
            Document(id='jpeg', blob=jpeg),
            Document(id='png', blob=encoded(sample_image(1), 'PNG')),
            Document(id='uri', uri='data:image/jpeg;base64,' + base64.b64encode(photo((200, 320))).decode()),
            Document(id='tensor', tensor=np.asarray(sample_image(2))),
            Document(id='progressive', blob=photo((300, 300), progressive=True)),
            Document(id='grey', blob=photo((150, 100), 'L')),
        ]
    )


def test_served_embeddings_match_pillows_for_every_kind_of_image(encoders, monkeypatch):
    pillow, device = encoders
    decoded = []
    decode = DevicePixels.__call__
    monkeypatch.setattr(DevicePixels, '__call__', lambda self, jpegs: decoded.extend(jpegs) or decode(self, jpegs))
    by_pillow, by_device = mixed_images(), mixed_images()
    asyncio.run(pillow.encode(by_pillow, {}))
    asyncio.run(device.encode(by_device, {}))
    assert len(decoded) == 3  # the baseline JPEGs (blob, data URI, grey); the rest took Pillow's path
    assert [doc.id for doc in by_device] == [doc.id for doc in by_pillow]
    for expected, got in zip(by_pillow, by_device, strict=True):
        cosine = expected.embedding @ got.embedding / np.linalg.norm(expected.embedding) / np.linalg.norm(got.embedding)
        assert cosine > 0.999, got.id


def test_a_broken_jpeg_fails_alone_and_its_minibatch_is_still_encoded(encoders):
    _, device = encoders
    docs = DocumentArray(
        [
            Document(id='good', blob=photo((320, 200))),
            Document(id='broken', blob=broken_jpeg()),
            Document(id='truncated', blob=truncated_jpeg()),
        ]
    )
    asyncio.run(device.encode(docs, {}))
    assert docs['good'].embedding is not None and ERROR_TAG not in docs['good'].tags
    assert docs['broken'].embedding is None and docs['truncated'].embedding is None
    size = len(broken_jpeg())
    assert docs['broken'].tags[ERROR_TAG] == f'document broken: cannot decode image ({size} bytes) as JPEG'
    assert docs['truncated'].tags[ERROR_TAG].startswith('document truncated: cannot decode image')  # Pillow's say


def test_a_model_with_another_resize_is_refused_with_the_option_named(tiny_weights, monkeypatch):
    monkeypatch.setattr(Preprocessor, 'on_device', lambda self, device: None)
    with pytest.raises(ConfigurationError, match='decode_on_device does the plain image transform only'):
        CLIPEncoder(name='tiny-vit', model_path=str(tiny_weights['tiny-vit']), decode_on_device=True)
