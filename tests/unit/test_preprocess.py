import base64
import io

import numpy as np
import open_clip
import pytest
from PIL import Image, ImageOps

from clip_server.benchmark.inputs import photo_jpeg
from clip_server.executors.content import ContentLimits, bytes_from_data_uri, image_from_array, image_from_bytes
from clip_server.model.factory import preprocessor as model_preprocessor
from clip_server.model.families import openclip
from clip_server.model.preprocess import PIXEL_TOLERANCE, TORCH_MODES, Preprocessor
from clip_server.model.registry import lookup
from clip_server.types import ConfigurationError, InvalidInputError
from helpers import encoded, sample_image

EOT = 49407


@pytest.fixture(scope='module')
def preprocessor():
    return model_preprocessor(lookup('ViT-B-32::openai'))


@pytest.fixture(scope='module')
def open_clip_transform():
    return open_clip.image_transform(224, is_train=False)


LARGE = (10**4, 10**4)  # an image size that torch resizes


def assert_open_clips_pixels(
    pixels: np.ndarray, expected: np.ndarray, mode: str = 'RGB', err_msg: str = '', size: tuple[int, int] = LARGE
) -> None:
    """RGB and greyscale images larger than the input (torch resizes them): within the tolerance;
    others: bit for bit (pass `mode` for exactness, `size` for a size that torch may resize)."""
    assert pixels.shape == expected.shape and pixels.dtype == np.float32
    if mode not in TORCH_MODES or min(size) <= pixels.shape[-1]:
        np.testing.assert_array_equal(pixels, expected, err_msg=err_msg)
        return
    gap = np.abs(pixels - expected)
    assert gap.max() <= PIXEL_TOLERANCE[0] and gap.mean() <= PIXEL_TOLERANCE[1], (err_msg, gap.max(), gap.mean())


@pytest.mark.parametrize('mode', ['L', 'P', 'RGBA', 'CMYK', 'RGB', 'I;16'])
def test_image_modes_match_open_clip(mode, preprocessor, open_clip_transform):
    image = sample_image(seed=3, size=(120, 80)).convert(mode)
    pixels = preprocessor.pixels(image)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    assert_open_clips_pixels(pixels, open_clip_transform(image).numpy(), mode, size=image.size)  # bit for bit


# strips at the aspect-ratio limit (100), near-square, odd, and smaller than the input (upscaled)
SERVED_SIZES = [(1, 100), (100, 1), (3, 300), (300, 3), (2, 199), (224, 225), (225, 224), (223, 224)]
SERVED_SIZES += [(97, 61), (61, 97), (7, 5), (1, 1), (1001, 999)]


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('resize_mode', ['shortest', 'squash', 'longest'])
@pytest.mark.parametrize('size', SERVED_SIZES)
def test_every_servable_shape_gets_open_clips_pixels(size, resize_mode, interpolation):
    """Whatever the shape the limits let through, the image mode and the pretrained config's
    resizing, the served pixels are open_clip's own: bit for bit where Pillow resizes, within the
    tolerance where torch does (RGB and greyscale with the plain transform: short side, then crop)."""
    transform = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode, interpolation=interpolation)
    pixels_of = Preprocessor(None, transform).pixels  # no tokenizer: pixels only
    for mode in ('RGB', 'L', 'RGBA', 'P'):
        image = image_from_bytes(encoded(sample_image(seed=sum(size), size=size, mode=mode)))  # as the server reads it
        assert image.size == size and image.mode == mode
        by_torch = resize_mode == 'shortest'
        assert_open_clips_pixels(pixels_of(image), transform(image).numpy(), mode if by_torch else 'P', mode, size)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'WEBP', 'GIF', 'BMP', 'TIFF'])
def test_decodes_common_formats(fmt):
    image = image_from_bytes(encoded(sample_image(size=(40, 30)), fmt))
    assert image.size == (40, 30)


def test_exif_orientation_is_applied(preprocessor):
    upright = sample_image(seed=1, size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    decoded = image_from_bytes(encoded(stored, 'PNG', exif=exif))
    assert decoded.size == (60, 40)
    np.testing.assert_array_equal(np.asarray(decoded.convert('RGB')), np.asarray(upright))


def test_one_pixel_image(preprocessor):
    image = image_from_bytes(encoded(Image.new('RGB', (1, 1), (255, 0, 0))))
    pixels = preprocessor.pixels(image)
    assert pixels.shape == (3, 224, 224)
    assert np.isfinite(pixels).all()


def test_each_model_uses_its_own_image_size():
    pixels = model_preprocessor(lookup('RN50x4::openai')).pixels(sample_image())
    assert pixels.shape == (3, 288, 288)


def test_tokenizer_truncates_long_text_keeping_end_of_text(preprocessor):
    long_text = ' '.join(['word'] * 500)
    tokens = preprocessor.tokenize([long_text, 'short text'])
    assert tokens.shape == (2, 77) and tokens.dtype == np.int64
    assert tokens[0, -1] == EOT
    assert (tokens[0, 1:-1] == tokens[0, 1]).all()
    assert tokens[1, 3] == EOT and (tokens[1, 4:] == 0).all()


def test_empty_text_is_start_and_end_only(preprocessor):
    tokens = preprocessor.tokenize([''])[0]
    assert tokens[1] == EOT and (tokens[2:] == 0).all()


def test_data_uri_base64_and_percent_encoded():
    assert bytes_from_data_uri('data:image/png;base64,' + base64.b64encode(b'\x89PNG').decode()) == b'\x89PNG'
    assert bytes_from_data_uri('data:text/plain,a%20b') == b'a b'
    with pytest.raises(InvalidInputError, match='malformed data URI'):
        bytes_from_data_uri('data:image/png;base64')


@pytest.mark.parametrize(
    'data, message',
    [
        (b'', 'empty'),
        (b'not an image at all', 'cannot decode image'),
        (encoded(sample_image(), 'PNG')[:60], 'cannot decode'),
    ],
)
def test_bad_image_bytes_raise_clear_errors(data, message):
    with pytest.raises(InvalidInputError, match=message):
        image_from_bytes(data)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encoded(Image.new('RGB', (100, 100)))  # 10,000 pixels in a few hundred bytes
    with pytest.raises(InvalidInputError, match=r'too large: 100x100 = 10,000 pixels, over max_image_pixels \(1,000\)'):
        image_from_bytes(bomb, limits=ContentLimits(max_image_pixels=1000))
    with pytest.raises(InvalidInputError, match=r'100x100 = 10,000 pixels, over max_image_pixels \(1,000\)'):
        image_from_array(np.zeros((100, 100, 3), np.uint8), ContentLimits(max_image_pixels=1000))


def test_limits_name_the_limit_and_the_value():
    limits = ContentLimits(max_image_bytes=100, max_text_chars=5)
    with pytest.raises(InvalidInputError, match=r'image content is 101 bytes, over max_image_bytes \(100\)'):
        image_from_bytes(b'x' * 101, limits=limits)
    with pytest.raises(InvalidInputError, match=r'text has 6 characters, over max_text_chars \(5\)'):
        limits.check_text('abcdef')
    assert limits.check_text('abcde') == 'abcde'
    with pytest.raises(ConfigurationError, match='max_text_chars must be a positive integer, got 0'):
        ContentLimits(max_text_chars=0)


def test_arrays():
    assert image_from_array(np.zeros((5, 4, 3), np.uint8)).size == (4, 5)
    assert image_from_array(np.zeros((5, 4), np.uint8)).mode == 'L'
    with pytest.raises(InvalidInputError, match='empty'):
        image_from_array(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InvalidInputError, match='dtype float64'):
        image_from_array(np.zeros((5, 4, 3)))
    with pytest.raises(InvalidInputError, match='shape'):
        image_from_array(np.zeros((5, 4, 7), np.uint8))


def test_formats_outside_the_list_are_refused():
    eps = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n'
    with pytest.raises(InvalidInputError, match='not one of the accepted formats'):
        image_from_bytes(eps)


def test_size_limit_holds_from_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    small, large = encoded(sample_image(size=(50, 50))), encoded(sample_image(size=(100, 100)))
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(_decode_outcome, [small, large] * 20))
    assert outcomes == ['ok', 'too large'] * 20


def _decode_outcome(data: bytes) -> str:
    try:
        image_from_bytes(data, limits=ContentLimits(max_image_pixels=5000))
        return 'ok'
    except InvalidInputError as error:
        return 'too large' if 'too large' in str(error) else str(error)


@pytest.mark.parametrize('name', ['RN50x4::openai', 'ViT-L-14-336::openai', 'ViT-B-16-plus-240::laion400m_e31'])
def test_numpy_normalisation_equals_the_models_own_transform(name):
    """ToTensor and Normalize run in numpy (off torch's threads) with identical results: an RGBA
    image is resized by Pillow, so its pixels are open_clip's bit for bit."""
    spec = lookup(name)
    for mode in ('RGBA', 'RGB'):
        image = sample_image(seed=4, size=(500, 333), mode=mode)
        expected = open_clip.image_transform(spec.image_size, is_train=False)(image).numpy()
        assert_open_clips_pixels(model_preprocessor(spec).pixels(image), expected, mode, name)


def test_large_jpegs_decode_at_a_reduced_scale_keeping_twice_the_input_size(preprocessor):
    photo = sample_image(seed=6, size=(1000, 800)).resize((2000, 1600))  # smooth enough to compress like a photo
    jpeg = encoded(photo, 'JPEG', quality=90)
    assert image_from_bytes(jpeg, min_side=448).size == (1000, 800)  # 1/2; 1/4 would be under 448
    assert image_from_bytes(jpeg, min_side=100).size == (250, 200)  # 1/8
    assert image_from_bytes(jpeg).size == (2000, 1600)
    assert image_from_bytes(encoded(photo, 'PNG'), min_side=100).size == (2000, 1600)  # JPEG only
    small = encoded(sample_image(seed=7, size=(640, 480)), 'JPEG')
    assert image_from_bytes(small, min_side=448).size == (640, 480)  # under twice the size: decoded whole
    full = preprocessor.pixels(image_from_bytes(jpeg))
    drafted = preprocessor.pixels(image_from_bytes(jpeg, min_side=448))
    assert 0 < np.abs(full - drafted).max() < 0.1


@pytest.mark.parametrize('size', [(640, 480), (480, 640), (1920, 1080), (1000, 1000)])
def test_jpeg_photos_within_tolerance_of_open_clip_on_the_whole_file(size, preprocessor, open_clip_transform):
    """Draft decoding and torch's resize together, against open_clip's transform on a full decode."""
    jpeg = photo_jpeg(8, *size)  # the benchmark's photos: the tolerance is measured on them
    served = preprocessor.pixels(image_from_bytes(jpeg, min_side=448))
    expected = open_clip_transform(Image.open(io.BytesIO(jpeg))).numpy()
    assert_open_clips_pixels(served, expected)
    if min(size) < 896:  # decoded whole: only the resize differs, by one level of 255 at most
        assert np.abs(served - expected).max() < 1.01 / 255 / 0.26


# the stored layout that a viewer turns upright with each EXIF orientation
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_of_a_jpeg_is_honoured_before_the_model(orientation, preprocessor, open_clip_transform):
    upright = sample_image(seed=9, size=(80, 60)).resize((640, 480))  # decoded whole: the resize alone differs
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(STORED[orientation]) if orientation in STORED else upright
    jpeg = encoded(stored, 'JPEG', quality=95, exif=exif)
    decoded = image_from_bytes(jpeg, min_side=448)
    assert decoded.size == upright.size  # turned upright
    expected = open_clip_transform(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg)))).numpy()
    assert_open_clips_pixels(preprocessor.pixels(decoded), expected)
    unturned = open_clip_transform(Image.open(io.BytesIO(jpeg))).numpy()
    assert orientation == 1 or np.abs(preprocessor.pixels(decoded) - unturned).mean() > 0.1


@pytest.mark.parametrize('mode, fmt', [('L', 'JPEG'), ('CMYK', 'JPEG'), ('RGBA', 'PNG'), ('P', 'PNG'), ('L', 'PNG')])
def test_other_modes_and_formats_keep_their_path(mode, fmt, preprocessor, open_clip_transform):
    """Greyscale goes through torch's resize (as RGB); CMYK, alpha and palette images through Pillow's, exactly."""
    data = encoded(sample_image(seed=10, size=(70, 50)).resize((700, 500)).convert(mode), fmt)
    image = image_from_bytes(data, min_side=448)
    assert image.mode == mode
    assert_open_clips_pixels(preprocessor.pixels(image), open_clip_transform(image).numpy(), mode)


def test_a_jpeg_cut_short_is_refused_with_a_clear_error():
    jpeg = photo_jpeg(8)
    with pytest.raises(InvalidInputError, match=rf'cannot decode image \({len(jpeg) // 2} bytes\)'):
        image_from_bytes(jpeg[: len(jpeg) // 2], min_side=448)


def _random_words(seed: int, count: int, longest: int) -> str:
    rng = np.random.default_rng(seed)
    letters = np.array(list('abcdefghijklmnopqrstuvwxyzé'))
    return ' '.join(''.join(rng.choice(letters, rng.integers(1, longest + 1))) for _ in range(count))


@pytest.mark.parametrize(
    'text',
    [
        'a photo of a cat',
        'x ' * 50_000,
        ' ' * 90_000 + 'hello there',
        _random_words(0, 5000, 12),
        _random_words(1, 3000, 64),
        'Hello, world! ' * 5000,
        '日本語のテキスト、これはテストです。' * 300,
        '我们今天去公园散步看到很多美丽的花和树还有小孩在玩耍天气非常好阳光明媚' * 10,  # 350 characters, one run
        "it's &amp; don't &lt;b&gt; " * 2000,
        '\n\t '.join(['tab', 'separated', 'words'] * 2000),
        '1234567890' * 5000,
        'a' * 60 + ' ' + '.' * 60 + ' b' * 5000,
    ],
    ids=lambda text: f'{len(text)}-chars',
)
def test_only_the_part_of_a_text_its_tokens_come_from_is_tokenized(text):
    """open_clip's own tokens, from a part that is short whatever the text's length."""
    tokenize = open_clip.get_tokenizer('ViT-B-32')
    part = openclip.tokenized_part(text)
    assert np.array_equal(tokenize([part]).numpy(), tokenize([text]).numpy())
    assert len(part.split()) <= openclip.TEXT_RUNS and sum(map(len, part.split())) <= 2 * openclip.TEXT_CHARS


def test_a_run_without_spaces_is_cut_before_the_quadratic_bpe_sees_it(preprocessor):
    """open_clip's BPE takes seconds for thousands of letters in one word: the served model reads
    such a word up to RUN_CHARS (its first tokens may then differ from open_clip's, as documented)."""
    word = ''.join(np.random.default_rng(2).choice(list('abcdefghijklmnopqrstuvwxyz'), 100_000))
    assert openclip.tokenized_part(word) == word[: openclip.RUN_CHARS]
    assert openclip.tokenized_part('!' * 10**5 + ' cat') == '!' * openclip.RUN_CHARS + ' cat'
    served = preprocessor.tokenize([word, 'a cat'])  # the family's tokenizer, as served
    assert served.shape == (2, 77) and np.array_equal(served[1], open_clip.tokenize(['a cat'])[0].numpy())
