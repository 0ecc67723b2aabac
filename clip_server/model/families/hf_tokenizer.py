"""The Hugging Face tokenizers of open_clip models, from this server's cache.

open_clip would have `transformers` fetch a tokenizer by Hub name into its own cache; here the
files come through `clip_server.model.weights` (the cache, offline rules and error messages of
every other download), then open_clip's own wrapper loads them from that folder. Used by the
transformers-text family (XLM-R, RoBERTa towers), by SigLIP-style open_clip models (their own
text tower with a Hub tokenizer) and by M-CLIP.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from clip_server.model import cache
from clip_server.model.families.base import Tokenizer
from clip_server.model.weights import fetch_hf_file
from clip_server.types import WeightsUnavailableError, require

TOKENIZER_FILE = 'tokenizer.json'
CONFIG_FILE = 'config.json'
# Besides tokenizer.json (the whole fast tokenizer), what AutoTokenizer reads when a repo has it:
# the special tokens' names and the tokenizer class, or else the model type in config.json.
TOKENIZER_EXTRAS = ('tokenizer_config.json', 'special_tokens_map.json', CONFIG_FILE)


def optional_hf_file(repo_id: str, filename: str) -> Path | None:
    """`fetch_hf_file`, or None when the Hub says the repo has no such file.

    The Hub's answer is remembered in the cache (a `.no_exist` marker), so this works
    offline too; a file merely not cached yet still fails, as it must.
    """
    try:
        return fetch_hf_file(repo_id, filename)
    except WeightsUnavailableError:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache.root())
        if cached is not None and not isinstance(cached, str):  # huggingface_hub's "known absent" marker
            return None
        raise


def tokenizer_folder(repo_id: str, local: str | os.PathLike | None = None) -> Path:
    """A folder AutoTokenizer can load offline: `local` if it holds tokenizer.json, else the
    repo's cached snapshot, with the tokenizer files fetched into it first."""
    if local is not None and (Path(local) / TOKENIZER_FILE).is_file():
        return Path(local)
    folder = fetch_hf_file(repo_id, TOKENIZER_FILE).parent
    for filename in TOKENIZER_EXTRAS:
        optional_hf_file(repo_id, filename)  # cached beside tokenizer.json: one snapshot per revision
    return folder


def open_clip_hf_tokenizer(text_cfg: dict, folder: str | os.PathLike | None, context_length: int) -> Tokenizer:
    """open_clip's wrapper (its text cleaning and options) around the tokenizer its config names."""
    import open_clip

    require('transformers', 'transformers')
    return open_clip.tokenizer.HFTokenizer(
        str(tokenizer_folder(text_cfg['hf_tokenizer_name'], folder)),
        context_length=context_length,
        tokenizer_mode=text_cfg.get('tokenizer_mode'),
        **text_cfg.get('tokenizer_kwargs', {}),
    )
