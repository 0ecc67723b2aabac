"""Images/s of a GPU model when JPEGs are decoded on the CPU (as the server does) or on the GPU.

For small models on a GPU, decoding and resizing on the CPU is what limits images/s. This measures,
at one batch size (default 256), each step and the whole path:
- cpu: Pillow decodes, the model's own transform resizes and crops (clip_server's `Preprocessor`,
  pixels equal to open_clip's), in a pool of `--workers` threads, then the model;
- gpu: `torchvision.io.decode_jpeg(device='cuda')` (nvJPEG) decodes the batch, torch resizes
  (bicubic, antialiased), crops and normalises on the GPU, then the same model.
The gpu path's pixels are not open_clip's: their embeddings' lowest cosine to the cpu path's is
printed, with the largest pixel difference, so the speed can be weighed against the drift.

    python benchmarks/gpu_decode.py --batch 256
    python benchmarks/gpu_decode.py --device cpu --batch 16 --seconds 1   # a dry run without a GPU
"""

import argparse
import io
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import decode_jpeg

from clip_server.benchmark import photo_jpeg
from clip_server.model.factory import preprocessor
from clip_server.model.registry import resolve


def rate(step: Callable[[], object], items: int, seconds: float, device: torch.device) -> float:
    """Items/s of `step`, run until `seconds` have passed (after one warm-up), GPU work included."""
    step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        done += items
    return done / (time.perf_counter() - started)


class GpuPixels:
    """The model's transform (shortest side to S, center crop, normalise) done on the device."""

    def __init__(self, size: int, mean, std, device: torch.device, dtype: torch.dtype):
        self.size, self.device, self.dtype = size, device, dtype
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, jpegs: list[torch.Tensor]) -> torch.Tensor:
        decoded = decode_jpeg(jpegs, device=self.device)  # a list of uint8 [3, H, W] on the device
        bicubic = F.InterpolationMode.BICUBIC
        crops = [
            F.center_crop(F.resize(image, [self.size], interpolation=bicubic, antialias=True), [self.size])
            for image in decoded
        ]
        batch = torch.stack(crops).float().div_(255)
        return ((batch - self.mean) / self.std).to(self.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32')
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--workers', type=int, nargs='+', default=[4, os.cpu_count() or 1])
    parser.add_argument('--seconds', type=float, default=3.0)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    spec = resolve(args.model)
    jpegs = [photo_jpeg(seed) for seed in range(args.batch)]  # 640x480, like a typical photo
    model, _, transform = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
    model = model.to(device, dtype).eval()
    normalize = transform.transforms[-1]
    pixels = preprocessor(spec).pixels
    gpu_pixels = GpuPixels(spec.image_size, normalize.mean, normalize.std, device, dtype)
    raw = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]

    def encode(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_image(batch.to(device, dtype))

    def cpu_pixels(pool: ThreadPoolExecutor) -> torch.Tensor:
        return torch.from_numpy(np.stack(list(pool.map(lambda jpeg: pixels(Image.open(io.BytesIO(jpeg))), jpegs))))

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'{spec.name} {str(dtype).removeprefix("torch.")} on {name}, batch {args.batch} of 640x480 JPEGs')
    print(f'{"path":<22} {"decode+resize/s":>15} {"whole path/s":>12}')
    pool_pixels = {}
    for workers in args.workers:
        with ThreadPoolExecutor(workers) as pool:
            prepare = rate(lambda: cpu_pixels(pool), args.batch, args.seconds, device)
            whole = rate(lambda: encode(cpu_pixels(pool)), args.batch, args.seconds, device)
            pool_pixels = cpu_pixels(pool)
        print(f'{f"cpu, {workers} threads":<22} {prepare:>15.1f} {whole:>12.1f}', flush=True)
    prepare = rate(lambda: gpu_pixels(raw), args.batch, args.seconds, device)
    whole = rate(lambda: encode(gpu_pixels(raw)), args.batch, args.seconds, device)
    print(f'{"gpu (nvJPEG + torch)":<22} {prepare:>15.1f} {whole:>12.1f}')
    model_only = rate(lambda: encode(pool_pixels), args.batch, args.seconds, device)
    print(f'{"model alone":<22} {"":>15} {model_only:>12.1f}')
    if device.type == 'cuda':
        print(f'peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB')
    on_cpu, on_gpu = encode(pool_pixels).float(), encode(gpu_pixels(raw)).float()
    cosine = torch.nn.functional.cosine_similarity(on_cpu, on_gpu).min().item()
    pixel_gap = (pool_pixels.to(device).float() - gpu_pixels(raw).float()).abs().max().item()
    print(f'gpu path vs cpu path: min cosine {cosine:.5f}, largest pixel difference {pixel_gap:.3f} (normalised units)')


if __name__ == '__main__':
    main()
