"""The model factory: which model family runs on which runtime, and how an encoder is built.

The executors ask for a model here and nowhere else:
- `check_supported(spec, runtime)` refuses a pair this server cannot serve, or a runtime this
  machine cannot run, before anything is downloaded;
- `preprocessor(spec, model_path)` gives the model's tokenizer and image transform;
- `build_encoder(spec, runtime, options)` gives a loaded `Encoder`.

A family builder (`families/`) knows its checkpoint and tokenizer and makes two torch towers;
a runtime (`runtimes/`) runs them (PyTorch), or graphs exported from them (ONNX Runtime,
TensorRT engines compiled from those graphs, OpenVINO on the CPU). Runtime modules are imported
when first asked for, as ONNX Runtime, TensorRT and OpenVINO come with optional extras.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from clip_server.model import cache, registry
from clip_server.model.cache_build import build_once, folder_name
from clip_server.model.encoder import Encoder
from clip_server.model.families.base import FamilyBuilder
from clip_server.model.families.hf_text import HFTextBuilder
from clip_server.model.families.mclip import MCLIPBuilder
from clip_server.model.families.openclip import OpenCLIPBuilder
from clip_server.model.preprocess import Preprocessor, image_transform
from clip_server.model.registry import ModelSpec
from clip_server.model.runtimes.onnx_folder import IMAGE_FILE, TEXT_FILE, read_text_metadata
from clip_server.model.torch_utils import default_device, usable_device
from clip_server.model.weights import fetch_hf_file
from clip_server.types import (
    MINIBATCH_SIZE,
    ConfigurationError,
    DType,
    Family,
    ModelPathError,
    Runtime,
    UnsupportedError,
    parse_device,
    parse_dtype,
    require,
)


@dataclass(frozen=True)
class Served:
    """A family's builder, and the runtimes that cannot serve it, each with its own reason."""

    builder: FamilyBuilder
    refused: Mapping[Runtime, str] = field(default_factory=dict)

    @property
    def runtimes(self) -> frozenset[Runtime]:
        """Every runtime not refused."""
        return frozenset(Runtime) - self.refused.keys()

    def refusal(self, name: str, runtime: Runtime) -> str:
        """Why `name` cannot be served with `runtime`, and the runtimes that do serve it (this table's)."""
        others = [r.label for r in Runtime if r in self.runtimes]
        serve_with = ' or '.join(filter(None, (', '.join(others[:-1]), others[-1])))
        return f'{name} cannot be served with {runtime.label}: {self.refused[runtime]}; serve it with {serve_with}'


# The table: which family runs on which runtime (every runtime, but those refused).
FAMILIES: dict[Family, Served] = {
    Family.OPEN_CLIP: Served(OpenCLIPBuilder()),
    Family.HF_TEXT: Served(HFTextBuilder()),
    Family.MCLIP: Served(
        MCLIPBuilder(),
        refused={
            Runtime.TENSORRT: 'its text graph takes texts of any length, and TensorRT engines are built '
            'for graphs whose batch axis alone varies',
        },
    ),
}


@dataclass(frozen=True)
class EncoderOptions:
    """What an executor's parameters ask of its runtime; unset means the runtime's default."""

    model_path: str | os.PathLike | None = None
    device: str | None = None
    dtype: str | None = None
    jit: bool = False  # PyTorch: run the towers as TorchScript
    threads: int | None = None  # CPU inference threads
    max_batch: int = MINIBATCH_SIZE  # TensorRT: the largest batch an engine takes


def builder_for(spec: ModelSpec) -> FamilyBuilder:
    return FAMILIES[spec.family].builder


def check_supported(spec: ModelSpec, runtime: Runtime) -> FamilyBuilder:
    """The family's builder, or a refusal naming the runtimes that do serve it."""
    served = FAMILIES[spec.family]
    if runtime in served.refused:
        raise UnsupportedError(served.refusal(spec.name, runtime))
    if runtime is Runtime.TENSORRT:
        from clip_server.model.runtimes import tensorrt_runtime

        tensorrt_runtime.require_tensorrt()
    if runtime is Runtime.OPENVINO:
        require('openvino', 'openvino')  # before anything is downloaded
    return served.builder


def locate(spec: ModelSpec, model_path: str | os.PathLike | None = None) -> Any:
    """The files `spec` is built from: `model_path`, or its pretrained files (downloaded if need be)."""
    return builder_for(spec).locate(spec, model_path)


def resolve(name: str) -> ModelSpec:
    """A model name to its spec: the registry's names, and open_clip's `hf-hub:org/repo` names,
    whose repo's open_clip config is fetched (with the cache and offline rules of every download)
    and registered with open_clip."""
    if not name.startswith(registry.HUB_PREFIX):
        return registry.lookup(name)
    repo_id = name[len(registry.HUB_PREFIX) :]
    model_cfg = hub_config(repo_id)['model_cfg']
    spec = registry.hub_spec(repo_id, model_cfg)
    _register_open_clip_config(spec.arch, model_cfg)
    return spec


def hub_config(repo_id: str) -> dict:
    """The repo's open_clip config: `model_cfg`, and `preprocess_cfg` (mean, std, resizing)."""
    return json.loads(fetch_hf_file(repo_id, registry.HUB_CONFIG_FILE).read_text(encoding='utf-8'))


def _register_open_clip_config(arch: str, model_cfg: dict) -> None:
    import open_clip

    if open_clip.get_model_config(arch) == model_cfg:
        return
    folder = cache.open_clip_configs()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{arch}.json'
    path.write_text(json.dumps(model_cfg), encoding='utf-8')
    open_clip.add_model_config(path)


def preprocessor(spec: ModelSpec, model_path: str | os.PathLike | None = None) -> Preprocessor:
    """The model's tokenizer and image transform; a `model_path` folder may hold the tokenizer."""
    folder = model_path if model_path and Path(model_path).expanduser().is_dir() else None
    hub_preprocess = hub_config(spec.hub_repo).get('preprocess_cfg') if spec.hub_repo else None
    return Preprocessor(builder_for(spec).tokenizer(spec, folder), image_transform(spec, hub_preprocess))


def build_encoder(
    spec: ModelSpec,
    runtime: Runtime,
    options: EncoderOptions = EncoderOptions(),
    preprocessor: Preprocessor | None = None,
) -> Encoder:
    """`spec` loaded on `runtime`, taking the token rows `preprocessor` makes (built if not given)."""
    builder = check_supported(spec, runtime)
    return _RUNTIMES[runtime](spec, builder, options, preprocessor)


def _torch(spec: ModelSpec, builder: FamilyBuilder, options: EncoderOptions, _: Preprocessor | None) -> Encoder:
    from clip_server.model.runtimes.torch_runtime import TorchEncoder

    device = usable_device(options.device) if options.device else default_device()
    dtype = parse_dtype(options.dtype, Runtime.TORCH, device)
    if options.jit and not builder.scriptable:
        raise ConfigurationError(
            f'jit is not supported for {spec.name}: its transformers text tower cannot be scripted'
        )
    towers = builder.towers(spec, builder.locate(spec, options.model_path), device=str(device), dtype=dtype)
    return TorchEncoder(towers, dim=spec.dim, device=device, dtype=dtype, jit=options.jit, threads=options.threads)


def _onnx(spec: ModelSpec, builder: FamilyBuilder, options: EncoderOptions, given: Preprocessor | None) -> Encoder:
    from clip_server.model.runtimes.onnx_runtime import ONNXEncoder, serving_device

    device = serving_device(options.device)
    dtype = parse_dtype(options.dtype, Runtime.ONNX, device)
    pad_token_id = None
    if builder.variable_length_text:  # masked by the serving tokenizer's pad id
        pad_token_id = (given or preprocessor(spec, options.model_path)).pad_token_id
    return ONNXEncoder(
        onnx_model_dir(spec, options.model_path, dtype=dtype),
        device=device,
        dtype=dtype,
        threads=options.threads,
        image_size=spec.image_size,
        pad_token_id=pad_token_id,
    )


def _tensorrt(spec: ModelSpec, builder: FamilyBuilder, options: EncoderOptions, _: Preprocessor | None) -> Encoder:
    from clip_server.model.runtimes.tensorrt_runtime import TensorRTEncoder, cached_engines

    device = usable_device(options.device or 'cuda')
    dtype = parse_dtype(options.dtype, Runtime.TENSORRT, device)
    onnx_folder = onnx_model_dir(spec, options.model_path, dtype=DType.FP32)
    engines = cached_engines(spec.name, onnx_folder, device=device, dtype=dtype, max_batch=options.max_batch)
    metadata = read_text_metadata(onnx_folder)
    return TensorRTEncoder(
        engines,
        dim=spec.dim,
        device=device,
        dtype=dtype,
        cut_at_end_of_text=metadata.cut_at_end_of_text,
        scoring=metadata.scoring,
    )


def _openvino(spec: ModelSpec, builder: FamilyBuilder, options: EncoderOptions, given: Preprocessor | None) -> Encoder:
    from clip_server.model.runtimes.openvino_runtime import OpenVINOEncoder, int8_graphs

    device = parse_device(options.device or 'cpu')
    if device.is_cuda:
        raise ConfigurationError(
            'the OpenVINO runtime serves on CPU: set device: cpu, or serve CUDA with ONNX Runtime or TensorRT'
        )
    dtype = parse_dtype(options.dtype, Runtime.OPENVINO, device)
    folder = onnx_model_dir(spec, options.model_path, dtype=DType.FP32)
    model_input = given or preprocessor(spec, options.model_path)
    pad_token_id = model_input.pad_token_id if builder.variable_length_text else None
    return OpenVINOEncoder(
        folder,
        dtype=dtype,
        threads=options.threads,
        image_size=spec.image_size,
        pad_token_id=pad_token_id,
        quantized=int8_graphs(spec.name, folder, model_input) if dtype == DType.INT8 else None,
    )


_RUNTIMES: dict[Runtime, Callable[..., Encoder]] = {
    Runtime.TORCH: _torch,
    Runtime.ONNX: _onnx,
    Runtime.TENSORRT: _tensorrt,
    Runtime.OPENVINO: _openvino,
}


# ----------------------------------------------------------------------------- ONNX exports


def export_onnx(
    spec: ModelSpec,
    source: Any,
    folder: str | os.PathLike,
    *,
    dtype: str = DType.FP32,
    external_data: bool | None = None,
) -> Path:
    """Write `textual.onnx` and `visual.onnx` for `spec` built from `source` (see `locate`).

    fp16 is converted on a GPU when there is one; int8 quantizes the fp32 graphs.
    """
    from clip_server.model.runtimes.onnx_graphs import quantize_graphs, write_graphs

    dtype = parse_dtype(dtype, Runtime.ONNX)  # an fp16 graph can be made without a GPU, not served
    if dtype == DType.INT8:
        return quantize_graphs(export_onnx(spec, source, folder, external_data=external_data))
    device = 'cuda' if dtype == DType.FP16 and torch.cuda.is_available() else 'cpu'
    builder = builder_for(spec)
    # Real-looking texts of different lengths, so the padding paths are traced too.
    tokens = preprocessor(spec, builder.source_folder(source)).tokenize(['a photo of a cat', ''])
    towers = builder.towers(spec, source, device=device, for_export=True)
    return write_graphs(
        towers, tokens, spec.image_size, folder, dtype=dtype, external_data=external_data, name=spec.name
    )


def cached_export(spec: ModelSpec, source: Any, *, dtype: str = DType.FP32) -> Path:
    """The cached export of `spec` built from `source`, made first if no process has made it yet."""
    from clip_server.model.runtimes.onnx_graphs import export_key

    dtype = parse_dtype(dtype, Runtime.ONNX)
    key = export_key(builder_for(spec).files(source), dtype)
    folder = cache.onnx_exports() / folder_name(spec.name) / f'{dtype}-{key}'
    return build_once(folder, partial(export_onnx, spec, source, dtype=dtype), f'the ONNX export of {spec.name}')


def onnx_model_dir(spec: ModelSpec, model_path: str | os.PathLike | None = None, *, dtype: str = DType.FP32) -> Path:
    """The folder to serve: `model_path` itself when it is a folder of ONNX files (a custom model,
    served as is), else the cached export of what `model_path` names (the family's checkpoint)
    or of `spec`'s pretrained weights."""
    builder = builder_for(spec)
    path = Path(model_path).expanduser() if model_path else None
    if path and path.is_dir() and (not builder.checkpoint_is_folder or (path / TEXT_FILE).exists()):
        return path
    if path and not path.exists():
        raise ModelPathError(
            f'model_path {str(model_path)!r} does not exist: it must be a folder with {TEXT_FILE} and '
            f'{IMAGE_FILE}, or {builder.checkpoint} to export'
        )
    return cached_export(spec, builder.locate(spec, model_path), dtype=dtype)
