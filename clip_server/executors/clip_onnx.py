"""CLIPEncoder on ONNX Runtime: `py_modules: [clip_server.executors.clip_onnx]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import AUTO, Runtime


class CLIPEncoder(CLIPEncoderBase):
    """Serves a CLIP model with onnxruntime, on CPU or CUDA.

    `model_path`: a folder holding `textual.onnx` and `visual.onnx` is served as is (a
    custom model; `name` still picks its tokenizer and image preprocessing); a file is
    taken as PyTorch weights and exported; unset, the pretrained weights are exported.
    Exports are cached, so only the first start pays for them.
    `device` defaults to CUDA when both a GPU and onnxruntime's CUDA provider are there;
    CUDA without that provider is served on CPU, with a loud warning.
    `dtype` (of exports): `auto` (default) is fp16 on GPU and fp32 on CPU; `int8` quantizes
    the export (CPU only, about 2x faster, see docs/benchmark.md for its accuracy); fp16 on
    CPU is refused, as onnxruntime's CPU provider lacks fp16 kernels. A custom folder runs
    in the precision it was saved in, so serve an fp16 folder on CUDA only.
    `intra_op_threads` defaults to this replica's share of the CPU cores.
    """

    runtime = Runtime.ONNX

    def __init__(
        self,
        device: str | None = None,
        dtype: str = AUTO,
        intra_op_threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype, intra_op_threads=intra_op_threads)
