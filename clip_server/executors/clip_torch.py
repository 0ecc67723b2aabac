"""CLIPEncoder on PyTorch: `py_modules: [clip_server.executors.clip_torch]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import AUTO, Runtime


class CLIPEncoder(CLIPEncoderBase):
    """Serves a model with PyTorch, on CPU or CUDA.

    `device` defaults to CUDA when available; `dtype` to `auto`: fp16 on GPU, bf16 on a CPU
    with native bf16 (AMX-BF16 or AVX512-BF16: 2-4x faster than fp32, cosine >= 0.999 to it),
    else fp32; `jit` runs the towers as TorchScript (open_clip models only); `model_path` names
    a local weights file, so nothing is downloaded (for M-CLIP: a folder with its checkpoint's
    files, see `clip_server.model.families.mclip`).
    """

    runtime = Runtime.TORCH

    def __init__(
        self,
        device: str | None = None,
        jit: bool = False,
        dtype: str = AUTO,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype, jit=jit)
