"""CLIPEncoder on TensorRT: `py_modules: [clip_server.executors.clip_tensorrt]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

import torch

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.model.onnx_export import onnx_model_dir
from clip_server.model.registry import DEFAULT_MODEL, MCLIP, resolve
from clip_server.model.tensorrt_model import TensorRTModel, cached_engines, require_tensorrt


class CLIPEncoder(CLIPEncoderBase):
    """Serves a CLIP model through TensorRT engines on an NVIDIA GPU.

    Engines are compiled from the model's ONNX export (`model_path` takes what the ONNX
    runtime takes: an export folder or PyTorch weights) at first start, then reused from the
    cache for the same model, GPU and TensorRT version. `dtype` is fp16 (default; LayerNorm
    and reductions stay fp32) or fp32. Engines accept up to `minibatch_size` rows.
    """

    def __init__(
        self,
        device: str = 'cuda',
        dtype: str = 'fp16',
        model_path: str | None = None,
        **kwargs: Any,
    ):
        require_tensorrt()  # before any download or export: fail fast where TensorRT cannot run
        name = kwargs.get('name', DEFAULT_MODEL)
        if resolve(name).family == MCLIP:  # before the base class fetches its tokenizer
            raise NotImplementedError(
                f'{name}: M-CLIP text towers take texts of any length, which these engines do not; '
                'serve it with PyTorch or ONNX'
            )
        super().__init__(model_path=model_path, **kwargs)
        if dtype not in ('fp16', 'fp32'):
            raise ValueError(f'dtype {dtype!r} is not one of fp16, fp32 for TensorRT')
        torch.cuda.set_device(torch.device(device))
        engines = cached_engines(
            self.spec,
            onnx_model_dir(self.spec, model_path, dtype='fp32'),
            fp16=dtype == 'fp16',
            max_batch=self.minibatch_size,
        )
        self.model = TensorRTModel(engines, device)
        self.logger.info(f'{self.spec.name} ready on TensorRT ({dtype}), {self.spec.dim}-d embeddings')
