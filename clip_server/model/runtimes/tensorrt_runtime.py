"""TensorRT runtime: engines built from the ONNX export, cached per model, TensorRT version and GPU.

Uses the TensorRT 10 named-tensor API (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`) with device memory held in torch CUDA tensors, so no pycuda is needed.
`tensorrt` is imported only inside functions: importing this module never needs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from clip_server.model import cache
from clip_server.model.cache_build import build_once, digest, folder_name
from clip_server.model.families.base import CONTEXT_LENGTH
from clip_server.model.runtimes.onnx_folder import (
    IMAGE_FILE,
    IMAGE_INPUT,
    TEXT_FILE,
    TEXT_INPUTS,
    TextGraphMetadata,
    read_graph_properties,
)
from clip_server.model.tokens import rows_rule, text_inputs
from clip_server.types import CLIP_SCORING, Device, DType, RuntimeUnavailableError, Scoring

logger = logging.getLogger(__name__)

# The builder may use up to this share of the GPU's free memory as scratch space, capped at 4 GiB.
WORKSPACE_SHARE = 0.5
WORKSPACE_CAP = 4 << 30
# Each ONNX graph and the engine compiled from it.
ENGINE_FILES = {TEXT_FILE: 'textual.engine', IMAGE_FILE: 'visual.engine'}


def missing_pieces() -> list[str]:
    """What this machine lacks for TensorRT, worded for the operator; empty when nothing."""
    missing = []
    if importlib.util.find_spec('tensorrt') is None:
        missing.append("the `tensorrt` package (pip install 'clip-server[tensorrt]', or use the TensorRT Docker image)")
    if not torch.cuda.is_available():
        missing.append('an NVIDIA GPU with a working CUDA driver (torch.cuda.is_available() is False)')
    return missing


def require_tensorrt() -> None:
    """Refuse to start, naming every missing piece, rather than fail on the first request (the
    executor adds which runtimes serve instead)."""
    missing = missing_pieces()
    if missing:
        raise RuntimeUnavailableError(f'The TensorRT runtime needs {" and ".join(missing)}.')


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on: a change in any of these must not reuse a cached engine."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    fp16: bool
    max_batch: int

    def digest(self) -> str:
        return digest(asdict(self))


def onnx_sha256(folder: Path) -> str:
    """The export's content (graphs and any external-data files) identifies it."""
    content = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        content.update(path.name.encode())
        with open(path, 'rb') as f:
            content.update(hashlib.file_digest(f, 'sha256').digest())
    return content.hexdigest()


def engine_key(onnx_folder: Path, gpu: torch.device, *, fp16: bool, max_batch: int) -> EngineKey:
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(gpu)
    return EngineKey(
        onnx_sha256=onnx_sha256(onnx_folder),
        tensorrt_version=trt.__version__,
        gpu_name=torch.cuda.get_device_name(gpu),
        compute_capability=f'{major}.{minor}',
        fp16=fp16,
        max_batch=max_batch,
    )


def profile_shapes(
    shape: tuple[int, ...], max_batch: int, context_length: int = CONTEXT_LENGTH
) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) for one input whose first axis is the batch.

    The executor never sends more than `minibatch_size` rows, so that is both the size
    TensorRT tunes for and the largest it accepts. A dynamic sequence axis (texts cut after
    their batch's last end-of-text token) runs from 1 token to the model's context, tuned for
    the full context.
    """
    if len(shape) == 2 and shape[1] < 0:
        return (1, 1), (max_batch, context_length), (max_batch, context_length)
    rest = tuple(shape[1:])
    if any(dim < 0 for dim in rest):
        raise ValueError(f'only the batch axis (and a text sequence axis) may be dynamic, got input shape {shape}')
    return (1, *rest), (max_batch, *rest), (max_batch, *rest)


def workspace_bytes(gpu: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(gpu)
    return int(min(WORKSPACE_CAP, free * WORKSPACE_SHARE))


def build_engine(onnx_path: Path, engine_path: Path, gpu: torch.device, *, fp16: bool, max_batch: int) -> None:
    """Compile one ONNX graph into a serialized engine file for `gpu` (minutes for the large models).

    TensorRT builds on the current CUDA device: the caller selects `gpu` for the call (`torch.cuda.device`)."""
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT cannot parse {onnx_path}: {errors}')

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(gpu))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        _keep_sensitive_layers_in_fp32(network, trt)
    profile = builder.create_optimization_profile()
    context_length = TextGraphMetadata.parse(read_graph_properties(onnx_path)).context_length or CONTEXT_LENGTH
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        profile.set_shape(tensor.name, *profile_shapes(tuple(tensor.shape), max_batch, context_length))
    config.add_optimization_profile(profile)

    started = time.monotonic()
    logger.info(
        'Building TensorRT engine from %s (fp16=%s, batch<=%d); this can take minutes', onnx_path, fp16, max_batch
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above')
    engine_path.write_bytes(bytes(serialized))
    logger.info('Built %s in %.0f s', engine_path.name, time.monotonic() - started)


def _keep_sensitive_layers_in_fp32(network, trt) -> None:
    """LayerNorm and reductions overflow or lose accuracy in fp16; everything else may use it."""
    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in sensitive:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


class _Engine:
    """One deserialized engine and its execution context, on one GPU.

    TensorRT loads and runs on the current CUDA device; each call selects this engine's GPU for
    itself (`torch.cuda.device`), so engines on different GPUs share a process without a global
    `set_device`."""

    def __init__(self, path: Path, device: torch.device):
        import tensorrt as trt

        self._trt = trt
        self._device = device
        with torch.cuda.device(device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise RuntimeError(f'cannot load the TensorRT engine {path}; delete it to have it rebuilt')
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {name: self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self.inputs = [name for name in names if is_input[name]]
        (self._output,) = [name for name in names if not is_input[name]]
        self._stream = torch.cuda.Stream(device)

    def _numpy_dtype(self, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run on the inputs the engine declares (a graph may drop an unused one) -> float32.

        Copies, execution and the copy back all go on this engine's stream, in order.
        """
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            held = []  # device buffers must outlive the asynchronous execution
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name], dtype=self._numpy_dtype(name))
                held.append(torch.from_numpy(array).to(self._device))
                self._context.set_input_shape(name, tuple(array.shape))
                self._context.set_tensor_address(name, held[-1].data_ptr())
            shape = tuple(self._context.get_tensor_shape(self._output))
            output = torch.empty(shape, dtype=_TORCH_DTYPES[self._numpy_dtype(self._output)], device=self._device)
            self._context.set_tensor_address(self._output, output.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError('TensorRT execution failed; see the TensorRT log')
            result = output.float().cpu()  # waits for the stream
        return result.numpy()


class TensorRTEncoder:
    """A textual and a visual engine behind the `Encoder` interface."""

    def __init__(
        self,
        engine_folder: Path,
        *,
        dim: int,
        device: Device,
        dtype: DType,
        cut_at_end_of_text: bool = False,
        scoring: Scoring = CLIP_SCORING,
    ):
        """`cut_at_end_of_text`: the ONNX export says its text tower takes rows cut after their
        end-of-text token (`onnx_folder.TextGraphMetadata`); other engines get full rows.
        `scoring`: what the export says of the model's /rank scoring."""
        self.dim, self.device, self.dtype = dim, device, dtype
        self.cut_at_end_of_text = cut_at_end_of_text
        self.scoring = scoring
        self._textual = _Engine(engine_folder / ENGINE_FILES[TEXT_FILE], torch.device(str(device)))
        self.description = f'TensorRT on {device} ({dtype}, {rows_rule(None, cut_at_end_of_text)})'
        self._visual = _Engine(engine_folder / ENGINE_FILES[IMAGE_FILE], torch.device(str(device)))

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        rows = text_inputs(tokens, None, cut_at_end_of_text=self.cut_at_end_of_text)
        return self._textual.run(dict(zip(TEXT_INPUTS, rows, strict=True)))

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._visual.run({IMAGE_INPUT: pixels})


def cached_engines(model_name: str, onnx_folder: Path, *, device: Device, dtype: DType, max_batch: int) -> Path:
    """The folder with the engines for this model on `device`'s GPU, built first if need be.

    fp16 engines keep LayerNorm and reductions in fp32. `device` is selected for this call only.
    """
    gpu = torch.device(str(device))
    fp16 = dtype == DType.FP16
    key = engine_key(onnx_folder, gpu, fp16=fp16, max_batch=max_batch)
    folder = cache.tensorrt_engines() / folder_name(model_name) / key.digest()

    def build(target: Path) -> None:
        for graph, engine in ENGINE_FILES.items():
            build_engine(onnx_folder / graph, target / engine, gpu, fp16=fp16, max_batch=max_batch)

    logger.info('TensorRT %s on %s (compute %s)', key.tensorrt_version, key.gpu_name, key.compute_capability)
    with torch.cuda.device(gpu):  # the GPU the key names: TensorRT builds on the current one
        return build_once(folder, build, f'the TensorRT engines of {model_name}')
