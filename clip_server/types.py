"""Types every layer shares: model families, runtimes, dtypes, devices, errors, optional extras.

Imports nothing else from the package, so any module may import it without a cycle.
A decision about a dtype or a device is made here, once; which family runs on which
runtime is decided in `clip_server.model.factory`.
"""

from __future__ import annotations

import enum
import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType


class ClipServerError(Exception):
    """Every error this package raises on purpose; its message says what to do."""


class InvalidInputError(ClipServerError, ValueError):
    """Client content that cannot become model input; the message names the problem."""


class RequestLimitError(ClipServerError, ValueError):
    """A request over one of the gateway's limits (documents per request)."""


class ServerBusyError(ClipServerError, RuntimeError):
    """A request the gateway turns away because too much is pending already; retrying later works."""


class UnknownModelError(ClipServerError, ValueError):
    """The requested model name is neither in the registry nor known to open_clip."""


class ConfigurationError(ClipServerError, ValueError):
    """An executor parameter (dtype, device, an option) this server cannot honour."""


class UnsupportedError(ClipServerError, NotImplementedError):
    """A model family that a runtime cannot serve; refused before anything is downloaded."""


class RuntimeUnavailableError(ClipServerError, RuntimeError):
    """This machine lacks what a runtime needs (a package, a GPU)."""


class WeightsUnavailableError(ClipServerError, RuntimeError):
    """Model files are neither validly cached nor obtainable from their source."""

    failures: list[tuple[str, str]]  # (where, why) for each source tried


class ModelPathError(ClipServerError, FileNotFoundError):
    """`model_path` names nothing usable: a missing file or folder."""


class ModelFolderError(ClipServerError, ValueError):
    """A folder of exported graphs that cannot be served; the message says what is wrong."""


class MissingExtraError(ClipServerError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional package, or fail naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition('.')[0]:
            raise  # the package is there but broken: its own error says more
        raise MissingExtraError(
            f'{module} is not installed; install it with: pip install "clip-server[{extra}]"'
        ) from exc


class Family(enum.StrEnum):
    """How a model is built: which towers, tokenizer and checkpoint layout."""

    OPEN_CLIP = 'open_clip'  # open_clip's own CLIP models (BPE tokenizer, fixed 77 tokens)
    HF_TEXT = 'hf_text'  # open_clip models whose text tower is a `transformers` model
    MCLIP = 'mclip'  # M-CLIP: a multilingual transformer trained into an open_clip image tower's space


class Runtime(enum.StrEnum):
    TORCH = 'torch'
    ONNX = 'onnx'
    TENSORRT = 'tensorrt'
    OPENVINO = 'openvino'

    @property
    def label(self) -> str:
        return _RUNTIME_LABELS[self]


_RUNTIME_LABELS = {
    Runtime.TORCH: 'PyTorch',
    Runtime.ONNX: 'ONNX Runtime',
    Runtime.TENSORRT: 'TensorRT',
    Runtime.OPENVINO: 'OpenVINO',
}


class DType(enum.StrEnum):
    """The precision a model runs in; embeddings are always returned as float32."""

    FP32 = 'fp32'
    FP16 = 'fp16'
    BF16 = 'bf16'
    # ONNX Runtime: dynamic quantization (int8 weights, activations quantized per call);
    # OpenVINO: NNCF's static quantization (int8 weights and activations, calibrated once)
    INT8 = 'int8'


# What `dtype: auto` (the default) picks; see `auto_dtype`.
AUTO = 'auto'

# The dtypes each runtime runs.
RUNTIME_DTYPES: dict[Runtime, tuple[DType, ...]] = {
    Runtime.TORCH: (DType.FP32, DType.FP16, DType.BF16),
    Runtime.ONNX: (DType.FP32, DType.FP16, DType.INT8),
    Runtime.TENSORRT: (DType.FP16, DType.FP32),
    Runtime.OPENVINO: (DType.FP32, DType.BF16, DType.INT8),  # on CPU only (`factory`)
}
# Pairs that need a GPU: onnxruntime's CPU provider has few fp16 kernels (1.32 even crashes optimising them).
GPU_ONLY_DTYPES = {(Runtime.ONNX, DType.FP16)}
# Pairs that need a CPU: dynamically quantized graphs use integer kernels that only the CPU provider has.
CPU_ONLY_DTYPES = {(Runtime.ONNX, DType.INT8)}

# Texts or images an encoder runs through its model at once unless `minibatch_size` says otherwise;
# so also the largest batch a TensorRT engine is built for.
MINIBATCH_SIZE = 32


@dataclass(frozen=True)
class Scoring:
    """How `/rank` turns a model's text-image cosine into `clip_score`.

    CLIP-trained models (`bias` None): softmax over the candidates of `scale` x cosine, with
    CLIP's 100. Sigmoid-trained models (SigLIP, SigLIP2): each candidate on its own,
    sigmoid(`scale` x cosine + `bias`), with the model's own learned scale and bias.
    """

    scale: float = 100.0
    bias: float | None = None

    @property
    def is_sigmoid(self) -> bool:
        return self.bias is not None


CLIP_SCORING = Scoring()


@dataclass(frozen=True)
class Device:
    """Where a model runs: `cpu`, or `cuda` with an optional GPU index."""

    kind: str
    index: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.kind == 'cuda'

    def __str__(self) -> str:
        return self.kind if self.index is None else f'{self.kind}:{self.index}'


CPU = Device('cpu')
_DEVICE = re.compile(r'(cpu|cuda)(?::(\d+))?')


def parse_device(value: str | Device) -> Device:
    """`cpu`, `cuda` or `cuda:N`; anything else is refused with the accepted forms."""
    if isinstance(value, Device):
        return value
    match = _DEVICE.fullmatch(str(value).strip().lower())
    if not match or (match[1] == 'cpu' and match[2]):
        raise ConfigurationError(f'device {value!r} is not a device name such as "cpu", "cuda" or "cuda:1"')
    return Device(match[1], int(match[2]) if match[2] else None)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags this CPU reports (Linux); empty where they cannot be read."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith('flags')), '')
    return frozenset(line.partition(':')[2].split())


# CPU flags of native bf16 matrix products: AMX tiles (about 4x fp32 measured with ViT-B-32 on
# a Xeon), AVX512-BF16 dot products (about 2x on an AMD EPYC without AMX; see docs/benchmark.md).
BF16_CPU_FLAGS = ('amx_bf16', 'avx512_bf16')


def auto_dtype(runtime: Runtime, device: Device) -> tuple[DType, str]:
    """The fastest precision that keeps embeddings within 0.999 cosine of fp32, and why.

    fp16 on a GPU. bf16 on a CPU with native bf16 instructions (`BF16_CPU_FLAGS`) where the
    runtime runs it (PyTorch, OpenVINO). fp32 elsewhere: without those instructions bf16 is emulated and
    slower than fp32, and ONNX Runtime has no bf16 CPU kernels.
    """
    if device.is_cuda:
        return DType.FP16, 'a GPU runs half precision fastest'
    native = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    if native and DType.BF16 in RUNTIME_DTYPES[runtime]:
        return DType.BF16, f'this CPU runs bf16 natively ({native[0]}); set dtype: fp32 for exact fp32 output'
    return DType.FP32, 'no faster precision keeps fp32 accuracy here'


def parse_dtype(value: str | DType | None, runtime: Runtime, device: Device | None = None) -> DType:
    """`value` checked against what `runtime` runs (on `device`, when given); unset or `auto`:
    the fastest precision that stays within 0.999 cosine of fp32 there (`auto_dtype`).
    """
    supported = RUNTIME_DTYPES[runtime]
    if value is None or value == AUTO:
        return auto_dtype(runtime, device or CPU)[0]
    try:
        dtype = DType(value)
    except ValueError:
        dtype = None
    if dtype not in supported:
        names = ', '.join([AUTO, *(d.value for d in supported)])
        raise ConfigurationError(f'dtype {value!r} is not one of {names} for the {runtime.label} runtime')
    if device and (runtime, dtype) in GPU_ONLY_DTYPES and not device.is_cuda:
        raise ConfigurationError(
            f'dtype {dtype.value} needs device cuda with the {runtime.label} runtime; on CPU use dtype fp32 or int8'
        )
    if device and (runtime, dtype) in CPU_ONLY_DTYPES and device.is_cuda:
        raise ConfigurationError(
            f'dtype {dtype.value} runs on CPU only with the {runtime.label} runtime; on a GPU use dtype fp16'
        )
    return dtype
