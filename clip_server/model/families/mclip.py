"""M-CLIP: a multilingual `transformers` text tower trained into an open_clip image tower's space.

An M-CLIP checkpoint (Hub repo `M-CLIP/<name>`) holds:
- `config.json`: `modelBase` (the Hub name of the transformer it was made from, e.g.
  `xlm-roberta-large`), `transformerDimensions` (its hidden size) and `numDims` (the image
  tower's embedding size);
- `pytorch_model.bin`: `transformer.*` (that transformer's weights) and
  `LinearTransformation.{weight,bias}` (hidden size -> image embedding size);
- the tokenizer files (`tokenizer.json` and friends).
The checkpoint's config does not describe the transformer itself, so its config is the base
model's `config.json`, fetched too (`<modelBase>/config.json`): M-CLIP's own code builds the
transformer from `modelBase` the same way. A text embedding is the transformer's last hidden
states averaged over the real tokens (attention mask), mapped by the linear layer.

`model_path` for M-CLIP is a folder with (a local copy of) the checkpoint's files; whatever it
lacks comes from the Hub through the cache. It may also hold the image tower's open_clip weights
(`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`), and `modelBase` may name a
folder (absolute, or relative to `model_path`) holding the base `config.json`, so a server can
run with no network at all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from clip_server.model.families.base import FamilyBuilder, Tokenizer, Towers
from clip_server.model.families.hf_text import HFTokenizer, hf_config_folder, read_json
from clip_server.model.families.hf_tokenizer import CONFIG_FILE, tokenizer_folder
from clip_server.model.families.openclip import create_open_clip_model
from clip_server.model.registry import ModelSpec
from clip_server.model.torch_utils import TORCH_DTYPES, rebuilt_buffers
from clip_server.model.weights import fetch_hf_file, fetch_open_clip_weights
from clip_server.types import ConfigurationError, DType, Family, ModelPathError, WeightsUnavailableError, require

# What the Hub repos hold is the pickle; a local folder may have a safetensors copy instead.
TEXT_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')
IMAGE_WEIGHTS = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)


@dataclass(frozen=True)
class MCLIPFiles:
    """Where each part of an M-CLIP model is on disk."""

    config: Path  # the checkpoint's config.json
    weights: Path  # its state dict: transformer.* and LinearTransformation.*
    base_config: Path  # the transformer's config.json
    image_weights: Path  # the paired open_clip model's weights

    def paths(self) -> tuple[Path, ...]:
        return dataclasses.astuple(self)


def image_tower_spec(spec: ModelSpec) -> ModelSpec:
    """The open_clip model whose image tower an M-CLIP model pairs with."""
    return dataclasses.replace(spec, name=f'{spec.arch}::{spec.tag}', family=Family.OPEN_CLIP)


def locate_mclip(spec: ModelSpec, model_path: str | os.PathLike | None = None) -> MCLIPFiles:
    """The files of `spec`: from the `model_path` folder where it has them, else from the Hub (cache)."""
    folder = Path(model_path).expanduser() if model_path else None
    if folder is not None and not folder.is_dir():
        raise ModelPathError(
            f'model_path {str(model_path)!r} is not a folder: for {spec.name} it must be a folder with the '
            f"checkpoint's {CONFIG_FILE}, {' or '.join(TEXT_WEIGHTS)} and tokenizer files"
        )

    def local(*names: str) -> Path | None:
        return next((folder / name for name in names if folder and (folder / name).is_file()), None)

    config = local(CONFIG_FILE) or fetch_hf_file(spec.name, CONFIG_FILE)
    weights = local(*TEXT_WEIGHTS) or fetch_hf_file(spec.name, TEXT_WEIGHTS[-1])
    base = read_json(config)['modelBase']
    local_base: Path | None = Path(base).expanduser()
    if local_base and not local_base.is_absolute():  # relative: beside the checkpoint's files, never the cwd
        local_base = folder / local_base if folder else None
    base_folder = local_base if local_base and (local_base / CONFIG_FILE).is_file() else hf_config_folder(base)
    return MCLIPFiles(config, weights, base_folder / CONFIG_FILE, local(*IMAGE_WEIGHTS) or _image_weights(spec))


def _image_weights(spec: ModelSpec) -> Path:
    if spec.tag is None:
        raise WeightsUnavailableError(
            f'{spec.name} pairs with {spec.arch}, which has no pretrained weights: put its open_clip weights '
            f'in the model_path folder as {IMAGE_WEIGHTS[0]} or {IMAGE_WEIGHTS[1]}'
        )
    return fetch_open_clip_weights(spec.arch, spec.tag)


class MCLIPTextTower(torch.nn.Module):
    """Token ids and attention mask in, image-space embeddings out."""

    def __init__(self, transformer: torch.nn.Module, hidden_size: int, dim: int):
        super().__init__()
        self.transformer = transformer
        # Named as in the checkpoint, so its state dict loads as it is.
        self.LinearTransformation = torch.nn.Linear(hidden_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.LinearTransformation((hidden * mask).sum(dim=1) / mask.sum(dim=1))


def create_mclip_text_tower(files: MCLIPFiles, *, attn_implementation: str | None = None) -> MCLIPTextTower:
    """The text tower with the checkpoint's weights loaded strictly, in eval mode.

    `attn_implementation='eager'` is for ONNX export, where every op must trace.
    """
    transformers = require('transformers', 'transformers')
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel
    mclip = read_json(files.config)
    config = AutoConfig.from_pretrained(str(files.base_config.parent))
    if config.hidden_size != mclip['transformerDimensions']:
        raise ConfigurationError(
            f'{files.base_config} describes a transformer of width {config.hidden_size}, but the M-CLIP checkpoint '
            f'{files.config} expects {mclip["transformerDimensions"]}: modelBase names the wrong model'
        )
    options = {'attn_implementation': attn_implementation} if attn_implementation else {}
    # The pooler is never used (mean pooling instead): not built, and dropped from the checkpoint.
    transformer = AutoModel.from_config(config, add_pooling_layer=False, **options)
    tower = MCLIPTextTower(transformer, config.hidden_size, mclip['numDims'])
    tower.load_state_dict(_checkpoint(files.weights, tower), strict=True)
    return tower.eval()


def _checkpoint(path: Path, tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict less the pooler and the constant buffers (position ids) that older
    `transformers` saved and newer ones recompute instead."""
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location='cpu', weights_only=True)
    recomputed = rebuilt_buffers(tower)
    return {
        key: value
        for key, value in state.items()
        if key not in recomputed and not key.startswith('transformer.pooler.')
    }


def pad_token_id(files: MCLIPFiles) -> int:
    """The id the transformer takes as padding (RoBERTa derives position ids from it)."""
    return int(read_json(files.base_config)['pad_token_id'])


class MCLIPBuilder(FamilyBuilder):
    """M-CLIP: its own `transformers` text tower, an open_clip model's image tower."""

    family = Family.MCLIP
    checkpoint = 'a folder with the M-CLIP checkpoint'
    checkpoint_is_folder = True
    variable_length_text = True
    scriptable = False  # a `transformers` module cannot be scripted

    def locate(self, spec: ModelSpec, model_path: str | os.PathLike | None) -> MCLIPFiles:
        return locate_mclip(spec, model_path)

    def files(self, source: MCLIPFiles) -> tuple[Path, ...]:
        return source.paths()

    def source_folder(self, source: MCLIPFiles) -> Path:
        """A local folder or a Hub snapshot: the checkpoint's tokenizer is beside its config."""
        return source.config.parent

    def tokenizer(self, spec: ModelSpec, folder: str | os.PathLike | None) -> Tokenizer:
        return HFTokenizer(tokenizer_folder(spec.name, folder))

    def towers(
        self,
        spec: ModelSpec,
        source: MCLIPFiles,
        *,
        device: str = 'cpu',
        dtype: DType = DType.FP32,
        for_export: bool = False,
    ) -> Towers:
        text = create_mclip_text_tower(source, attn_implementation='eager' if for_export else None)
        if text.LinearTransformation.out_features != spec.dim:
            raise ConfigurationError(
                f'the M-CLIP checkpoint {source.config} embeds into {text.LinearTransformation.out_features} '
                f'dimensions, but {spec.name} pairs with the {spec.dim}-d image tower of {spec.arch}'
            )
        image = create_open_clip_model(image_tower_spec(spec), source.image_weights, device=device, dtype=dtype)
        return Towers(text.to(device, TORCH_DTYPES[DType(dtype)]), image.visual, pad_token_id(source))
