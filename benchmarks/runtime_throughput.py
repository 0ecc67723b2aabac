"""Texts/s and images/s of each runtime for one architecture, in-process (no server, no network).

Random weights: speed does not depend on their values, and none can be downloaded here.

    python benchmarks/runtime_throughput.py --model ViT-B-32 --batch 8 32 --runtime torch onnx
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clip_server.model.factory import EncoderOptions, build_encoder, builder_for, preprocessor
from clip_server.model.registry import resolve
from clip_server.types import Runtime


def per_second(encode, batch: np.ndarray, seconds: float) -> float:
    encode(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32', help='an open_clip architecture or model name')
    parser.add_argument('--batch', type=int, nargs='+', default=[8, 32])
    parser.add_argument('--runtime', nargs='+', default=['torch', 'onnx'], choices=['torch', 'onnx'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seconds', type=float, default=5.0, help='measuring time per cell')
    args = parser.parse_args()

    spec = resolve(args.model)
    model_input = preprocessor(spec)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ['CLIP_SERVER_CACHE'] = scratch  # exports go to the scratch folder, not the user's cache
        weights = Path(scratch) / 'weights.pt'
        torch.save(builder_for(spec).create_model(spec, None).state_dict(), weights)
        print(f'{spec.name}, {args.device}, {torch.get_num_threads()} threads')
        print(f'{"runtime":<8} {"batch":>5} {"texts/s":>9} {"images/s":>9}')
        for runtime in args.runtime:
            options = EncoderOptions(model_path=weights, device=args.device, threads=torch.get_num_threads())
            model = build_encoder(spec, Runtime(runtime), options)
            for size in args.batch:
                tokens = model_input.tokenize([f'a photo of thing number {i}' for i in range(size)])
                pixels = rng.standard_normal((size, 3, spec.image_size, spec.image_size), dtype=np.float32)
                texts = per_second(model.encode_text, tokens, args.seconds)
                images = per_second(model.encode_image, pixels, args.seconds)
                print(f'{runtime:<8} {size:>5} {texts:>9.1f} {images:>9.1f}')


if __name__ == '__main__':
    main()
