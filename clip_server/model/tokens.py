"""Token rows as every runtime feeds them to a text tower: ids and an attention mask.

The preprocessor gives int64 [N, context] rows padded on the right, for every model. Three
rules turn them into a tower's inputs:
- CLIP's (no pad id): the mask covers each text up to its end-of-text token, the largest id
  (open_clip's towers find it themselves and ignore the mask). The rows go as they are, or,
  for a causal tower pooled at that token, cut after the minibatch's last end-of-text token:
  no position attends to a later one, so the cut-off padding never changed the embedding,
  and a batch of short texts costs a fraction of 77 tokens' work.
- a `transformers` tower's (a pad id): each minibatch is cut to its longest real row and
  masked by the pad id, which is what padding to the longest text computes.

numpy only: no torch, no runtime.
"""

from __future__ import annotations

import numpy as np


def attention_mask(tokens: np.ndarray) -> np.ndarray:
    """1 up to and including each row's end-of-text token (its largest id), 0 on the padding after it.

    Not `tokens != 0`: id 0 is '!' in CLIP's vocabulary, and padding is 0 too.
    """
    return np.arange(tokens.shape[1]) <= tokens.argmax(axis=1)[:, None]


def trim_padding(tokens: np.ndarray, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded rows cut to the longest real row of the batch, and their attention mask.

    A row's real part runs up to its last non-pad id (so a literal pad token inside a text
    stays real); running the transformer on exactly this is padding to the longest text.
    """
    real = tokens != pad_token_id
    lengths = np.where(real.any(axis=1), tokens.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
    width = max(int(lengths.max(initial=0)), 1)
    mask = np.arange(width) < lengths[:, None]
    return np.ascontiguousarray(tokens[:, :width]), mask.astype(np.int64)


def cut_after_end_of_text(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CLIP rows cut after the last end-of-text token of the batch, and their attention mask."""
    width = int(tokens.argmax(axis=1).max(initial=0)) + 1
    short = np.ascontiguousarray(tokens[:, :width])
    return short, attention_mask(short)


def text_inputs(
    tokens: np.ndarray, pad_token_id: int | None, cut_at_end_of_text: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) for a text tower, by the rule its pad id names (see above)."""
    if pad_token_id is not None:
        return trim_padding(tokens, pad_token_id)
    if cut_at_end_of_text:
        return cut_after_end_of_text(tokens)
    return tokens, attention_mask(tokens)


def rows_rule(pad_token_id: int | None, cut_at_end_of_text: bool) -> str:
    """How a tower's text rows are sized, in words for the start-up log."""
    if pad_token_id is not None or cut_at_end_of_text:
        return 'texts sized to each batch'
    return 'texts at full context'
