"""Token rows as every runtime feeds them to a text tower: ids and an attention mask.

The preprocessor gives int64 [N, context] rows padded on the right, for every model. Two
rules turn them into a tower's inputs:
- CLIP's (no pad id): the rows go as they are; the mask covers each text up to its
  end-of-text token, the largest id (open_clip's towers find it themselves and ignore the mask).
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


def text_inputs(tokens: np.ndarray, pad_token_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) for a text tower, by the rule its pad id names (see above)."""
    if pad_token_id is None:
        return tokens, attention_mask(tokens)
    return trim_padding(tokens, pad_token_id)
