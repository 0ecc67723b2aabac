"""The `with:` parameters of a CLIPEncoder that decide which model it builds and how, read in one place.

The executor builds its model from them, and the benchmark reads a Flow YAML's `with:` through the
same class, so its in-process row builds the model the served Flow builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from clip_server.model.factory import EncoderOptions
from clip_server.model.registry import DEFAULT_MODEL
from clip_server.types import AUTO, MINIBATCH_SIZE


@dataclass(frozen=True)
class EncoderParameters:
    """Named as in the YAML; unset means the executor's default (a runtime that lacks one, such as
    `jit` on ONNX, never passes it)."""

    name: str = DEFAULT_MODEL
    model_path: str | None = None
    minibatch_size: int = MINIBATCH_SIZE
    device: str | None = None
    dtype: str | None = AUTO
    jit: bool = False
    intra_op_threads: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EncoderParameters:
        """Those of `params` (a `with:` mapping) this class names; the others are not the model's."""
        return cls(**{field.name: params[field.name] for field in fields(cls) if field.name in params})

    def encoder_options(self, default_threads: int) -> EncoderOptions:
        """What the factory builds the model with; `default_threads` unless `intra_op_threads` is set."""
        return EncoderOptions(
            model_path=self.model_path,
            device=self.device,
            dtype=self.dtype,
            jit=self.jit,
            threads=self.intra_op_threads or default_threads,
            max_batch=self.minibatch_size,
        )
