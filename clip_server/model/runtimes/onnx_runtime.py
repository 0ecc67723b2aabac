"""ONNX runtime: a folder of graphs in the contract of `onnx_folder`, served through onnxruntime.

A text graph whose metadata names a `pad_token_id` (M-CLIP's) takes right-padded ids of any
length instead: each minibatch is cut to its longest text and masked by that pad id. One
whose metadata says `cut_at_end_of_text` (this server's exports of causal CLIP towers) takes
rows cut after the minibatch's last end-of-text token (see `clip_server.model.tokens`).
Models are checked against it at start, so a wrong folder fails with a message naming
the problem instead of at the first request.

Kept free of Jina and docarray (torch is only asked, lazily, whether there is a GPU);
`onnxruntime` comes with the `clip-server[onnx]` extra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_server.model.runtimes.onnx_folder import IMAGE_FILE, IMAGE_INPUT, TEXT_FILE, TEXT_INPUTS, TextGraphMetadata
from clip_server.model.tokens import rows_rule, text_inputs
from clip_server.types import CPU as CPU_DEVICE
from clip_server.types import Device, DType, ModelFolderError, parse_device, require

ort = require('onnxruntime', 'onnx')

logger = logging.getLogger(__name__)

CUDA = 'CUDAExecutionProvider'
CPU = 'CPUExecutionProvider'

# The element types a conforming model may declare; inputs are cast to what it declares.
_TEXT_TYPES = {'tensor(int32)': np.int32, 'tensor(int64)': np.int64}
_IMAGE_TYPES = {'tensor(float)': np.float32, 'tensor(float16)': np.float16}


def serving_device(device: str | None = None) -> Device:
    """`device`, by default CUDA when there is both a GPU and onnxruntime's CUDA provider.

    CUDA asked for without the provider is served on CPU, with a loud warning.
    """
    import torch  # a core dependency; only asked whether a GPU is there

    parsed = parse_device(device) if device is not None else None
    has_provider = CUDA in ort.get_available_providers()
    if parsed is None:
        return parse_device('cuda') if has_provider and torch.cuda.is_available() else CPU_DEVICE
    if parsed.is_cuda and not has_provider:
        _warn_no_cuda(f'this onnxruntime has no {CUDA} (it has {", ".join(ort.get_available_providers())})')
        return CPU_DEVICE
    return parsed


def providers_for(device: Device) -> list:
    """CUDA (on the device's GPU) then CPU for a cuda device, CPU alone otherwise."""
    if not device.is_cuda:
        return [CPU]
    return [(CUDA, {'device_id': device.index or 0}), CPU]


def _warn_no_cuda(reason: str) -> None:
    logger.warning(
        '!!! device cuda was asked for, but the ONNX model runs on CPU, much slower: %s. '
        'Install onnxruntime-gpu matching your CUDA and cuDNN versions, or set device: cpu. !!!',
        reason,
    )


def _describe(args: list) -> str:
    return ', '.join(f'{arg.name} ({arg.type} {arg.shape})' for arg in args) or 'nothing'


class _Tower:
    """One checked inference session: its inputs by name with the numpy dtype each declares."""

    def __init__(
        self,
        path: Path,
        inputs: tuple[str, ...],
        types: Mapping[str, type],
        rank: int,
        options: Any,  # ort.SessionOptions (onnxruntime is imported where used)
        providers: list,
    ):
        if not path.is_file():
            raise ModelFolderError(
                f'{path.parent} has no {path.name}: an ONNX model folder needs both {TEXT_FILE} and {IMAGE_FILE}'
            )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own unexported exception classes
            raise ModelFolderError(f'{path} is not a loadable ONNX model: {exc}') from exc
        declared, outputs = self.session.get_inputs(), self.session.get_outputs()
        if sorted(arg.name for arg in declared) != sorted(inputs):
            raise ModelFolderError(f'{path} must take {", ".join(inputs)}; it takes {_describe(declared)}')
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise ModelFolderError(f'{path} must have one output [batch, dim]; it has {_describe(outputs)}')
        for arg in declared:
            if arg.type not in types or len(arg.shape) != rank:
                raise ModelFolderError(
                    f'{path}: input {arg.name} must be {" or ".join(types)} of rank {rank}, not {arg.type} {arg.shape}'
                )
        for arg in declared + outputs:
            if isinstance(arg.shape[0], int):
                raise ModelFolderError(
                    f'{path}: {arg.name} has a fixed batch size of {arg.shape[0]}; export it with a dynamic batch axis'
                )
        self.inputs = {arg.name: types[arg.type] for arg in declared}
        self.shapes = {arg.name: arg.shape for arg in declared}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        cast: dict[str, np.ndarray] = {
            name: np.ascontiguousarray(feed[name], dtype=dtype) for name, dtype in self.inputs.items()
        }
        return self.session.run(None, cast)[0].astype(np.float32, copy=False)


class ONNXEncoder:
    """A CLIP model as two ONNX graphs behind the `Encoder` interface."""

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        device: Device = CPU_DEVICE,
        dtype: DType = DType.FP32,
        threads: int | None = None,
        image_size: int | None = None,
        pad_token_id: int | None = None,
    ):
        """`dtype`: what the folder was exported in. `image_size`: the preprocessing's, checked
        against the graph. `pad_token_id`: the serving tokenizer's, for text graphs that mask by
        it (M-CLIP); it overrides the graph's own metadata, which folders made elsewhere may lack."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ModelFolderError(f'ONNX model folder {str(folder)!r} does not exist or is not a folder')
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would otherwise spin, taking the cores that decode images and serve gRPC:
        # measured through a server on 2 cores, texts/s went from 15.5 to 26.5 without spinning.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        if threads:
            options.intra_op_num_threads = threads
        providers = providers_for(device)
        self._text = _Tower(folder / TEXT_FILE, TEXT_INPUTS, _TEXT_TYPES, 2, options, providers)
        self._image = _Tower(folder / IMAGE_FILE, (IMAGE_INPUT,), _IMAGE_TYPES, 4, options, providers)
        self.providers = self._image.session.get_providers()
        self.device, self.dtype = device, dtype
        self.dim = self._text.session.get_outputs()[0].shape[1]
        if providers[0] != CPU and CUDA not in self.providers:
            _warn_no_cuda(f"{CUDA} did not load (see onnxruntime's messages above)")
        # the loaded session's copy of the metadata: reading the file again would parse the graph twice
        metadata = TextGraphMetadata.parse(self._text.session.get_modelmeta().custom_metadata_map)
        self._pad_token_id = pad_token_id if pad_token_id is not None else metadata.pad_token_id
        self._cut_at_end_of_text = metadata.cut_at_end_of_text
        self.scoring = metadata.scoring
        rows = rows_rule(self._pad_token_id, self._cut_at_end_of_text)
        self.description = f'{", ".join(self.providers)} ({dtype}, {rows})'
        spatial = self._image.shapes[IMAGE_INPUT][2:]
        if image_size and all(isinstance(side, int) for side in spatial) and spatial != [image_size] * 2:
            raise ModelFolderError(
                f'{folder / IMAGE_FILE} takes {spatial[0]}x{spatial[1]} images, but the model name gives '
                f'{image_size}x{image_size} preprocessing: set `name` to the model the folder was made from'
            )

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        rows = text_inputs(tokens, self._pad_token_id, self._cut_at_end_of_text)
        return self._text.run(dict(zip(TEXT_INPUTS, rows, strict=True)))

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._image.run({IMAGE_INPUT: pixels})
