"""JPEGs decoded and resized on the model's device, for a GPU that Pillow cannot keep busy.

On an H200, ViT-B-32 in fp16 encodes about 5,400 images/s while Pillow and the model's transform
on 16 CPU threads prepare about 830/s; nvJPEG (`torchvision.io.decode_jpeg` on CUDA) with torch's
antialiased resize prepares about 7,000/s, and the executor with `decode_on_device` encodes 3,064
photos/s instead of 376 (docs/benchmark.md, "On a GPU"). The pixels are not Pillow's: after
normalisation they differ by up to 0.073 on 640x480 photos and 0.128 on a 97x61 picture (nvJPEG's
chroma upsampling, magnified by the upscale); the embeddings' lowest cosine to the CPU path's is
0.99999. So this is an option (`decode_on_device`), not the default.

Only the plain transform is done here: the short side resized to S, a center crop of S x S,
ToTensor and Normalize (open_clip's `resize_mode: shortest`, every model's default). Any other
transform returns no `DevicePixels`, and images stay on the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class DevicePixels:
    """float32 [N, 3, S, S] pixels on `device` from N JPEG files, as the model's transform makes them."""

    def __init__(self, size: int, interpolation, mean: Sequence[float], std: Sequence[float], device: str):
        self.size, self.interpolation, self.device = size, interpolation, torch.device(device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def of_transform(
        cls, pil_steps: list, mean: Sequence[float], std: Sequence[float], device: str
    ) -> DevicePixels | None:
        """The device version of a transform's PIL steps (then ToTensor, Normalize(mean, std)), if
        they are a short-side resize, a square center crop and mode conversions; else None."""
        from open_clip.transform import MaybeConvertMode
        from torchvision.transforms import CenterCrop, Resize

        kinds = [type(step) for step in pil_steps if not isinstance(step, MaybeConvertMode)]
        if kinds != [Resize, CenterCrop]:
            return None
        resize, crop = (step for step in pil_steps if isinstance(step, (Resize, CenterCrop)))
        sizes = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        if len(sizes) != 1 or resize.max_size is not None or tuple(crop.size) != (sizes[0], sizes[0]):
            return None
        return cls(sizes[0], resize.interpolation, mean, std, device)

    def batch(self, items: Sequence[bytes | np.ndarray]) -> torch.Tensor:
        """One minibatch's model input on the device, in order: JPEG files (bytes) decoded here
        together, pixels made elsewhere (arrays) moved here. RuntimeError if a file is broken."""
        files = [item for item in items if isinstance(item, bytes)]
        decoded = iter(self(files)) if files else iter(())
        return torch.stack(
            [next(decoded) if isinstance(item, bytes) else torch.from_numpy(item).to(self.device) for item in items]
        )

    @torch.inference_mode()
    def __call__(self, jpegs: Sequence[bytes]) -> torch.Tensor:
        """Decode the files in one call; raises RuntimeError if any of them cannot be decoded."""
        # torchvision 0.29 (pinned beside torch) deprecates its image decoding for TorchCodec, which the
        # pinned stack does not install: this decoder stays until the pins move
        from torchvision.io import ImageReadMode, decode_jpeg

        files = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]
        images = decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device)
        crops = [resized_center_crop(image, self.size, self.interpolation) for image in images]
        batch = torch.stack(crops).to(torch.float32).div_(255)
        return (batch - self._mean) / self._std


def resized_center_crop(image: torch.Tensor, size: int, interpolation) -> torch.Tensor:
    """uint8 [C, H, W]: the short side resized to `size` (antialiased), then the center `size` x `size`.

    On the CPU, torch resizes uint8 channels-last images (an HxWxC array's view) in a
    single-threaded kernel of its own, 6x faster than Pillow's for 640x480 photos (docs/benchmark.md).
    """
    from torchvision.transforms.v2 import functional

    resized = functional.resize(image, [size], interpolation=interpolation, antialias=True)
    return functional.center_crop(resized, [size, size])
