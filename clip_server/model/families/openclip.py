"""The open_clip family: CLIP models built by open_clip, with its BPE tokenizer.

Weights are a single file (an open_clip state dict, or OpenAI's TorchScript archive);
see `clip_server.model.weights` for where it comes from.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import regex
import torch

from clip_server.model.families.base import CONTEXT_LENGTH, FamilyBuilder, Tokenizer, Towers
from clip_server.model.families.hf_tokenizer import open_clip_hf_tokenizer
from clip_server.model.quiet import without_log
from clip_server.model.registry import ModelSpec
from clip_server.model.torch_utils import rebuilt_buffers
from clip_server.model.weights import locate_weights
from clip_server.types import CLIP_SCORING, DType, Family, Scoring

# open_clip's models are nn.Modules whose towers and methods torch's typing cannot see: typed loosely
OpenCLIPModel = Any

# CLIP's BPE is quadratic in a word's length (open_clip takes 7 s for 20,000 letters without a
# space, 88 s for 100,000), and only the first 77 tokens count. So a text is tokenized as far as
# those need, within bounds: each run of letters (or of punctuation) cut at RUN_CHARS, and the
# text cut after TEXT_RUNS runs or TEXT_CHARS characters in runs. A token spans at most 32
# characters (CLIP's longest), so 77 tokens span at most 2,464: the bounds leave twice that, and
# four runs per token. The tokens stay open_clip's own for every text without a run over
# RUN_CHARS (cleaning, which can shorten HTML entities, aside; CJK text takes 2.5 to 2.9 tokens a
# character, so 64 characters hold its 77); a document's tokenizing costs at most some
# milliseconds. The Hub tokenizers (SigLIP's, XLM-R's, M-CLIP's) are linear and get whole texts:
# their pieces can span several CJK characters, which such a cut would change.
RUN_CHARS = 64
TEXT_RUNS = 77 * 4
TEXT_CHARS = 77 * 32 * 2
_RUN = regex.compile(r'[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+')


def tokenized_part(text: str) -> str:
    """The part of `text` its first 77 tokens come from (see RUN_CHARS), its spacing kept."""
    if len(text) <= RUN_CHARS:
        return text
    kept, end, chars = [], 0, 0
    for count, run in enumerate(_RUN.finditer(text), start=1):
        kept.append(text[end : run.start()] + run.group()[:RUN_CHARS])
        end, chars = run.end(), chars + min(len(run.group()), RUN_CHARS)
        if count == TEXT_RUNS or chars >= TEXT_CHARS:
            break
    return ''.join(kept)


def quick_gelu_for(spec: ModelSpec) -> bool:
    """The activation the weights were trained with; open_clip only warns when it is wrong."""
    import open_clip

    return bool(spec.tag and open_clip.get_pretrained_cfg(spec.arch, spec.tag).get('quick_gelu', False))


def create_open_clip_model(
    spec: ModelSpec,
    weights: str | os.PathLike | None,
    *,
    device: str = 'cpu',
    dtype: DType = DType.FP32,
    **overrides,
) -> OpenCLIPModel:
    """The open_clip module for `spec` in eval mode, with `weights` loaded (strictly) when given.

    `overrides` go to `open_clip.create_model` (a family's own text config, say). `device` is
    taken as given: the factory has checked it.
    """
    import open_clip

    archive = weights is not None and is_torchscript_archive(weights)
    # open_clip warns that the model is random; the archive's weights are loaded right after
    with without_log('No pretrained weights loaded') if archive else contextlib.nullcontext():
        model = open_clip.create_model(
            spec.arch,
            pretrained=str(Path(weights)) if weights and not archive else None,
            precision=DType(dtype).value,
            device=device,
            force_quick_gelu=quick_gelu_for(spec),
            **overrides,
        )
    if archive and weights is not None:
        model.load_state_dict(_archive_state_dict(weights, model), strict=True)
    return model.eval()


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """OpenAI's own `.pt` files are TorchScript archives, which `torch.load(weights_only=True)` refuses."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') for name in archive.namelist())


def _archive_state_dict(path: str | os.PathLike, model: torch.nn.Module) -> dict:
    """The archive's weights, less the scalars OpenAI stored beside them and the buffers that
    the model rebuilds itself (a scripted module saves even its non-persistent ones)."""
    state = torch.jit.load(str(path), map_location='cpu').state_dict()
    for name in rebuilt_buffers(model) | {'input_resolution', 'context_length', 'vocab_size'}:
        state.pop(name, None)
    return state


class OpenCLIPText(torch.nn.Module):
    """open_clip's text encoder under the towers' (input_ids, attention_mask) signature.

    The mask is not needed: open_clip pools at the end-of-text token (the largest id), and
    its `transformers` towers mask by their pad id themselves.
    """

    def __init__(self, model: OpenCLIPModel):
        super().__init__()
        self.model: OpenCLIPModel = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, normalize=False)  # CoCa would normalise by default


class CoCaImage(torch.nn.Module):
    """CoCa's image embedding: its `visual` also returns the tokens its captioning decoder reads."""

    def __init__(self, model: OpenCLIPModel):
        super().__init__()
        self.model: OpenCLIPModel = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)


class _Project(torch.nn.Module):
    """A bare projection matrix as a module, so the tower has one type whatever open_clip stores."""

    def __init__(self, weight: torch.nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class EndOfTextText(torch.nn.Module):
    """open_clip's causal text encoder on rows of any length up to its context (see `causal_text_parts`).

    The same computation as open_clip's `encode_text`, with the positional embedding and the
    causal mask cut to the rows' length: position i attends to positions <= i only, and the
    embedding is read at the end-of-text token, so padding after the batch's last end-of-text
    token never changed it.
    """

    def __init__(self, parts: OpenCLIPModel):
        super().__init__()
        self.token_embedding: OpenCLIPModel = parts.token_embedding
        self.positional_embedding: OpenCLIPModel = parts.positional_embedding
        self.transformer: OpenCLIPModel = parts.transformer
        self.ln_final: OpenCLIPModel = parts.ln_final
        self.causal_mask: torch.Tensor
        self.register_buffer('causal_mask', parts.attn_mask, persistent=False)
        self.projection: torch.nn.Module
        projection = parts.text_projection
        if projection is None:
            self.projection = torch.nn.Identity()
        else:
            self.projection = projection if isinstance(projection, torch.nn.Module) else _Project(projection)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length, cast_dtype = input_ids.shape[1], self.transformer.get_cast_dtype()
        x = self.token_embedding(input_ids).to(cast_dtype)
        x = x + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.causal_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        return self.projection(x)


def causal_text_parts(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module holding `model`'s text encoder, when cutting rows is exact.

    Exact for a causal mask, pooling at the end-of-text token (`argmax`: CLIP's BPE gives it
    the largest id), no class token and no padding mask; anything else (SigLIP's bidirectional
    towers pooled at the last position, CoCa's class token) keeps fixed-length rows.
    """
    parts = getattr(model, 'text', model)  # CustomTextCLIP keeps a TextTransformer; CLIP holds the parts
    pool_type = getattr(parts, 'text_pool_type', getattr(parts, 'pool_type', None))
    exact = (
        getattr(parts, 'attn_mask', None) is not None
        and pool_type == 'argmax'
        and getattr(parts, 'cls_emb', None) is None
        and not getattr(parts, 'use_pad_mask', False)
        and all(hasattr(parts, name) for name in ('token_embedding', 'positional_embedding', 'ln_final'))
    )
    return parts if exact else None


class OpenCLIPBuilder(FamilyBuilder):
    family = Family.OPEN_CLIP
    scriptable = True

    def locate(self, spec: ModelSpec, model_path: str | os.PathLike | None) -> Path:
        return locate_weights(spec, model_path)

    def tokenizer(self, spec: ModelSpec, folder: str | os.PathLike | None) -> Tokenizer:
        """The model's own tokenizer at its own context length: CLIP's BPE at 77 tokens, or the Hub
        tokenizer its config names (SigLIP's and SigLIP2's, 64 tokens), from this server's cache."""
        import open_clip

        text_cfg = open_clip.get_model_config(spec.arch)['text_cfg']
        context_length = text_cfg.get('context_length', CONTEXT_LENGTH)
        if text_cfg.get('hf_tokenizer_name'):
            return open_clip_hf_tokenizer(text_cfg, folder, context_length)
        bpe = open_clip.get_tokenizer(spec.arch, context_length=context_length)

        def bounded_bpe(texts: list[str]) -> np.ndarray:
            """CLIP's BPE on the part of each text its tokens come from (`tokenized_part`)."""
            return bpe([tokenized_part(text) for text in texts])

        return bounded_bpe

    def create_model(
        self, spec: ModelSpec, weights: str | os.PathLike | None, *, device: str = 'cpu', dtype: DType = DType.FP32
    ) -> torch.nn.Module:
        """The whole open_clip module (both towers in one), as open_clip builds it."""
        return create_open_clip_model(spec, weights, device=device, dtype=dtype)

    def towers(
        self,
        spec: ModelSpec,
        source: Path | None,
        *,
        device: str = 'cpu',
        dtype: DType = DType.FP32,
        for_export: bool = False,
    ) -> Towers:
        import open_clip

        model: OpenCLIPModel = for_inference(self.create_model(spec, source, device=device, dtype=dtype))
        image = CoCaImage(model) if isinstance(model, open_clip.CoCa) else model.visual
        causal = causal_text_parts(model)
        if causal is None:
            return Towers(OpenCLIPText(model), image, scoring=scoring_of(model))
        return Towers(EndOfTextText(causal), image, cut_at_end_of_text=True, scoring=scoring_of(model))


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its train-time branches folded for inference, where it has any: MobileCLIP's
    MobileOne and FastViT blocks (timm's re-parameterisation; the same output, fewer and cheaper
    layers). Other models come back as they are."""
    from timm.models import reparameterize_model

    return reparameterize_model(model, inplace=True)


def scoring_of(model: OpenCLIPModel) -> Scoring:
    """A sigmoid-trained model (one with a learned `logit_bias`) scores with its own scale and bias;
    CLIP-trained models keep CLIP's softmax over 100 x cosine."""
    bias = getattr(model, 'logit_bias', None)
    if bias is None:
        return CLIP_SCORING
    return Scoring(scale=float(model.logit_scale.detach().exp()), bias=float(bias.detach()))
