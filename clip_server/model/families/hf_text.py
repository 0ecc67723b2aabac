"""The HF-text family (open_clip models with a `transformers` text tower), and the Hub files
and tokenizers of every `transformers` text tower.

Two kinds of models use a `transformers` text tower: M-CLIP (see `families.mclip`) and open_clip's
own HF-text-tower architectures (`roberta-ViT-B-32`, `xlm-roberta-*`). Their tokenizer and
transformer config come from a Hub repo; they are fetched here with `fetch_hf_file`, so they
land in the server's cache, honour HF_HUB_OFFLINE and fail with an error naming the file,
instead of `transformers` reaching for its own cache and the network.

Token ids travel as int64 [N, 77] rows padded on the right with the tokenizer's pad id, the
same shape as CLIP's, so the request pipeline stays one for every model. `transformers` is
only imported when a tokenizer or a model is built (its extra: `clip-server[transformers]`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from clip_server.model.families.base import CONTEXT_LENGTH, Tokenizer
from clip_server.model.families.hf_tokenizer import CONFIG_FILE, open_clip_hf_tokenizer
from clip_server.model.families.openclip import OpenCLIPBuilder, create_open_clip_model
from clip_server.model.registry import ModelSpec
from clip_server.model.weights import fetch_hf_file
from clip_server.types import ConfigurationError, DType, Family, require


def hf_config_folder(repo_id: str) -> Path:
    """The cached snapshot folder holding the repo's config.json (what AutoConfig reads)."""
    return fetch_hf_file(repo_id, CONFIG_FILE).parent


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding='utf-8'))


class HFTokenizer:
    """A Hugging Face tokenizer giving int64 [N, 77] ids: cut at 77 tokens (specials kept),
    right-padded with its pad id, which `trim_padding` takes off per minibatch."""

    def __init__(self, folder: str | os.PathLike, context_length: int = CONTEXT_LENGTH):
        transformers = require('transformers', 'transformers')
        with _quiet('transformers.configuration_utils'):
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        if self._tokenizer.pad_token_id is None:
            raise ConfigurationError(f'the tokenizer in {folder} has no pad token, which batching needs')
        self.pad_token_id: int = self._tokenizer.pad_token_id
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self._tokenizer(
            texts,
            padding='max_length',
            truncation=True,
            max_length=self.context_length,
            return_tensors='np',
        )['input_ids'].astype(np.int64)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """M-CLIP's config.json sits beside its tokenizer with a model type `transformers` does not
    know; AutoTokenizer reads it and warns of errors that cannot happen for a tokenizer."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class HFTextBuilder(OpenCLIPBuilder):
    """open_clip models whose text tower is a `transformers` model: open_clip builds them, with
    the tower's config and tokenizer taken from our cache instead of `transformers`' own."""

    family = Family.HF_TEXT
    scriptable = False  # a `transformers` module cannot be scripted

    def tokenizer(self, spec: ModelSpec, folder: str | os.PathLike | None) -> Tokenizer:
        import open_clip

        return open_clip_hf_tokenizer(open_clip.get_model_config(spec.arch)['text_cfg'], folder, CONTEXT_LENGTH)

    def create_model(
        self, spec: ModelSpec, weights: str | os.PathLike | None, *, device: str = 'cpu', dtype: DType = DType.FP32
    ) -> torch.nn.Module:
        """Its config from our cache (open_clip would have `transformers` fetch it into its own),
        and no base weights, as the checkpoint has them all."""
        import open_clip

        require('transformers', 'transformers')
        text_cfg = open_clip.get_model_config(spec.arch)['text_cfg']
        local = str(hf_config_folder(text_cfg['hf_model_name']))
        text_cfg = {**text_cfg, 'hf_model_name': local, 'hf_model_pretrained': False}
        return create_open_clip_model(spec, weights, device=device, dtype=dtype, text_cfg=text_cfg)
