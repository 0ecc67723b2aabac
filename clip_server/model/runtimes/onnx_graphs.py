"""Write a family's towers as ONNX graphs (`textual.onnx` + `visual.onnx`) in the I/O contract.

The original server downloaded pre-exported files; this one makes them from the PyTorch
towers (see `factory.cached_export` for when and where). A text tower that takes rows of
any length (a pad id: M-CLIP; a causal tower pooled at end-of-text: CLIP) gets a dynamic
sequence axis, and its rule in the graph's metadata. `export_key` names everything an
export depends on, so new weights or a new exporter never reuse a stale export.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clip_server.model.cache_build import digest
from clip_server.model.families.base import Towers
from clip_server.model.quiet import without_log
from clip_server.model.runtimes.onnx_folder import (
    GRAPH_FILES,
    IMAGE_FILE,
    IMAGE_INPUT,
    OUTPUT,
    TEXT_FILE,
    TEXT_INPUTS,
    TextGraphMetadata,
    read_graph_properties,
)
from clip_server.model.tokens import text_inputs
from clip_server.model.weights import SHA256_NAME
from clip_server.types import DType, require

onnx = require('onnx', 'onnx')

logger = logging.getLogger(__name__)

OPSET = 17
# Bump when the graphs written here change, so cached exports are made again.
FORMAT_VERSION = 4
# Protobuf cannot hold more than 2 GiB; towers above this (ViT-H/g) keep their weights in a `.data` file.
EXTERNAL_DATA_ABOVE_BYTES = 3 << 29  # 1.5 GiB: room for the graph itself


class _TextTower(torch.nn.Module):
    """int32 ids and mask in (the contract), the tower's own int64 inside, float32 out."""

    def __init__(self, text: torch.nn.Module):
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids.long(), attention_mask.long()).float()


class _ImageTower(torch.nn.Module):
    """float32 pixels in and embeddings out, whatever precision the weights run in."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual
        self.dtype = next(visual.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values.to(self.dtype)).float()


def write_graphs(
    towers: Towers,
    sample_tokens: np.ndarray,
    image_size: int,
    folder: str | os.PathLike,
    *,
    dtype: DType = DType.FP32,
    external_data: bool | None = None,
    name: str = 'the model',
) -> Path:
    """Write `textual.onnx` and `visual.onnx` for fp32 `towers` (built for export) into `folder`.

    `sample_tokens`: real-looking texts of different lengths, so the padding paths are traced.
    fp16 converts the towers first. `external_data` (default: only towers too large for one
    protobuf) puts the weights in `<file>.data` beside each graph.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = next(towers.image.parameters()).device
    metadata = TextGraphMetadata(
        towers.pad_token_id, towers.cut_at_end_of_text, context_length=sample_tokens.shape[1], scoring=towers.scoring
    )
    any_length = metadata.pad_token_id is not None or metadata.cut_at_end_of_text
    rows = text_inputs(sample_tokens, towers.pad_token_id, towers.cut_at_end_of_text)
    ids, mask = (torch.from_numpy(np.asarray(a)).to(device, torch.int32) for a in rows)
    text_tower = _traceable_attention(towers.text) if any_length else towers.text
    text = _TextTower(_half(text_tower, dtype)).to(device).eval()  # eval: the exporter restores this mode
    _export_tower(
        text,
        (ids, mask),
        TEXT_INPUTS,
        {0: 'batch', 1: 'sequence'} if any_length else {0: 'batch'},
        folder / TEXT_FILE,
        external_data,
        name,
        metadata.properties(),
    )
    pixels = torch.zeros(2, 3, image_size, image_size, device=device)
    image = _ImageTower(_half(towers.image, dtype)).eval()
    _export_tower(image, (pixels,), (IMAGE_INPUT,), {0: 'batch'}, folder / IMAGE_FILE, external_data, name)
    return folder


class _TraceableAttention(torch.nn.Module):
    """`nn.MultiheadAttention` (batch-first self-attention) spelt out in plain ops, same weights.

    The legacy exporter bakes the traced sequence length into nn.MultiheadAttention's reshapes,
    so a graph traced on 7 tokens fails on 12; these ops keep the sequence axis dynamic.
    """

    def __init__(self, attention: torch.nn.MultiheadAttention):
        super().__init__()
        if not (attention.batch_first and attention._qkv_same_embed_dim) or attention.bias_k is not None:
            raise ValueError('only batch-first self-attention with one input projection can be exported')
        if attention.add_zero_attn:
            raise ValueError('attention with add_zero_attn cannot be exported with a dynamic sequence')
        self.heads = attention.num_heads
        self.in_proj_weight, self.in_proj_bias = attention.in_proj_weight, attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        assert key is None or key is query, 'self-attention only'  # what open_clip's text blocks do
        head_width = query.shape[-1] // self.heads
        qkv = torch.nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.unflatten(-1, (3, self.heads, head_width)).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * head_width**-0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask
        return self.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2)), None


def _traceable_attention(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with each nn.MultiheadAttention replaced in place by `_TraceableAttention`."""
    for name, child in list(module.named_modules()):
        if isinstance(child, torch.nn.MultiheadAttention):
            parent_name, _, attribute = name.rpartition('.')
            setattr(module.get_submodule(parent_name), attribute, _TraceableAttention(child))
    return module


def _half(module: torch.nn.Module, dtype: DType) -> torch.nn.Module:
    # All of it, BatchNorm too: open_clip's own fp16 keeps BatchNorm in fp32, and the exporter
    # then folds it into fp16 convolutions as an fp32 bias, which onnxruntime rejects.
    return module.half() if dtype == DType.FP16 else module


def _export_tower(
    tower: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    inputs: tuple[str, ...],
    axes: dict[int, str],
    target: Path,
    external_data: bool | None,
    name: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """Trace with the legacy exporter into a scratch folder, then save the checked graph as `target`."""
    started = time.monotonic()
    logger.info('Exporting %s of %s to ONNX...', target.name, name)
    # Not under no_grad: that sends nn.MultiheadAttention down a fused path the exporter cannot translate.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # the legacy exporter: 2.5x faster, same numbers
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', 'Exporting aten::index operator')  # indices come from argmax: >= 0
        raw = Path(scratch) / target.name
        torch.onnx.export(
            tower,
            args,
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=[OUTPUT],
            dynamic_axes={**{axis: axes for axis in inputs}, OUTPUT: {0: 'batch'}},
        )
        graph = onnx.load(str(raw))
    _declare_unused_inputs(graph, inputs)
    onnx.helper.set_model_props(graph, metadata or {})
    size = sum(len(tensor.raw_data) for tensor in graph.graph.initializer)
    large = size > EXTERNAL_DATA_ABOVE_BYTES if external_data is None else external_data
    onnx.save_model(
        graph,
        str(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f'{target.name}.data',
    )
    onnx.checker.check_model(str(target))
    logger.info('%s of %s exported in %.1fs (%.0f MB)', target.name, name, time.monotonic() - started, size / 1e6)


def _declare_unused_inputs(graph, inputs: tuple[str, ...]) -> None:
    """The tracer drops inputs the graph never reads (`attention_mask`); the contract needs them declared."""
    declared = {value.name for value in graph.graph.input}
    first = graph.graph.input[0].type.tensor_type
    for name in inputs:
        if name not in declared:
            value = graph.graph.input.add()
            value.name = name
            value.type.tensor_type.CopyFrom(first)


def quantize_graphs(folder: str | os.PathLike) -> Path:
    """Replace both fp32 graphs in `folder` by ONNX Runtime's dynamic int8 quantization of them.

    Weights of MatMul/Gemm (and attention) become int8; activations are quantized per call
    on the fly, so no calibration data is needed. Runs on CPU only (integer kernels).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    for name in GRAPH_FILES:
        started, graph = time.monotonic(), folder / name
        quantized, data = folder / f'int8-{name}', Path(f'{graph}.data')
        large = data.exists()  # int8 is 4x smaller, yet ViT-bigG's image tower stays near protobuf's 2 GiB
        with without_log('Please consider to run pre-processing'):  # its optional shape-inference pass
            quantize_dynamic(graph, quantized, weight_type=QuantType.QInt8, use_external_data_format=large)
        metadata = read_graph_properties(graph)
        model = onnx.load(str(quantized))  # with its weights, wherever they were written
        onnx.helper.set_model_props(model, metadata)  # the text graph's row rule
        data.unlink(missing_ok=True)
        onnx.save_model(
            model, str(graph), save_as_external_data=large, all_tensors_to_one_file=True, location=data.name
        )
        for scratch in folder.glob(f'int8-{name}*'):
            scratch.unlink()
        logger.info('%s quantized to int8 in %.1fs', name, time.monotonic() - started)
    return folder


def export_key(files: Sequence[str | os.PathLike], dtype: DType) -> str:
    """Short hash of what an export depends on: the weights files' identity and the exporter."""
    import open_clip

    return digest(
        {
            'weights': [_file_identity(path) for path in files],
            'dtype': DType(dtype).value,
            'format': FORMAT_VERSION,
            'opset': OPSET,
            'torch': torch.__version__,
            'open_clip': open_clip.__version__,
            'transformers': _transformers(),
        }
    )


def _file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """A hub blob is named by its sha256: that name alone identifies it, wherever the cache is
    mounted (a Docker volume, a copied cache); any other file by its path, size and mtime."""
    resolved = Path(path).resolve()  # a hub snapshot link resolves to its content-named blob
    stat = resolved.stat()
    if SHA256_NAME.fullmatch(resolved.name):
        return resolved.name, stat.st_size, 0
    return str(resolved), stat.st_size, stat.st_mtime_ns


def _transformers() -> str | None:
    """Its version shapes the graphs of `transformers` text towers."""
    try:
        return importlib.metadata.version('transformers')
    except importlib.metadata.PackageNotFoundError:
        return None
