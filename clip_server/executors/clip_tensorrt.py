"""CLIPEncoder on TensorRT: `py_modules: [clip_server.executors.clip_tensorrt]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

from clip_server.executors.advice import OTHER_RUNTIMES, advising
from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import AUTO, Runtime, RuntimeUnavailableError


class CLIPEncoder(CLIPEncoderBase):
    """Serves a CLIP model through TensorRT engines on an NVIDIA GPU.

    Engines are compiled from the model's ONNX export (`model_path` takes what the ONNX
    runtime takes: an export folder or PyTorch weights) at first start, then reused from the
    cache for the same model, GPU and TensorRT version. `dtype` is fp16 (`auto`, the default;
    LayerNorm and reductions stay fp32) or fp32. Engines accept up to `minibatch_size` rows.
    """

    runtime = Runtime.TENSORRT

    def __init__(
        self,
        device: str = 'cuda',
        dtype: str = AUTO,
        **kwargs: Any,
    ):
        with advising(RuntimeUnavailableError, OTHER_RUNTIMES):  # no tensorrt package or GPU here
            super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype)
