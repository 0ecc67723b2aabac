"""OpenVINO runtime: the ONNX folder (`onnx_folder`'s contract) compiled by OpenVINO's CPU plugin.

fp32 and bf16 compile the folder's graphs as they are, with that inference precision (bf16 runs
the matrix products in bf16 where the CPU has native bf16 instructions). int8 compiles NNCF's
post-training quantization of them: the matrix products take int8 weights and int8 activations,
whose ranges NNCF measured on generated captions and photos (the benchmark's inputs, not the
parity probes); the rest runs in bf16 where the CPU has it, else fp32. The quantized graphs are
cached as OpenVINO IR (`cache.openvino_int8`), made once per folder, OpenVINO and NNCF version.

Measured against the other CPU runtimes in docs/benchmark.md (benchmarks/openvino_check.py).
Kept free of Jina and docarray; `openvino` and `nncf` come with the `clip-server[openvino]` extra.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from clip_server.model import cache
from clip_server.model.cache_build import build_once, digest, folder_name
from clip_server.model.preprocess import Preprocessor
from clip_server.model.runtimes.onnx_folder import IMAGE_FILE, IMAGE_INPUT, TEXT_FILE, TEXT_INPUTS, read_text_metadata
from clip_server.model.tokens import rows_rule, text_inputs
from clip_server.types import BF16_CPU_FLAGS, CPU, DType, ModelFolderError, cpu_flags, require

ov = require('openvino', 'openvino')

logger = logging.getLogger(__name__)

# Bump when the quantization below changes, so cached int8 graphs are made again.
INT8_FORMAT = 1
TEXT_IR, IMAGE_IR = 'textual.xml', 'visual.xml'  # the quantized graphs, as OpenVINO IR (+ .bin)
CALIBRATION_BATCHES, CALIBRATION_BATCH = 8, 8  # 64 captions and 64 photos
# OpenVINO's names of the inference precisions
_PRECISIONS = {DType.FP32: 'f32', DType.BF16: 'bf16'}
MATRIX_LAYERS = ('FullyConnected', 'MatMul', 'Convolution')  # where `layer_precisions` looks


def native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def compile_properties(dtype: DType, threads: int | None) -> dict[str, Any]:
    """The CPU plugin's settings: the precision of everything not quantized, one request at a time."""
    precision = _PRECISIONS.get(dtype) or ('bf16' if native_bf16() else 'f32')  # int8: its other layers
    properties: dict[str, Any] = {'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY'}
    if threads:
        properties['INFERENCE_NUM_THREADS'] = threads
    return properties


class OpenVINOEncoder:
    """A CLIP model's two graphs compiled for the CPU, behind the `Encoder` interface."""

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        dtype: DType = DType.FP32,
        threads: int | None = None,
        image_size: int | None = None,
        pad_token_id: int | None = None,
        quantized: str | os.PathLike | None = None,
    ):
        """`folder`: an ONNX folder (fp32 or fp16 graphs). `quantized`: a folder of int8 graphs made
        from it (`int8_graphs`), served instead of its graphs; its text graph's metadata stays the
        ONNX folder's. `image_size` and `pad_token_id`: as `ONNXEncoder` takes them."""
        folder = _folder(folder)
        core = ov.Core()
        graphs = (Path(quantized) / TEXT_IR, Path(quantized) / IMAGE_IR) if quantized else _graphs(folder)
        text, image = (_read(core, path) for path in graphs)
        self._compile(core, text, image, compile_properties(dtype, threads), folder, dtype, pad_token_id)
        spatial = self._image.inputs[0].get_partial_shape()[2:]
        if image_size and spatial.is_static and list(spatial.to_shape()) != [image_size] * 2:
            raise ModelFolderError(
                f'{folder / IMAGE_FILE} takes {spatial} images, but the model name gives {image_size}x{image_size} '
                'preprocessing: set `name` to the model the folder was made from'
            )

    @classmethod
    def from_models(
        cls,
        folder: str | os.PathLike,
        text: Any,
        image: Any,
        properties: dict[str, Any],
        *,
        dtype: DType,
        pad_token_id: int | None = None,
    ) -> OpenVINOEncoder:
        """Two graphs given as they are (`ov.Model`s, or paths OpenVINO reads) compiled with the CPU
        plugin's `properties` as given, not `compile_properties`': to measure settings and graphs the
        runtime does not pick (benchmarks/openvino_check.py). `folder`: the ONNX folder whose text
        graph's metadata (text rows, scoring) applies; `dtype`: what the encoder reports."""
        folder = _folder(folder)
        encoder = cls.__new__(cls)
        encoder._compile(ov.Core(), text, image, properties, folder, dtype, pad_token_id)
        return encoder

    def _compile(
        self,
        core: Any,
        text: Any,
        image: Any,
        properties: dict[str, Any],
        folder: Path,
        dtype: DType,
        pad_token_id: int | None,
    ) -> None:
        self._text, self._image = (core.compile_model(model, 'CPU', properties) for model in (text, image))
        self._requests = self._text.create_infer_request(), self._image.create_infer_request()
        self._lock = threading.Lock()  # an infer request runs one call at a time
        names = {name for port in self._text.inputs for name in port.get_names()}
        self._text_inputs = [name for name in TEXT_INPUTS if name in names]
        metadata = read_text_metadata(folder)
        self._pad_token_id = pad_token_id if pad_token_id is not None else metadata.pad_token_id
        self._cut_at_end_of_text = metadata.cut_at_end_of_text
        self.scoring = metadata.scoring
        self.dim = self._text.outputs[0].get_partial_shape()[1].get_length()
        self.device, self.dtype = CPU, dtype
        precision = self._image.get_property('INFERENCE_PRECISION_HINT').get_type_name()
        rows = rows_rule(self._pad_token_id, self._cut_at_end_of_text)
        self.description = f'OpenVINO {ov.__version__.partition("-")[0]} CPU ({dtype}, rest in {precision}, {rows})'

    def layer_precisions(self) -> str:
        """What the plugin really runs each tower's matrix layers in (its runtime graph), e.g.
        'texts: FullyConnected bf16 x24; images: Convolution bf16 x1, FullyConnected bf16 x25'."""
        return f'texts: {_matrix_precisions(self._text)}; images: {_matrix_precisions(self._image)}'

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        rows = dict(zip(TEXT_INPUTS, text_inputs(tokens, self._pad_token_id, self._cut_at_end_of_text), strict=True))
        feed = {name: np.ascontiguousarray(rows[name], dtype=np.int32) for name in self._text_inputs}
        return self._infer(0, feed)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._infer(1, {IMAGE_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})

    def _infer(self, tower: int, feed: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            result = self._requests[tower].infer(feed)  # inputs and outputs are copied
        return np.asarray(result[0], dtype=np.float32)


def _matrix_precisions(compiled: Any) -> str:
    counts = Counter(
        (info['layerType'].astype(str), info['runtimePrecision'].astype(str))
        for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
        if info['layerType'].astype(str) in MATRIX_LAYERS
    )
    return ', '.join(f'{layer} {precision} x{count}' for (layer, precision), count in sorted(counts.items()))


def _folder(folder: str | os.PathLike) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelFolderError(f'ONNX model folder {str(path)!r} does not exist or is not a folder')
    return path


def _graphs(folder: Path) -> tuple[Path, Path]:
    for path in (folder / TEXT_FILE, folder / IMAGE_FILE):
        if not path.is_file():
            raise ModelFolderError(
                f'{folder} has no {path.name}: an ONNX model folder needs both {TEXT_FILE} and {IMAGE_FILE}'
            )
    return folder / TEXT_FILE, folder / IMAGE_FILE


def _read(core: Any, path: Path) -> Any:
    try:
        return core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises its own unexported exception classes
        raise ModelFolderError(f'{path} is not a model OpenVINO can read: {exc}') from exc


# ----------------------------------------------------------------------------- int8


def int8_graphs(model_name: str, folder: str | os.PathLike, model_input: Preprocessor) -> Path:
    """The cached int8 graphs of the ONNX folder `folder`, quantized first if no process has yet."""
    folder = Path(folder).expanduser()
    identity = {
        'graphs': [_file_identity(path) for path in sorted(folder.iterdir()) if path.is_file()],
        'openvino': ov.__version__,
        'nncf': importlib.metadata.version('nncf'),
        'format': INT8_FORMAT,
    }
    target = cache.openvino_int8() / folder_name(model_name) / f'int8-{digest(identity)}'
    build = partial(quantize, folder, model_input)
    return build_once(target, build, f'the OpenVINO int8 graphs of {model_name}')


def quantize(folder: Path, model_input: Preprocessor, target: Path) -> None:
    """NNCF's post-training int8 quantization of both graphs of `folder`, saved as IR in `target`."""
    for model, name in zip(quantized_models(folder, model_input), (TEXT_IR, IMAGE_IR), strict=True):
        ov.save_model(model, str(target / name), compress_to_fp16=False)


def quantized_models(folder: Path, model_input: Preprocessor, batches: int = CALIBRATION_BATCHES) -> tuple[Any, Any]:
    """Both graphs of the ONNX folder `folder` quantized by NNCF (post-training, int8 activations and
    weights), calibrated on `batches` batches of `calibration_inputs`, as `ov.Model`s in memory.

    SmoothQuant (NNCF's default for transformers) is off: with it ViT-B-32's texts fell to 0.993
    min cosine against fp32, without it 0.999, at the same speed (docs/benchmark.md).
    """
    nncf = require('nncf', 'openvino')
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    core = ov.Core()
    cut = read_text_metadata(folder).cut_at_end_of_text
    texts, images = calibration_inputs(model_input, cut, batches)
    quantized = []
    for source, items in ((folder / TEXT_FILE, texts), (folder / IMAGE_FILE, images)):
        model = _read(core, source)
        names = {n for port in model.inputs for n in port.get_names()}
        data = nncf.Dataset([{key: value for key, value in item.items() if key in names} for item in items])
        logger.info('Quantizing %s to int8 with NNCF (%d calibration batches)...', source.name, len(items))
        quantized.append(
            nncf.quantize(
                model,
                data,
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(items),  # NNCF counts the dataset's items: batches here
                advanced_parameters=advanced,
            )
        )
    return quantized[0], quantized[1]


def calibration_inputs(
    model_input: Preprocessor, cut_at_end_of_text: bool, batches: int = CALIBRATION_BATCHES
) -> tuple[list[dict], list[dict]]:
    """Batches of generated photo captions (token rows as the text graph takes them) and photos."""
    from PIL import Image

    from clip_server.benchmark.inputs import captions, photo_jpeg

    texts, images = [], []
    for batch in range(batches):
        words = captions(CALIBRATION_BATCH, seed=1000 + batch)
        rows = text_inputs(model_input.tokenize(words), model_input.pad_token_id, cut_at_end_of_text)
        texts.append(dict(zip(TEXT_INPUTS, (np.asarray(row, dtype=np.int32) for row in rows), strict=True)))
        seeds = range(1000 + batch * CALIBRATION_BATCH, 1000 + (batch + 1) * CALIBRATION_BATCH)
        pixels = [model_input.pixels(Image.open(io.BytesIO(photo_jpeg(seed)))) for seed in seeds]
        images.append({IMAGE_INPUT: np.stack(pixels)})
    return texts, images


def _file_identity(path: Path) -> tuple[str, int, int]:
    stat = path.resolve().stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns
