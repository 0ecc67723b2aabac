"""What every family builder provides, and the two towers it builds.

A family knows its checkpoint layout, its tokenizer and how to make its towers; it knows
nothing of runtimes. Runtimes take the towers as they are (PyTorch), or export them once
(ONNX, and TensorRT from the ONNX graphs).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_server.model.registry import ModelSpec
from clip_server.types import CLIP_SCORING, DType, Family, Scoring

# CLIP's text context; longer texts are cut, keeping the end-of-text token last.
CONTEXT_LENGTH = 77

# Turns texts into int64 [N, context] rows, right-padded.
Tokenizer = Callable[[list[str]], np.ndarray]


@dataclass
class Towers:
    """A model as two torch modules in eval mode.

    `text` takes (input_ids, attention_mask) as `clip_server.model.tokens.text_inputs` makes
    them for `pad_token_id` and `cut_at_end_of_text`; `image` takes pixels in the towers'
    dtype. Both return [N, dim].
    """

    text: torch.nn.Module
    image: torch.nn.Module
    pad_token_id: int | None = None
    # A causal text tower pooled at the end-of-text token takes rows cut after it (exact).
    cut_at_end_of_text: bool = False
    # How /rank scores matches: CLIP's softmax, or a sigmoid-trained model's own scale and bias.
    scoring: Scoring = CLIP_SCORING


class FamilyBuilder(ABC):
    """One family's way to find, tokenize and build a model."""

    family: Family
    # What `model_path` names for this family, and whether that is a folder.
    checkpoint = 'a PyTorch weights file'
    checkpoint_is_folder = False
    # Whether the text tower takes token rows of any length (padding cut per minibatch).
    variable_length_text = False
    # Whether `torch.jit.script` can compile its towers.
    scriptable = False

    @abstractmethod
    def locate(self, spec: ModelSpec, model_path: str | os.PathLike | None) -> Any:
        """The files to build from: `model_path` where given, else the pretrained ones (downloaded)."""

    @abstractmethod
    def tokenizer(self, spec: ModelSpec, folder: str | os.PathLike | None) -> Tokenizer:
        """The model's tokenizer; `folder` (a `model_path` folder) may hold its files."""

    @abstractmethod
    def towers(
        self, spec: ModelSpec, source: Any, *, device: str = 'cpu', dtype: DType = DType.FP32, for_export: bool = False
    ) -> Towers:
        """The towers with `source`'s weights; `for_export` picks ops every exporter can trace."""

    def files(self, source: Any) -> tuple[Path, ...]:
        """Every file `source` is read from (what a cached export depends on)."""
        return (Path(source),)

    def source_folder(self, source: Any) -> Path | None:
        """A folder of `source` that also holds the tokenizer's files, if it has one."""
        return None
