"""An executor that answers like CLIPEncoder without running a model, for `clip_server.benchmark`.

Served behind the same gateway as the real Flow, it shows the most the gateway, gRPC and
clip_client can carry on this machine: the ceiling that no model, however fast, can pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from docarray import DocumentArray
from jina import Executor, requests

from clip_server.executors.documents import drop_image_content


class BenchmarkNoopEncoder(Executor):
    """Gives every document the same `dim`-d embedding, and drops image content as CLIPEncoder does."""

    def __init__(self, dim: int = 512, **kwargs: Any):
        super().__init__(**kwargs)
        self._embedding = np.full(dim, dim**-0.5, dtype=np.float32)

    @requests
    def encode(self, docs: DocumentArray, parameters: dict, **kwargs: Any) -> DocumentArray:
        for doc in docs:
            doc.embedding = self._embedding
        if parameters.get('drop_image_content', False):
            drop_image_content(list(docs))
        return docs
