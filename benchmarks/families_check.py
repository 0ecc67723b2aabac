"""Full-size open_clip architectures with random weights: does each build, serve on PyTorch, export
to ONNX, and does the ONNX graph give what PyTorch gives? (The tests use tiny stand-ins; this runs
the real shapes by hand. Nothing is downloaded: models whose tokenizer lives on the Hub, SigLIP's,
need it cached.)

    python benchmarks/families_check.py EVA02-B-16::merged2b_s8b_b131k coca_ViT-B-32::laion2b_s13b_b90k
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from clip_server.model.factory import builder_for, export_onnx, preprocessor, resolve
from clip_server.model.runtimes.onnx_runtime import ONNXEncoder
from clip_server.model.runtimes.torch_runtime import TorchEncoder
from clip_server.types import CPU, DType


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def check(name: str, folder: Path) -> str:
    started = time.monotonic()
    spec = resolve(name)
    weights = folder / 'random.pt'
    torch.manual_seed(0)
    torch.save(builder_for(spec).create_model(spec, None).state_dict(), weights)
    tokens = preprocessor(spec).tokenize(['a photo of a cat', 'two dogs playing in the snow'])
    pixels = np.random.default_rng(1).standard_normal((2, 3, spec.image_size, spec.image_size), dtype=np.float32)
    served = TorchEncoder(builder_for(spec).towers(spec, weights), dim=spec.dim, device=CPU, dtype=DType.FP32)
    onnx = ONNXEncoder(export_onnx(spec, weights, folder / 'onnx'), image_size=spec.image_size)
    text = min_cosine(served.encode_text(tokens), onnx.encode_text(tokens))
    image = min_cosine(served.encode_image(pixels), onnx.encode_image(pixels))
    context = open_clip.get_model_config(spec.arch)['text_cfg'].get('context_length', 77)
    return (
        f'{name}: {spec.dim}-d, {spec.image_size}px, context {tokens.shape[1]} (config {context}); '
        f'ONNX vs PyTorch min cosine: texts {text:.5f}, images {image:.5f}; '
        f'/rank {"sigmoid" if served.scoring.is_sigmoid else "softmax"}; {time.monotonic() - started:.0f} s'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='+', help='open_clip model names, arch::tag')
    for name in parser.parse_args().names:
        with tempfile.TemporaryDirectory() as folder:
            try:
                print(check(name, Path(folder)), flush=True)
            except Exception as error:  # one failing family does not hide the others' results
                print(f'{name}: FAILED {type(error).__name__}: {error}', flush=True)


if __name__ == '__main__':
    main()
