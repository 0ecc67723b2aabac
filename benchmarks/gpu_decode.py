"""Images/s of a GPU model when JPEGs are decoded on the CPU (as the server does) or on the GPU.

For small models on a GPU, decoding and resizing on the CPU is what limits images/s. This measures,
at one batch size (default 256), each step and the whole path:
- Pillow: Pillow decodes, the model's own transform resizes and crops (clip_server's
  `Preprocessor`, pixels equal to open_clip's), in a pool of `--workers` threads, then the model;
- on the device: `DevicePixels` (`decode_on_device`): `torchvision.io.decode_jpeg` on the device
  (nvJPEG on a GPU) decodes the batch, torch resizes (bicubic, antialiased), crops, normalises;
- the executor itself (`CLIPEncoder.encode`), with its worker pool and with `decode_on_device`.
The device's pixels are not open_clip's: their embeddings' lowest cosine to Pillow's is printed,
with the largest pixel difference, so the speed can be weighed against the drift.

    python benchmarks/gpu_decode.py --batch 256
    python benchmarks/gpu_decode.py --device cpu --batch 16 --seconds 1   # a dry run without a GPU
"""

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import torch
from PIL import Image
from runtime_throughput import min_cosine  # beside this script

from clip_server.benchmark.inputs import photo_jpeg
from clip_server.model.factory import preprocessor
from clip_server.model.registry import lookup


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


def executor_rate(encoder, jpegs: list[bytes], seconds: float) -> tuple[float, np.ndarray]:
    """Images/s of the served path's executor (`CLIPEncoder.encode` on documents with JPEG blobs)."""
    from docarray import Document, DocumentArray

    def encode() -> DocumentArray:
        docs = DocumentArray(Document(blob=jpeg) for jpeg in jpegs)
        encoder.encode(docs, {})
        return docs

    return rate(encode, len(jpegs), seconds, torch.device('cpu')), encode().embeddings


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
    spec = lookup(args.model)
    jpegs = [photo_jpeg(seed) for seed in range(args.batch)]  # 640x480, like a typical photo
    model = open_clip.create_model(spec.arch, pretrained=None).to(device, dtype).eval()
    transform = preprocessor(spec)
    on_device = transform.on_device(args.device)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_image(batch.to(device, dtype))

    def cpu_pixels(pool: ThreadPoolExecutor) -> torch.Tensor:
        decoded = pool.map(lambda jpeg: transform.pixels(Image.open(io.BytesIO(jpeg))), jpegs)
        return torch.from_numpy(np.stack(list(decoded)))

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'{spec.name} {str(dtype).removeprefix("torch.")} on {name}, batch {args.batch} of 640x480 JPEGs')
    print(f'{"path":<34} {"decode+resize/s":>15} {"whole path/s":>12}')
    for workers in args.workers:
        with ThreadPoolExecutor(workers) as pool:
            prepare = rate(lambda: cpu_pixels(pool), args.batch, args.seconds, device)
            whole = rate(lambda: encode(cpu_pixels(pool)), args.batch, args.seconds, device)
            pool_pixels = cpu_pixels(pool)
        print(f'{f"Pillow, {workers} threads":<34} {prepare:>15.1f} {whole:>12.1f}', flush=True)
    prepare = rate(lambda: on_device(jpegs), args.batch, args.seconds, device)
    whole = rate(lambda: encode(on_device(jpegs)), args.batch, args.seconds, device)
    print(f'{"on the device (DevicePixels)":<34} {prepare:>15.1f} {whole:>12.1f}')
    model_only = rate(lambda: encode(pool_pixels), args.batch, args.seconds, device)
    print(f'{"model alone":<34} {"":>15} {model_only:>12.1f}', flush=True)
    on_cpu, on_gpu = encode(pool_pixels).float(), encode(on_device(jpegs)).float()
    cosine = torch.nn.functional.cosine_similarity(on_cpu, on_gpu).min().item()
    pixel_gap = (pool_pixels.to(device) - on_device(jpegs)).abs().max().item()
    print(f'device vs Pillow: min cosine {cosine:.5f}, largest pixel difference {pixel_gap:.3f} (normalised units)')
    served(spec, model, jpegs, args)
    if device.type == 'cuda':
        print(f'peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB')


def served(spec, model: torch.nn.Module, jpegs: list[bytes], args: argparse.Namespace) -> None:
    """The executor itself, with its worker pool (4 threads) and with `decode_on_device`."""
    from clip_server.executors.clip_torch import CLIPEncoder

    with tempfile.TemporaryDirectory() as scratch:
        weights = f'{scratch}/weights.pt'
        torch.save(model.float().state_dict(), weights)
        options = dict(name=spec.arch, model_path=weights, device=args.device, minibatch_size=args.batch)
        rates = {}
        paths = {'executor, worker pool (4 threads)': {}, 'executor, decode_on_device': {'decode_on_device': True}}
        for label, extra in paths.items():
            encoder = CLIPEncoder(**options, **extra)
            rates[label] = executor_rate(encoder, jpegs, args.seconds)
            encoder.close()
            print(f'{label:<34} {"":>15} {rates[label][0]:>12.1f}', flush=True)
    (_, pool), (_, device) = rates.values()
    print(f'executor embeddings, decode_on_device vs worker pool: min cosine {min_cosine(pool, device):.5f}')


if __name__ == '__main__':
    main()
