"""PyTorch runtime: a family's towers run as they are, on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from clip_server.model.families.base import Towers
from clip_server.model.tokens import rows_rule, text_inputs
from clip_server.model.torch_utils import TORCH_DTYPES
from clip_server.types import Device, DType


class TorchEncoder:
    """Towers in inference mode behind the `Encoder` interface (`jit`: scripted first)."""

    def __init__(
        self,
        towers: Towers,
        *,
        dim: int,
        device: Device,
        dtype: DType,
        jit: bool = False,
        threads: int | None = None,
    ):
        if not device.is_cuda and threads:
            torch.set_num_threads(threads)
        self.dim, self.device, self.dtype = dim, device, dtype
        rows = rows_rule(towers.pad_token_id, towers.cut_at_end_of_text)
        self.description = f'{device} ({dtype}{", TorchScript" if jit else ""}, {rows})'
        self._device = torch.device(str(device))
        self._dtype = TORCH_DTYPES[dtype]
        self._pad_token_id = towers.pad_token_id
        self._cut_at_end_of_text = towers.cut_at_end_of_text
        self.scoring = towers.scoring
        self._text = torch.jit.script(towers.text) if jit else towers.text
        self._image = torch.jit.script(towers.image) if jit else towers.image

    @torch.inference_mode()
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        rows = text_inputs(tokens, self._pad_token_id, self._cut_at_end_of_text)
        ids, mask = (torch.from_numpy(array).to(self._device) for array in rows)
        return self._text(ids, mask).float().cpu().numpy()

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """`pixels` may also be a tensor already on the device (`DevicePixels`)."""
        return self._image(torch.as_tensor(pixels).to(self._device, self._dtype)).float().cpu().numpy()
