"""OpenVINO beside this server's CPU runtimes: texts/s, images/s and parity, in one interleaved run.

Issue 23 asks whether OpenVINO should be a fourth runtime: it ships if it is at least 20% faster,
for texts or images, than the best runtime this server already has on the CPU, at comparable
parity. This measures, on the model's forward pass at one batch size (the benchmark's captions
tokenized and cut as the runtimes cut them; its generated photos preprocessed by the model's own
transform), with random weights (speed does not depend on them, and none can be downloaded here):

- PyTorch bf16: the project's torch encoder (`dtype: auto` on a CPU with native bf16);
- ONNX Runtime fp32 and int8: the project's own ONNX export and its dynamic int8 quantization;
- OpenVINO reading the same fp32 export, compiled for the CPU in f32 and with the bf16 inference
  precision hint; OpenVINO int8 after NNCF's post-training quantization of that export
  (activations and weights int8, calibrated on other captions and photos: the OpenVINO runtime's
  own `quantized_models`), with f32 and bf16 for the layers left unquantized; OpenVINO with int8
  weights only (NNCF's weight compression) and activations quantized per call by the plugin, the
  way ONNX Runtime's dynamic int8 works; and OpenVINO reading the project's own int8 export
  (onnxruntime's dynamic quantization) as it is.

Every OpenVINO cell is the runtime's own encoder (`OpenVINOEncoder.from_models`: the graphs and
the CPU plugin's settings given here, the rest as served); each prints what its matrix layers
really run in (`layer_precisions`).

Cells run round-robin, texts then images, for `--rounds` rounds, so that a busy neighbour on a
shared machine slows every runtime alike. A neighbour only ever slows a cell down, so each figure
is the best of its rounds (the median follows it); the ratios compare best rounds. Parity is
`clip_server.model.parity.compare` against PyTorch fp32 (16 probe texts and images).

    python benchmarks/openvino_check.py --model ViT-B-32 --batch 32 --seconds 3 --rounds 3
"""

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch
from PIL import Image
from runtime_throughput import per_second  # beside this script

from clip_server.benchmark.inputs import captions, photo_jpeg
from clip_server.model import parity
from clip_server.model.encoder import Encoder
from clip_server.model.factory import EncoderOptions, build_encoder, builder_for, onnx_model_dir, preprocessor
from clip_server.model.preprocess import Preprocessor
from clip_server.model.registry import ModelSpec, lookup
from clip_server.model.runtimes.onnx_folder import IMAGE_FILE, TEXT_FILE
from clip_server.model.runtimes.openvino_runtime import OpenVINOEncoder, compile_properties, quantized_models
from clip_server.model.tokens import text_inputs
from clip_server.types import BF16_CPU_FLAGS, DType, Runtime, cpu_flags

EXISTING = 'existing'  # the runtimes this server has, against whose best OpenVINO is weighed
DYNAMIC_INT8 = {'DYNAMIC_QUANTIZATION_GROUP_SIZE': 32}  # activations quantized per call, in groups of 32


@dataclass
class Contestant:
    label: str
    group: str  # EXISTING or 'openvino'
    encoder: Encoder
    build_seconds: float
    texts: list[float] = field(default_factory=list)
    images: list[float] = field(default_factory=list)
    agreement: parity.Parity | None = None


def timed_build(build: Callable[[], Encoder]) -> tuple[Encoder, float]:
    started = time.perf_counter()
    return build(), time.perf_counter() - started


def weights_int8(folder: Path) -> tuple[object, object]:
    """Both graphs with int8 weights only (NNCF's data-free weight compression): compiled with
    `DYNAMIC_QUANTIZATION_GROUP_SIZE`, the plugin quantizes activations per call, as ONNX
    Runtime's dynamic int8 does."""
    core = ov.Core()
    text, image = (core.read_model(str(folder / name)) for name in (TEXT_FILE, IMAGE_FILE))
    mode = nncf.CompressWeightsMode.INT8_SYM
    return nncf.compress_weights(text, mode=mode), nncf.compress_weights(image, mode=mode)


def contestants(spec: ModelSpec, weights: Path, model_input: Preprocessor, threads: int, calibration_batches: int):
    """(label, group, build) of each runtime measured, in the order they are measured."""

    def project(runtime: Runtime, dtype: DType) -> Callable[[], Encoder]:
        return lambda: build_encoder(spec, runtime, EncoderOptions(model_path=weights, dtype=dtype, threads=threads))

    fp32_folder = onnx_model_dir(spec, weights, dtype=DType.FP32)
    int8_folder = onnx_model_dir(spec, weights, dtype=DType.INT8)

    def openvino(folder: Path, precision: str, dtype: DType, models=None, **extra: object) -> Callable[[], Encoder]:
        # The runtime's own settings (one request at a time on every core, as an executor calls it),
        # with the inference precision of the layers left unquantized chosen here.
        properties = {**compile_properties(DType.FP32, threads), 'INFERENCE_PRECISION_HINT': precision, **extra}

        def build() -> Encoder:
            text, image = models() if models else (folder / TEXT_FILE, folder / IMAGE_FILE)
            return OpenVINOEncoder.from_models(folder, text, image, properties, dtype=dtype)

        return build

    quantized: list = []

    def nncf_models() -> tuple[object, object]:
        if not quantized:  # once for both precisions of the unquantized layers: the runtime's int8
            quantized.extend(quantized_models(fp32_folder, model_input, calibration_batches))
        return quantized[0], quantized[1]

    return [
        ('PyTorch bf16', EXISTING, project(Runtime.TORCH, DType.BF16)),
        ('ONNX Runtime fp32', EXISTING, project(Runtime.ONNX, DType.FP32)),
        ('ONNX Runtime int8', EXISTING, project(Runtime.ONNX, DType.INT8)),
        ('OpenVINO f32', 'openvino', openvino(fp32_folder, 'f32', DType.FP32)),
        ('OpenVINO bf16', 'openvino', openvino(fp32_folder, 'bf16', DType.BF16)),
        ('OpenVINO int8 (NNCF), rest f32', 'openvino', openvino(fp32_folder, 'f32', DType.INT8, nncf_models)),
        ('OpenVINO int8 (NNCF), rest bf16', 'openvino', openvino(fp32_folder, 'bf16', DType.INT8, nncf_models)),
        (
            'OpenVINO int8 weights, dynamic activations, rest bf16',
            'openvino',
            openvino(fp32_folder, 'bf16', DType.INT8, partial(weights_int8, fp32_folder), **DYNAMIC_INT8),
        ),
        ("OpenVINO on ORT's int8 graph", 'openvino', openvino(int8_folder, 'f32', DType.INT8)),
    ]


def spread(rates: list[float]) -> str:
    return f'{max(rates):.1f} ({statistics.median(rates):.1f})'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32', help='an open_clip architecture')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--seconds', type=float, default=3.0, help='measuring time of each cell in each round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--calibration-batches', type=int, default=8, help="NNCF's statistics: batches of 8 items")
    args = parser.parse_args()

    import onnxruntime

    spec, threads = lookup(args.model), torch.get_num_threads()
    model_input = preprocessor(spec)
    texts = captions(args.batch)
    tokens = model_input.tokenize(texts)
    jpegs = [photo_jpeg(seed) for seed in range(args.batch)]
    pixels = np.stack([model_input.pixels(Image.open(io.BytesIO(jpeg))) for jpeg in jpegs])
    flags = [flag for flag in (*BF16_CPU_FLAGS, 'avx512_vnni', 'amx_int8') if flag in cpu_flags()]
    print(f'{spec.name}, batch {args.batch}, {threads} threads, {args.rounds} rounds of {args.seconds:g} s per cell')
    print(f'CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {", ".join(flags)}')
    print(
        f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {ov.__version__}, '
        f'nncf {nncf.__version__}'
    )
    with tempfile.TemporaryDirectory() as scratch:
        os.environ['CLIP_SERVER_CACHE'] = scratch  # exports go to the scratch folder, not the user's cache
        weights = Path(scratch) / 'weights.pt'
        torch.save(builder_for(spec).create_model(spec, None).state_dict(), weights)
        reference = build_encoder(spec, Runtime.TORCH, EncoderOptions(model_path=weights, dtype=DType.FP32))
        width = text_inputs(tokens, None, True)[0].shape[1]
        print(f'texts: the benchmark captions, cut after the last end-of-text token: {width} of 77 tokens')
        field_list = []
        for label, group, build in contestants(spec, weights, model_input, threads, args.calibration_batches):
            encoder, seconds = timed_build(build)
            contestant = Contestant(label, group, encoder, seconds)
            contestant.agreement = parity.compare(reference, encoder, model_input)
            precisions = f'; {encoder.layer_precisions()}' if isinstance(encoder, OpenVINOEncoder) else ''
            print(f'built {label} in {seconds:.1f} s: {encoder.description}{precisions}', flush=True)
            field_list.append(contestant)
        del reference
        for round_ in range(args.rounds):
            for contestant in field_list:
                contestant.texts.append(per_second(contestant.encoder.encode_text, tokens, args.seconds))
            for contestant in field_list:
                contestant.images.append(per_second(contestant.encoder.encode_image, pixels, args.seconds))
            print(f'round {round_ + 1} done', flush=True)
    report(field_list)


def report(field_list: list[Contestant]) -> None:
    existing = [c for c in field_list if c.group == EXISTING]
    best_text = max(existing, key=lambda c: max(c.texts))
    best_image = max(existing, key=lambda c: max(c.images))
    top_text, top_image = max(best_text.texts), max(best_image.images)
    print()
    print('texts/s and images/s: the best round (the median of the rounds); vs best: to the best existing runtime')
    print(f'best existing: texts {best_text.label} ({top_text:.1f}/s), images {best_image.label} ({top_image:.1f}/s)')
    print()
    print('| runtime | texts/s | images/s | texts vs best | images vs best | min cos texts | min cos images | top-1 |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for c in field_list:
        agreement = c.agreement
        assert agreement is not None
        print(
            f'| {c.label} | {spread(c.texts)} | {spread(c.images)} | '
            f'{max(c.texts) / top_text:.2f} | {max(c.images) / top_image:.2f} | '
            f'{agreement.text_min_cosine:.5f} | {agreement.image_min_cosine:.5f} | '
            f'{agreement.identity_top1:.0%} / {agreement.cross_modal_top1:.0%} |'
        )
    openvino = [c for c in field_list if c.group != EXISTING]
    ov_text = max(openvino, key=lambda c: max(c.texts))
    ov_image = max(openvino, key=lambda c: max(c.images))
    text_ratio = max(ov_text.texts) / top_text
    image_ratio = max(ov_image.images) / top_image
    print()
    print(f"OpenVINO's best: texts {ov_text.label} at {text_ratio:.2f}x, images {ov_image.label} at {image_ratio:.2f}x")
    wins = [what for what, ratio in (('texts', text_ratio), ('images', image_ratio)) if ratio >= 1.2]
    print(f'20% or more faster: {", ".join(wins) if wins else "neither"} (before weighing parity)')
    print('top-1: identity / cross-modal agreement with PyTorch fp32 on the probe set')


if __name__ == '__main__':
    main()
