"""What an image costs the CPU before the model: decode, resize, crop and normalise, path by path.

Each path turns a JPEG file into the model's float32 [3, S, S] input. All of them are timed in
one run, interleaved (round after round, each path on each photo size in turn) so that the noise
of a shared machine hits them alike, on one thread each (the server runs one image per worker).
Their pixels are compared with open_clip's own transform on a full decode (largest and mean
absolute difference after normalisation) and their embeddings with its embeddings (lowest cosine;
the model's random weights, fp32). Then the whole image path at a minibatch of 32: the model alone,
preprocessing then the model, and preprocessing the next minibatch in a thread pool while the
model runs the current one (as the executor does).

    python benchmarks/image_decode.py
    python benchmarks/image_decode.py --rounds 2 --photos 4 --seconds 2   # a quick look

simplejpeg ships libjpeg-turbo in its wheel; PyTurboJPEG needs the system's libturbojpeg
(Debian: libturbojpeg0, 2.1 there, which only PyTurboJPEG < 2 loads): a path whose module or
library is missing is left out, saying why.
"""

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from runtime_throughput import min_cosine  # beside this script

from clip_server.benchmark.inputs import photo_jpeg
from clip_server.executors.content import image_from_bytes
from clip_server.model.factory import EncoderOptions, build_encoder, builder_for, preprocessor
from clip_server.model.registry import lookup
from clip_server.types import Runtime

SIZES = ((640, 480), (1920, 1080), (4032, 3024))  # the benchmark's photos, then two phone cameras'
Pixels = Callable[[bytes], np.ndarray]


def resized_by_torch(array: np.ndarray, size: int, mean, std, in_float: bool = False) -> np.ndarray:
    """HxWxC uint8 to [3, size, size]: short side to `size` (bicubic, antialiased), center crop, normalise."""
    height, width = array.shape[:2]
    short, long = sorted((height, width))
    target = (size, int(size * long / short)) if height == short else (int(size * long / short), size)
    image = torch.from_numpy(array).permute(2, 0, 1)[None]
    image = image.float() if in_float else image
    resized = F.interpolate(image, size=target, mode='bicubic', antialias=True)[0]
    top, left = round((resized.shape[1] - size) / 2), round((resized.shape[2] - size) / 2)
    crop = resized[:, top : top + size, left : left + size]
    crop = crop.clamp(0, 255).round() if in_float else crop  # as a uint8 image would hold it
    return (crop.numpy().astype(np.float32) / np.float32(255) - mean) / std


def paths(size: int) -> tuple[dict[str, Pixels], list[str]]:
    """{name: JPEG file -> pixels} and the paths left out, with why."""
    model_input = preprocessor(lookup('ViT-B-32'))
    mean, std = model_input._normalization  # type: ignore[misc]
    reference = open_clip.image_transform(size, is_train=False)
    twice = 2 * size

    def by_pillow(image: Image.Image) -> np.ndarray:
        """The transform's PIL steps then ToTensor and Normalize in numpy: the server's path before torch resized."""
        for step in model_input._pil_steps:
            image = step(image)
        return (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255) - mean) / std

    def pil(data: bytes, min_side: int | None = None) -> Image.Image:
        return image_from_bytes(data, min_side=min_side)

    def reduced(data: bytes) -> Image.Image:
        image = pil(data)
        factor = min(image.size) // twice
        return image.reduce(factor) if factor > 1 else image

    def by_torch(array: np.ndarray, in_float: bool = False) -> np.ndarray:
        return resized_by_torch(array, size, mean, std, in_float)

    found: dict[str, Pixels] = {
        'open_clip transform, full decode': lambda data: reference(Image.open(io.BytesIO(data))).numpy(),
        'before: Pillow draft >=2S + Pillow resize': lambda data: by_pillow(pil(data, twice)),
        'Pillow full decode + Pillow resize': lambda data: by_pillow(pil(data)),
        'Pillow full decode + reduce + Pillow resize': lambda data: by_pillow(reduced(data)),
        'Pillow draft >=S + Pillow resize': lambda data: by_pillow(pil(data, size)),
        'adopted: Preprocessor.pixels (draft >=2S)': lambda data: model_input.pixels(pil(data, twice)),
        'Pillow draft >=2S + torch resize uint8': lambda data: by_torch(np.asarray(pil(data, twice))),
        'Pillow draft >=2S + torch resize float': lambda data: by_torch(np.asarray(pil(data, twice)), True),
    }
    missing = []
    try:
        import simplejpeg

        def simple(data: bytes, min_side: int) -> np.ndarray:
            return simplejpeg.decode_jpeg(data, min_height=min_side, min_width=min_side)

        found['simplejpeg >=2S + Pillow resize'] = lambda data: by_pillow(Image.fromarray(simple(data, twice)))
        found['simplejpeg >=2S + torch resize uint8'] = lambda data: by_torch(simple(data, twice))
        found['simplejpeg >=S + torch resize uint8'] = lambda data: by_torch(simple(data, size))
    except ImportError as exc:
        missing.append(f'simplejpeg: {exc}')
    try:
        import turbojpeg

        decoder = turbojpeg.TurboJPEG()
        factors = sorted(decoder.scaling_factors, key=lambda f: f[0] / f[1])

        def turbo(data: bytes) -> np.ndarray:
            width, height = decoder.decode_header(data)[:2]
            short = min(width, height)
            factor = next(f for f in factors if short * f[0] // f[1] >= min(twice, short))
            return decoder.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=factor)

        found['PyTurboJPEG >=2S + torch resize uint8'] = lambda data: by_torch(turbo(data))
    except (ImportError, RuntimeError, OSError) as exc:
        missing.append(f'PyTurboJPEG: {str(exc).splitlines()[0]}')
    return found, missing


def per_image_ms(pixels: Pixels, jpegs: Sequence[bytes]) -> float:
    started = time.perf_counter()
    for jpeg in jpegs:
        pixels(jpeg)
    return (time.perf_counter() - started) / len(jpegs) * 1e3


def cost_table(found: dict[str, Pixels], photos: dict[tuple[int, int], list[bytes]], rounds: int) -> None:
    """Median ms per image of each path on each size, the rounds interleaved."""
    times: dict[tuple[str, tuple[int, int]], list[float]] = {}
    for pixels in found.values():  # warm-up: first calls load codecs and kernels
        pixels(photos[SIZES[0]][0])
    for _ in range(rounds):
        for name, pixels in found.items():
            for shape, jpegs in photos.items():
                times.setdefault((name, shape), []).append(per_image_ms(pixels, jpegs))
    columns = [f'{w}x{h}' for w, h in photos]
    print(f'\nms per image, one thread, median of {rounds} interleaved rounds')
    print(f'{"path":<45}' + ''.join(f'{c:>11}' for c in columns))
    for name in found:
        print(f'{name:<45}' + ''.join(f'{statistics.median(times[name, shape]):>11.2f}' for shape in photos))


def agreement_table(found: dict[str, Pixels], photos: dict[tuple[int, int], list[bytes]], model) -> None:
    """Each path's pixels and embeddings against open_clip's transform on a full decode."""
    print('\nagainst open_clip transform on a full decode: pixels max / mean abs difference, embeddings min cosine')
    print(f'{"path":<45}' + ''.join(f'{f"{w}x{h}":>29}' for w, h in photos))
    open_clips = found['open_clip transform, full decode']
    reference = {shape: np.stack([open_clips(jpeg) for jpeg in jpegs]) for shape, jpegs in photos.items()}
    with torch.inference_mode():
        embedded = {shape: model.encode_image(torch.from_numpy(p)).numpy() for shape, p in reference.items()}
        for name, pixels in found.items():
            cells = []
            for shape, jpegs in photos.items():
                ours = np.stack([pixels(jpeg) for jpeg in jpegs])
                gap = np.abs(ours - reference[shape])
                cosine = min_cosine(model.encode_image(torch.from_numpy(ours)).numpy(), embedded[shape])
                cells.append(f'{gap.max():.4f} / {gap.mean():.5f} / {cosine:.6f}')
            print(f'{name:<45}' + ''.join(f'{cell:>29}' for cell in cells))


def images_per_second(step: Callable[[], int], seconds: float) -> float:
    step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += step()
    return done / (time.perf_counter() - started)


def overlap_table(
    found: dict[str, Pixels], names: list[str], jpegs: list[bytes], seconds: float, batch: int, rounds: int
) -> None:
    """Images/s of preprocessing + ViT-B-32 bf16 (the server's torch encoder): the model alone, then
    each path serially and with a pool preparing the next minibatch; cells interleaved, median of rounds."""
    spec = lookup('ViT-B-32')
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / 'weights.pt'
        torch.save(builder_for(spec).create_model(spec, None).state_dict(), weights)
        encoder = build_encoder(spec, Runtime.TORCH, EncoderOptions(model_path=weights, device='cpu', dtype='bf16'))
    batches = [jpegs[start : start + batch] for start in range(0, len(jpegs) - batch + 1, batch)]
    ready = np.stack([found[names[0]](jpeg) for jpeg in batches[0]])
    pools = {workers: ThreadPoolExecutor(workers) for workers in (1, 2)}

    def serial(pixels: Pixels) -> int:
        return sum(len(encoder.encode_image(np.stack([pixels(jpeg) for jpeg in jpegs_]))) for jpegs_ in batches)

    def prefetched(pixels: Pixels, pool: ThreadPoolExecutor) -> int:
        total, pending = 0, [pool.submit(pixels, jpeg) for jpeg in batches[0]]
        for following in [*batches[1:], []]:
            current = np.stack([future.result() for future in pending])
            pending = [pool.submit(pixels, jpeg) for jpeg in following]  # while the model runs
            total += len(encoder.encode_image(current))
        return total

    cells: dict[str, Callable[[], int]] = {'model alone (pixels ready)': lambda: len(encoder.encode_image(ready))}
    for name in names:
        cells[f'{name}, serial'] = lambda pixels=found[name]: serial(pixels)
        for workers, pool in pools.items():
            cells[f'{name}, pool of {workers}'] = lambda pixels=found[name], pool=pool: prefetched(pixels, pool)
    rates: dict[str, list[float]] = {label: [] for label in cells}
    for _ in range(rounds):
        for label, step in cells.items():
            rates[label].append(images_per_second(step, seconds))
    for pool in pools.values():
        pool.shutdown()
    print(
        f'\nimages/s at minibatch {batch}, {len(batches[0][0]) // 1000} KB photos, ViT-B-32 {encoder.dtype}, '
        f'{torch.get_num_threads()} torch threads; median of {rounds} interleaved rounds of {seconds:g} s'
    )
    for label, measured in rates.items():
        print(f'{label:<65} {statistics.median(measured):>7.1f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--photos', type=int, default=8, help='photos of each size (the 640x480 set has 4x as many)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--seconds', type=float, default=4.0, help='measuring time of each overlap cell')
    args = parser.parse_args()

    torch.manual_seed(0)
    size = lookup('ViT-B-32').image_size
    counts = {SIZES[0]: 4 * args.photos, SIZES[1]: args.photos, SIZES[2]: max(2, args.photos // 2)}
    photos = {shape: [photo_jpeg(seed, *shape) for seed in range(count)] for shape, count in counts.items()}
    kb = ', '.join(f'{w}x{h} {np.mean([len(j) for j in photos[w, h]]) / 1000:.0f} KB' for w, h in photos)
    print(f'{os.cpu_count()} CPUs; torch {torch.__version__}; photos (mean file size): {kb}')
    found, missing = paths(size)
    for reason in missing:
        print(f'left out: {reason}')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one image per thread, as in the server's worker pool
    cost_table(found, photos, args.rounds)
    torch.set_num_threads(threads)
    model = open_clip.create_model('ViT-B-32', pretrained=None).eval()
    agreement_table(found, photos, model)
    candidates = [name for name in found if name.startswith(('before', 'adopted', 'simplejpeg >=2S + torch'))]
    overlap_table(found, candidates, photos[SIZES[0]] * 4, args.seconds, 32, max(1, args.rounds // 2))


if __name__ == '__main__':
    main()
