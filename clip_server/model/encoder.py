"""The one interface every runtime gives the executors: numpy in, float32 embeddings out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from clip_server.types import Device, DType, Scoring


@runtime_checkable
class Encoder(Protocol):
    """A loaded model on one runtime. Embeddings are [N, dim] float32, not normalised."""

    dim: int
    dtype: DType
    device: Device
    # Where it runs, for the start-up log: "cpu", "TensorRT on cuda:0", onnxruntime's providers...
    description: str
    # How /rank scores this model's matches.
    scoring: Scoring

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int64 [N, context] right-padded token rows, as the model's preprocessor makes them."""
        ...

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, 3, S, S] normalised pixels, as the model's preprocessor makes them."""
        ...
