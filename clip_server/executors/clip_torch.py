"""CLIPEncoder on PyTorch: `py_modules: [clip_server.executors.clip_torch]` in a Flow YAML."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import AUTO, ConfigurationError, Runtime


class CLIPEncoder(CLIPEncoderBase):
    """Serves a model with PyTorch, on CPU or CUDA.

    `device` defaults to CUDA when available; `dtype` to `auto`: fp16 on GPU, bf16 on a CPU
    with native bf16 (AMX-BF16 or AVX512-BF16: 2-4x faster than fp32, cosine >= 0.999 to it),
    else fp32; `jit` runs the towers as TorchScript (open_clip models only); `model_path` names
    a local weights file, so nothing is downloaded (for M-CLIP: a folder with its checkpoint's
    files, see `clip_server.model.families.mclip`). `decode_on_device` decodes and resizes JPEGs
    on the model's device (nvJPEG on a GPU: 8.1x the executor's images/s on an H200, pixels within
    0.13 of open_clip's; see `clip_server.model.device_pixels`); other images stay on the CPU.
    """

    runtime = Runtime.TORCH

    def __init__(
        self,
        device: str | None = None,
        jit: bool = False,
        dtype: str = AUTO,
        decode_on_device: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype, jit=jit)
        if decode_on_device:
            self._decode_jpegs_on_device()

    def _decode_jpegs_on_device(self) -> None:
        """Decode JPEGs where the model runs, warmed up as the model is before serving."""
        self.device_pixels = self.preprocessor.on_device(str(self.model.device))
        if self.device_pixels is None:
            raise ConfigurationError(
                f'decode_on_device does the plain image transform only (short side resized, then a center '
                f'crop); {self.spec.name} resizes otherwise: remove decode_on_device'
            )
        if not self.model.device.is_cuda:
            self.logger.warning('decode_on_device on a CPU is slower than the worker pool: it is meant for GPUs')
        blank = io.BytesIO()
        Image.new('RGB', (self.spec.image_size, self.spec.image_size)).save(blank, 'JPEG')
        # decode_on_device is PyTorch's alone: its encode_image takes a tensor on its device too
        self.model.encode_image(self.device_pixels([blank.getvalue()]))  # type: ignore[arg-type]
