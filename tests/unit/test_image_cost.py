"""An image's preprocessing cost is bounded before the work starts.

The model's resize scales the short side to its input size S before the center crop, so an
image R times longer than wide costs S x R*S pixels: a 178-byte 100000x1 PNG would take 5 GB.
`max_image_aspect_ratio` refuses such images (files and pixel arrays) from their size alone.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip_server.executors.content import DEFAULT_LIMITS, ContentLimits, image_from_array, image_from_bytes
from clip_server.types import ConfigurationError, InvalidInputError
from helpers import REPO, encoded

# PNG signature, IHDR chunk and the IDAT chunk's header: the size is known, no pixel is there
PNG_HEADERS = 8 + 25 + 8


@pytest.mark.parametrize(
    'mode, size, ratio',
    [('L', (100000, 1), '100,000.0'), ('RGB', (1, 10000), '10,000.0'), ('RGB', (3, 5000), '1,666.7')],
)
def test_elongated_files_are_refused_from_their_header(mode, size, ratio):
    data = encoded(Image.new(mode, size, 128))
    assert len(data) < 300  # the attack: a few hundred bytes
    message = (
        rf'too elongated: {size[0]}x{size[1]}, its long side {ratio} times its short side, '
        rf'over max_image_aspect_ratio \(100\)'
    )
    with pytest.raises(InvalidInputError, match=message):
        image_from_bytes(data)
    with pytest.raises(InvalidInputError, match=message):  # refused where no pixel could be decoded yet
        image_from_bytes(data[:PNG_HEADERS])
    with pytest.raises(InvalidInputError, match='cannot decode image'):
        image_from_bytes(data[:PNG_HEADERS], limits=ContentLimits(max_image_aspect_ratio=10**6))


@pytest.mark.parametrize(
    'shape, described', [((1, 100000, 3), '100000x1'), ((100000, 1, 3), '1x100000'), ((2, 5000), '5000x2')]
)
def test_elongated_tensors_are_refused_before_becoming_images(shape, described):
    with pytest.raises(InvalidInputError, match=rf'too elongated: {described}, .* over max_image_aspect_ratio'):
        image_from_array(np.zeros(shape, np.uint8))


def test_the_aspect_ratio_limit_is_inclusive_and_configurable():
    assert DEFAULT_LIMITS.max_image_aspect_ratio == 100
    assert image_from_array(np.zeros((100, 1, 3), np.uint8)).size == (1, 100)
    assert image_from_array(np.zeros((1, 100, 3), np.uint8)).size == (100, 1)
    with pytest.raises(InvalidInputError, match=r'1x101, its long side 101.0 times'):
        image_from_array(np.zeros((101, 1, 3), np.uint8))
    limits = ContentLimits(max_image_aspect_ratio=4)
    assert image_from_array(np.zeros((2, 8), np.uint8), limits).size == (8, 2)
    with pytest.raises(InvalidInputError, match=r'9x2, its long side 4.5 times its short side, .*\(4\)'):
        image_from_array(np.zeros((2, 9), np.uint8), limits)
    with pytest.raises(ConfigurationError, match='max_image_aspect_ratio must be a positive integer, got 0'):
        ContentLimits(max_image_aspect_ratio=0)


# Run in a fresh process: its peak resident memory (ru_maxrss) counts PIL's buffers, which
# tracemalloc does not see. The address space is capped a GiB above the warmed-up process, so
# an unbounded resize fails here with MemoryError instead of taking the machine's memory.
MEMORY_PROBE = r"""
import io, json, resource
import numpy as np, open_clip
from PIL import Image
from clip_server.executors.content import image_from_array, image_from_bytes
from clip_server.model.preprocess import PIXEL_TOLERANCE, Preprocessor
from clip_server.types import InvalidInputError

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

def png(mode, size):
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, 'PNG')
    return buffer.getvalue()

def refusal(make):
    try:
        preprocessor.pixels(make())
    except InvalidInputError as error:
        return str(error)
    return None

transform = open_clip.image_transform(224, is_train=False)
preprocessor = Preprocessor(None, transform)  # pixels only: no tokenizer needed
preprocessor.pixels(Image.new('RGB', (97, 61)))  # warm-up: one-time allocations are not the resize's
vm_kib = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmSize:'))
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + 2**30, hard))
base = peak_mib()
refusals = [
    refusal(lambda: image_from_bytes(png('L', (100000, 1)))),
    refusal(lambda: image_from_bytes(png('RGB', (1, 100000)))),
    refusal(lambda: image_from_array(np.zeros((1, 100000, 3), np.uint8))),
    refusal(lambda: image_from_array(np.zeros((100000, 1, 3), np.uint8))),
]
refused_growth = peak_mib() - base
rng = np.random.default_rng(0)
at_limit = {shape: rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(100, 1, 3), (1, 100, 3), (300, 3, 3)]}
served = {shape: preprocessor.pixels(image_from_array(array)) for shape, array in at_limit.items()}
served_growth = peak_mib() - base
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
gaps = [np.abs(served[shape] - transform(Image.fromarray(at_limit[shape])).numpy()) for shape in served]
equal = [bool(gap.max() <= PIXEL_TOLERANCE[0] and gap.mean() <= PIXEL_TOLERANCE[1]) for gap in gaps]
growth = {'refused_growth': refused_growth, 'served_growth': served_growth}
print(json.dumps({'refusals': refusals, 'equal': equal, **growth}))
"""


@pytest.mark.skipif(sys.platform != 'linux', reason='reads /proc and ru_maxrss in KiB')
def test_elongated_images_cost_no_memory_and_images_at_the_limit_little():
    """Peak memory of a fresh process: the attack's strips are refused at no cost (open_clip's
    resize took 5.5 GB for the 100000x1 PNG); strips at the limit (ratio 100) are preprocessed
    within tens of MB, into open_clip's own pixels (within the tolerance: torch resizes RGB)."""
    run = subprocess.run([sys.executable, '-c', MEMORY_PROBE], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(message and 'over max_image_aspect_ratio (100)' in message for message in report['refusals']), report
    assert report['refused_growth'] < 16, report
    assert report['served_growth'] < 64, report  # 224 x 22,400 RGB pixels: 20 MB
    assert report['equal'] == [True, True, True]
