"""PyTorch runtime: an open_clip model behind a numpy-in, numpy-out interface.

`create_torch_model` is the runtime's entry point for every family of the registry: M-CLIP
models are built by `mclip_model` (imported only for them, as it needs `transformers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from clip_server.model.hf_text import hf_config_folder
from clip_server.model.registry import MCLIP, OPEN_CLIP, ModelSpec
from clip_server.model.weights import locate_weights

if TYPE_CHECKING:
    from clip_server.model.mclip_model import MCLIPModel

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def default_dtype(device: str) -> str:
    """Half precision pays off on a GPU; on a CPU it is slower and less exact."""
    return 'fp32' if device == 'cpu' else 'fp16'


def check_device(device: str) -> str:
    """Fail at start, not at the first request, when the device cannot be used."""
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f'device {device!r} is not a device name such as "cpu", "cuda" or "cuda:1"') from exc
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} was asked for, but CUDA is not available on this machine; use device: cpu')
    return device


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f'dtype {dtype!r} is not one of {", ".join(DTYPES)}')
    return dtype


def quick_gelu_for(spec: ModelSpec) -> bool:
    """The activation the weights were trained with; open_clip only warns when it is wrong."""
    import open_clip

    return bool(spec.tag and open_clip.get_pretrained_cfg(spec.arch, spec.tag).get('quick_gelu', False))


def create_open_clip_model(
    spec: ModelSpec, weights: str | os.PathLike | None, *, device: str = 'cpu', dtype: str = 'fp32'
) -> torch.nn.Module:
    """The open_clip module for `spec` in eval mode, with `weights` loaded (strictly) when given."""
    import open_clip

    if spec.family != OPEN_CLIP:
        raise ValueError(f'{spec.name} is an {spec.family} model, not an open_clip one')
    archive = weights is not None and is_torchscript_archive(weights)
    with _quiet_about_random_init() if archive else contextlib.nullcontext():
        model = open_clip.create_model(
            spec.arch,
            pretrained=str(Path(weights)) if weights and not archive else None,
            precision=check_dtype(dtype),
            device=check_device(device),
            force_quick_gelu=quick_gelu_for(spec),
            **_hf_text_overrides(spec.arch),
        )
    if archive:
        model.load_state_dict(_archive_state_dict(weights, model), strict=True)
    return model.eval()


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """OpenAI's own `.pt` files are TorchScript archives, which `torch.load(weights_only=True)` refuses."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') for name in archive.namelist())


def _archive_state_dict(path: str | os.PathLike, model: torch.nn.Module) -> dict:
    """The archive's weights, less the scalars OpenAI stored beside them and the buffers that
    the model rebuilds itself (a scripted module saves even its non-persistent ones)."""
    state = torch.jit.load(str(path), map_location='cpu').state_dict()
    for name in rebuilt_buffers(model) | {'input_resolution', 'context_length', 'vocab_size'}:
        state.pop(name, None)
    return state


def rebuilt_buffers(module: torch.nn.Module) -> set[str]:
    """Buffers the module computes itself (non-persistent): a checkpoint may still carry them,
    and a strict load would refuse them."""
    return {name for name, _ in module.named_buffers()} - set(module.state_dict())


@contextlib.contextmanager
def _quiet_about_random_init():
    """open_clip warns that the model is random; the archive's weights are loaded right after."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith('No pretrained weights loaded')

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _hf_text_overrides(arch: str) -> dict:
    """For a `transformers` text tower: its config from our cache (open_clip would have
    `transformers` fetch it into its own), and no base weights, as the checkpoint has them all."""
    import open_clip

    text_cfg = open_clip.get_model_config(arch)['text_cfg']
    if 'hf_model_name' not in text_cfg:
        return {}
    local = str(hf_config_folder(text_cfg['hf_model_name']))
    return {'text_cfg': {**text_cfg, 'hf_model_name': local, 'hf_model_pretrained': False}}


class OpenCLIPModel:
    """An open_clip CLIP model in inference mode.

    Inputs are token ids and normalised pixels as numpy arrays; outputs are float32
    embeddings straight from the model (not normalised).
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: str | os.PathLike | None,
        *,
        device: str = 'cpu',
        dtype: str = 'fp32',
        jit: bool = False,
    ):
        model = create_open_clip_model(spec, weights, device=device, dtype=dtype)
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self._model = torch.jit.script(model) if jit else model

    @torch.inference_mode()
    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self._embed(self._model.encode_text, torch.from_numpy(tokens).to(self.device))

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self._embed(self._model.encode_image, torch.from_numpy(pixels).to(self.device, self.dtype))

    @staticmethod
    def _embed(encode, batch: torch.Tensor) -> np.ndarray:
        return encode(batch).float().cpu().numpy()


def create_torch_model(
    spec: ModelSpec,
    model_path: str | os.PathLike | None = None,
    *,
    device: str = 'cpu',
    dtype: str = 'fp32',
    jit: bool = False,
) -> OpenCLIPModel | MCLIPModel:
    """The PyTorch model for `spec`, from `model_path` (a weights file; a folder for M-CLIP)
    or its pretrained files."""
    if spec.family != MCLIP:
        return OpenCLIPModel(spec, locate_weights(spec, model_path), device=device, dtype=dtype, jit=jit)
    from clip_server.model.mclip_model import MCLIPModel, locate_mclip

    if jit:
        raise ValueError(f'jit is not supported for {spec.name}: its transformers text tower cannot be scripted')
    return MCLIPModel(spec, locate_mclip(spec, model_path), device=device, dtype=dtype)
