"""CLIPEncoder on OpenVINO: `py_modules: [clip_server.executors.clip_openvino]` in a Flow YAML."""

from __future__ import annotations

from typing import Any

from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.types import AUTO, Runtime


class CLIPEncoder(CLIPEncoderBase):
    """Serves a CLIP model with OpenVINO's CPU plugin, on CPU only.

    `model_path` takes what the ONNX runtime takes: a folder holding `textual.onnx` and
    `visual.onnx` (served as is), or PyTorch weights (exported; the export is cached).
    `dtype`: `auto` (default) is bf16 on a CPU with native bf16 instructions, else fp32;
    `int8` quantizes the export with NNCF at first start (cached), the fastest on CPU (see
    docs/benchmark.md for its speed and accuracy). `intra_op_threads` defaults to this
    replica's share of the CPU cores.
    """

    runtime = Runtime.OPENVINO

    def __init__(
        self,
        device: str | None = None,
        dtype: str = AUTO,
        intra_op_threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.build_model(device=device, dtype=dtype, intra_op_threads=intra_op_threads)
