"""CLIPEncoder on PyTorch: `py_modules: [clip_server.executors.clip_torch]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

import torch

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.model.openclip_model import create_torch_model, default_device, default_dtype


class CLIPEncoder(CLIPEncoderBase):
    """Serves an open_clip model with PyTorch, on CPU or CUDA.

    `device` defaults to CUDA when available; `dtype` to fp32 on CPU and fp16 on GPU;
    `model_path` names a local weights file, so nothing is downloaded (for M-CLIP: a folder
    with its checkpoint's files, see `clip_server.model.mclip_model`).
    """

    def __init__(
        self,
        device: str | None = None,
        jit: bool = False,
        dtype: str | None = None,
        model_path: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(model_path=model_path, **kwargs)
        device = device or default_device()
        if device == 'cpu':
            torch.set_num_threads(self.cpu_threads())
        self.model = create_torch_model(
            self.spec,
            model_path,
            device=device,
            dtype=dtype or default_dtype(device),
            jit=jit,
        )
        self.logger.info(f'{self.spec.name} ready on {device} ({self.model.dtype}), {self.spec.dim}-d embeddings')
