"""torch helpers shared by the family builders and the torch runtime."""

from __future__ import annotations

import torch

from clip_server.types import ConfigurationError, Device, DType, parse_device

TORCH_DTYPES = {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}


def default_device() -> Device:
    return parse_device('cuda' if torch.cuda.is_available() else 'cpu')


def usable_device(device: str | Device) -> Device:
    """The parsed device, refused at start (not at the first request) when CUDA is not there."""
    parsed = parse_device(device)
    if parsed.is_cuda and not torch.cuda.is_available():
        raise ConfigurationError(
            f'device {str(device)!r} was asked for, but CUDA is not available on this machine; use device: cpu'
        )
    return parsed


def rebuilt_buffers(module: torch.nn.Module) -> set[str]:
    """Buffers the module computes itself (non-persistent): a checkpoint may still carry them,
    and a strict load would refuse them."""
    return {name for name, _ in module.named_buffers()} - set(module.state_dict())
