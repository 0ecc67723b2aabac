"""CLIPEncoder on PyTorch: `py_modules: [clip_server.executors.clip_torch]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import Runtime


class CLIPEncoder(CLIPEncoderBase):
    """Serves a model with PyTorch, on CPU or CUDA.

    `device` defaults to CUDA when available; `dtype` to fp32 on CPU and fp16 on GPU; `jit`
    runs the towers as TorchScript (open_clip models only); `model_path` names a local weights
    file, so nothing is downloaded (for M-CLIP: a folder with its checkpoint's files, see
    `clip_server.model.families.mclip`).
    """

    runtime = Runtime.TORCH

    def __init__(
        self,
        device: str | None = None,
        jit: bool = False,
        dtype: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype, jit=jit)
