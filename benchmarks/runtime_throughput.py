"""Texts/s and images/s of each runtime for one architecture, in-process (no server, no network).

Random weights: speed does not depend on their values, and none can be downloaded here.
Each runtime's embeddings of the first rows are also compared with PyTorch fp32 on CPU (the
lowest cosine similarity is printed): a fast number from a wrong model means nothing.

    python benchmarks/runtime_throughput.py --model ViT-B-32 --batch 8 32 --runtime torch onnx
    python benchmarks/runtime_throughput.py --device cuda --dtype fp16 --batch 32 256 --runtime torch onnx tensorrt
"""

import argparse
import dataclasses
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from clip_server.model.encoder import Encoder
from clip_server.model.factory import EncoderOptions, build_encoder, builder_for, preprocessor
from clip_server.model.registry import ModelSpec, lookup
from clip_server.types import Runtime

CHECKED_ROWS = 8  # rows compared with the fp32 reference


def per_second(encode: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float) -> float:
    encode(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(batch)  # returns numpy, so on a GPU the work is finished
        done += len(batch)
    return done / (time.perf_counter() - started)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def encoders(
    spec: ModelSpec, runtime: Runtime, sizes: list[int], options: EncoderOptions
) -> Iterator[tuple[int, Encoder, float]]:
    """(batch size, encoder, seconds its build took: exports and engine builds included).

    A TensorRT engine takes at most `max_batch` rows and is tuned for it, as a server builds
    it for its `minibatch_size`: one per size. The other runtimes take any batch: one for all.
    """
    model = None
    for size in sizes:
        started = time.perf_counter()
        if model is None or runtime is Runtime.TENSORRT:
            model = build_encoder(spec, runtime, dataclasses.replace(options, max_batch=size))
        yield size, model, time.perf_counter() - started


def measured(
    runtime: Runtime,
    size: int,
    model: Encoder,
    inputs: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    seconds: float,
) -> tuple[str, str]:
    """A line of the table in two parts: the rates at this batch size, then the agreement with fp32
    and where the model really ran (ONNX Runtime may fall back to CPU with only a warning)."""
    tokens, pixels = inputs[0][:size], inputs[1][:size]
    texts = per_second(model.encode_text, tokens, seconds)
    images = per_second(model.encode_image, pixels, seconds)
    rows = min(CHECKED_ROWS, size)
    text_cos = min_cosine(model.encode_text(tokens[:rows]), reference[0][:rows])
    image_cos = min_cosine(model.encode_image(pixels[:rows]), reference[1][:rows])
    return (
        f'{runtime:<8} {model.dtype:<5} {size:>5} {texts:>9.1f} {images:>9.1f}',
        f'texts {text_cos:.4f}, images {image_cos:.4f}; {model.description}',
    )


def gpu_memory_in_use(device: str) -> int:
    """Bytes in use on the GPU, by every allocator (torch's, ONNX Runtime's, TensorRT's): CUDA's own count."""
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return total - free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32', help='an open_clip architecture or model name')
    parser.add_argument('--batch', type=int, nargs='+', default=[8, 32])
    parser.add_argument('--runtime', nargs='+', default=['torch', 'onnx'], choices=[r.value for r in Runtime])
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N (TensorRT needs cuda)')
    parser.add_argument('--dtype', help="one dtype for every runtime (default: each runtime's own on the device)")
    parser.add_argument('--seconds', type=float, default=5.0, help='measuring time per cell')
    args = parser.parse_args()

    spec = lookup(args.model)
    largest = max(args.batch)
    tokens = preprocessor(spec).tokenize([f'a photo of thing number {i}' for i in range(largest)])
    pixels = np.random.default_rng(0).standard_normal((largest, 3, spec.image_size, spec.image_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ['CLIP_SERVER_CACHE'] = scratch  # exports go to the scratch folder, not the user's cache
        weights = Path(scratch) / 'weights.pt'
        torch.save(builder_for(spec).create_model(spec, None).state_dict(), weights)
        cpu_fp32 = build_encoder(spec, Runtime.TORCH, EncoderOptions(model_path=weights, device='cpu', dtype='fp32'))
        reference = cpu_fp32.encode_text(tokens[:CHECKED_ROWS]), cpu_fp32.encode_image(pixels[:CHECKED_ROWS])
        gpu = f', {torch.cuda.get_device_name(torch.device(args.device))}' if args.device.startswith('cuda') else ''
        print(f'{spec.name}, {args.device}{gpu}, {torch.get_num_threads()} CPU threads')
        header = f'{"runtime":<8} {"dtype":<5} {"batch":>5} {"texts/s":>9} {"images/s":>9} {"build s":>7}'
        print(f'{header}  min cos vs fp32; runs on')
        on_gpu = args.device.startswith('cuda')
        for runtime in map(Runtime, args.runtime):
            options = EncoderOptions(
                model_path=weights, device=args.device, dtype=args.dtype, threads=torch.get_num_threads()
            )
            gc.collect()  # the last runtime's engines go before this one's memory is counted
            if on_gpu:
                torch.cuda.empty_cache()
            before = gpu_memory_in_use(args.device) if on_gpu else 0
            peak = before
            for size, model, build_seconds in encoders(spec, runtime, args.batch, options):
                rates, agreement = measured(runtime, size, model, (tokens, pixels), reference, args.seconds)
                print(f'{rates} {build_seconds:>7.1f}  {agreement}', flush=True)
                peak = max(peak, gpu_memory_in_use(args.device) if on_gpu else 0)
            if on_gpu:
                used = (peak - before) / 2**20
                print(f'{runtime}: peak GPU memory in use {used:.0f} MiB above the start (read after each cell)')


if __name__ == '__main__':
    main()
