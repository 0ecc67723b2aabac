"""Export open_clip models to ONNX (`textual.onnx` + `visual.onnx`) and cache the exports.

The original server downloaded pre-exported files; this one makes them from the PyTorch
weights, once (for M-CLIP, from its checkpoint's files: see `mclip_model`; its text graph
takes any sequence length up to 77, and its metadata names the pad id): an export lands in `<cache>/onnx/<model>/<dtype>-<key>/`, where the key
hashes the weights file's identity and the exporter's settings, so new weights or a new
exporter never reuse a stale export. Replicas starting together build it once (see
`cache_build`).

Command line, for Docker builds and air-gapped hosts:
    python -m clip_server.model.onnx_export NAME OUTDIR [--weights FILE|FOLDER] [--dtype fp32|fp16]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Union

import onnx
import open_clip
import torch

from clip_server.model.cache_build import build_once, folder_name
from clip_server.model.hf_text import trim_padding
from clip_server.model.onnx_model import DTYPES, IMAGE_FILE, IMAGE_INPUT, PAD_TOKEN_ID, TEXT_FILE, TEXT_INPUTS
from clip_server.model.openclip_model import create_open_clip_model
from clip_server.model.preprocess import Preprocessor
from clip_server.model.registry import MCLIP, ModelSpec, resolve
from clip_server.model.weights import SHA256_NAME, cache_dir, locate_weights

if TYPE_CHECKING:
    from clip_server.model.mclip_model import MCLIPFiles

# What an export is made from: a weights file, or an M-CLIP model's files.
Weights = Union[str, os.PathLike, 'MCLIPFiles']

logger = logging.getLogger(__name__)

OPSET = 17
# Bump when the graphs written here change, so cached exports are made again.
FORMAT_VERSION = 2
# Protobuf cannot hold more than 2 GiB; towers above this (ViT-H/g) keep their weights in a `.data` file.
EXTERNAL_DATA_ABOVE_BYTES = 3 << 29  # 1.5 GiB: room for the graph itself


class _TextTower(torch.nn.Module):
    """int32 ids in (the contract), the model's own int64 inside; the mask is declared, not used:
    open_clip finds the end-of-text token as the largest id."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids.long()).float()


class _MCLIPTextTower(torch.nn.Module):
    """int32 ids and mask in (the contract); the mask is M-CLIP's own: padding is left out of the mean."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids.long(), attention_mask.long()).float()


class _ImageTower(torch.nn.Module):
    """float32 pixels in and embeddings out, whatever precision the weights run in."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual
        self.dtype = next(visual.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values.to(self.dtype)).float()


def export_onnx(
    spec: ModelSpec,
    weights: Weights,
    folder: str | os.PathLike,
    *,
    dtype: str = 'fp32',
    external_data: bool | None = None,
) -> Path:
    """Write `textual.onnx` and `visual.onnx` for `spec` with `weights` into `folder`.

    fp16 is converted on a GPU when there is one. `external_data` (default: only towers
    too large for one protobuf) puts the weights in `<file>.data` beside each graph.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype {dtype!r} is not one of {", ".join(DTYPES)} for an ONNX export')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = 'cuda' if dtype == 'fp16' and torch.cuda.is_available() else 'cpu'
    # Real-looking texts of different lengths, so the padding paths are traced too.
    tokens = Preprocessor(spec, _tokenizer_source(spec, weights)).tokenize(['a photo of a cat', ''])
    pixels = torch.zeros(2, 3, spec.image_size, spec.image_size, device=device)
    if spec.family == MCLIP:
        from clip_server.model.mclip_model import create_mclip_text_tower, image_tower_spec, pad_token_id

        pad = pad_token_id(weights)
        ids, mask = (torch.from_numpy(array).to(device, torch.int32) for array in trim_padding(tokens, pad))
        text = _MCLIPTextTower(_half(create_mclip_text_tower(weights, attn_implementation='eager'), dtype))
        visual = create_open_clip_model(image_tower_spec(spec), weights.image_weights, device=device).visual
        text_axes, metadata = {0: 'batch', 1: 'sequence'}, {PAD_TOKEN_ID: str(pad)}
    else:
        model = _half(create_open_clip_model(spec, weights, device=device), dtype)
        ids = mask = torch.from_numpy(tokens).to(device, torch.int32)
        text, visual = _TextTower(model), model.visual
        text_axes, metadata = {0: 'batch'}, {}
    # eval: the exporter restores the wrapper's mode onto the model
    _export_tower(
        text.to(device).eval(), (ids, mask), TEXT_INPUTS, text_axes, folder / TEXT_FILE, external_data, spec.name,
        metadata,
    )
    image = _ImageTower(_half(visual, dtype)).eval()
    _export_tower(image, (pixels,), (IMAGE_INPUT,), {0: 'batch'}, folder / IMAGE_FILE, external_data, spec.name)
    return folder


def _half(module: torch.nn.Module, dtype: str) -> torch.nn.Module:
    # All of it, BatchNorm too: open_clip's own fp16 keeps BatchNorm in fp32, and the exporter
    # then folds it into fp16 convolutions as an fp32 bias, which onnxruntime rejects.
    return module.half() if dtype == 'fp16' else module


def _tokenizer_source(spec: ModelSpec, weights: Weights) -> Path | None:
    """The folder an M-CLIP checkpoint came from holds its tokenizer too (a local folder or a Hub snapshot)."""
    return weights.config.parent if spec.family == MCLIP else None


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
            output_names=['embeddings'],
            dynamic_axes={**{axis: axes for axis in inputs}, 'embeddings': {0: 'batch'}},
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


def _declare_unused_inputs(graph: onnx.ModelProto, inputs: tuple[str, ...]) -> None:
    """The tracer drops inputs the graph never reads (`attention_mask`); the contract needs them declared."""
    declared = {value.name for value in graph.graph.input}
    first = graph.graph.input[0].type.tensor_type
    for name in inputs:
        if name not in declared:
            value = graph.graph.input.add()
            value.name = name
            value.type.tensor_type.CopyFrom(first)


def export_key(weights: Weights, dtype: str) -> str:
    """Short hash of what an export depends on: the weights files' identity and the exporter."""
    paths = weights.paths() if hasattr(weights, 'paths') else (weights,)
    identity = {
        'weights': [_file_identity(path) for path in paths], 'dtype': dtype, 'format': FORMAT_VERSION,
        'opset': OPSET, 'torch': torch.__version__, 'open_clip': open_clip.__version__, 'transformers': _transformers(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


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


def torch_weights(spec: ModelSpec, model_path: str | os.PathLike | None = None) -> Weights:
    """What to export `spec` from: `model_path` or the pretrained files (M-CLIP: its checkpoint's files)."""
    if spec.family == MCLIP:
        from clip_server.model.mclip_model import locate_mclip

        return locate_mclip(spec, model_path)
    return locate_weights(spec, model_path)


def cached_export(spec: ModelSpec, weights: Weights, *, dtype: str = 'fp32') -> Path:
    """The cached export of `spec` with `weights`, made first if no process has made it yet."""
    folder = cache_dir() / 'onnx' / folder_name(spec.name) / f'{dtype}-{export_key(weights, dtype)}'
    return build_once(folder, partial(export_onnx, spec, weights, dtype=dtype), f'the ONNX export of {spec.name}')


def onnx_model_dir(spec: ModelSpec, model_path: str | os.PathLike | None = None, *, dtype: str = 'fp32') -> Path:
    """The folder to serve: `model_path` itself when it is a folder of ONNX files (a custom model,
    served as is), else the cached export of what `model_path` names (a weights file; for M-CLIP a
    folder with its checkpoint's files) or of `spec`'s pretrained weights."""
    path = Path(model_path).expanduser() if model_path else None
    if path and path.is_dir() and (spec.family != MCLIP or (path / TEXT_FILE).exists()):
        return path
    if path and not path.exists():
        source = 'a folder with the M-CLIP checkpoint' if spec.family == MCLIP else 'a PyTorch weights file'
        raise FileNotFoundError(
            f'model_path {str(model_path)!r} does not exist: it must be a folder with {TEXT_FILE} and '
            f'{IMAGE_FILE}, or {source} to export'
        )
    return cached_export(spec, torch_weights(spec, model_path), dtype=dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m clip_server.model.onnx_export',
        description='Export a CLIP model to textual.onnx + visual.onnx, to serve with `model_path: OUTDIR`.',
    )
    parser.add_argument('name', help='model name, e.g. ViT-B-32::openai')
    parser.add_argument('outdir', type=Path, help='folder to write textual.onnx and visual.onnx into')
    parser.add_argument(
        '--weights',
        help='PyTorch weights file, or for M-CLIP a folder with its checkpoint (default: the pretrained files, '
        'cached or downloaded)',
    )
    parser.add_argument('--dtype', choices=['fp32', 'fp16'], default='fp32', help='fp16 is for serving on CUDA')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    spec = resolve(args.name)
    folder = export_onnx(spec, torch_weights(spec, args.weights), args.outdir, dtype=args.dtype)
    print(f'{spec.name} exported to {folder.resolve()}')


if __name__ == '__main__':
    main()
