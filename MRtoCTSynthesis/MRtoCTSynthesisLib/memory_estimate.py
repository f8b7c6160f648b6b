"""The memory a synthesis needs, estimated before anything that depends on the input's geometry or the model's
metadata is allocated, so that an absurd combination is refused with its numbers instead of ending in an allocator
error or a swapping machine (issue 20).

    volume  = slices x h x w x 4 bytes x (3 + maps)   normalised slices, output, each quality map, restored volume
    network = batch x H x W x 4 bytes x (FLOATS_PER_NGF x ngf + MIND_FLOATS if maps)   on the H x W canvas

FLOATS_PER_NGF: the peak extra memory of one no-grad forward pass, measured on a CPU at 512^2 and 1024^2 canvases,
is 3.6-3.8 floats per pixel per unit of generator width for the ResNet (9 blocks) and 8.5-10.8 for the U-Net (its
skips stay alive); 12 covers both. On a CUDA device the network part is compared with the GPU's free memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .volume_checks import VolumeError, available_memory_bytes

FLOATS_PER_NGF = 12
MIND_FLOATS = 64          # the two MIND descriptors of the structure map and their intermediates, per pixel
DEFAULT_NGF = 64          # a network description without a width: assume the papers' generator


@dataclass(frozen=True)
class MemoryEstimate:
    volume_bytes: int
    network_bytes: int

    @property
    def total(self) -> int:
        return self.volume_bytes + self.network_bytes


def estimate(slices_shape: Sequence[int], canvas: Sequence[int], batch: int, ngf: int, maps: int) -> MemoryEstimate:
    """Bytes for ``slices_shape`` (count, h, w) slices put through a generator of width ``ngf`` on a ``canvas``
    (H, W), ``batch`` slices at a time, with ``maps`` quality maps."""
    count, h, w = (int(n) for n in slices_shape)
    volume = count * h * w * 4 * (3 + maps)
    network = batch * int(canvas[0]) * int(canvas[1]) * 4 * (FLOATS_PER_NGF * ngf + (MIND_FLOATS if maps else 0))
    return MemoryEstimate(volume, network)


def generator_width(spec: dict) -> int:
    return int(spec.get("kwargs", {}).get("ngf", DEFAULT_NGF))


def check_fits(need: MemoryEstimate, device: torch.device, canvas: Sequence[int], batch: int,
               pixel_spacing_mm: Optional[Sequence[float]]) -> None:
    """Refuse (VolumeError with the numbers and what to do) when ``need`` exceeds the memory available on ``device``
    (host memory for the volumes, and for the network too on a CPU)."""
    host = available_memory_bytes()
    gpu = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    on_host = need.total if device.type == "cpu" else need.volume_bytes
    short = (host is not None and on_host > host) or (gpu is not None and need.network_bytes > gpu)
    if not short:
        return
    where = (f"{host / 1e9:.1f} GB of memory are available" if gpu is None else
             f"{host / 1e9:.1f} GB of memory and {gpu / 1e9:.1f} GB on {device} are free")
    hints = ["crop the MR to the body"]
    if batch > 1:
        hints.insert(0, "use --batch-size 1")
    if pixel_spacing_mm is not None:
        hints.append(f"the model works on {pixel_spacing_mm[0]:g} mm pixels, so this field of view needs a "
                     f"{canvas[0]}x{canvas[1]} canvas: a model with coarser pixels needs less")
    raise VolumeError(f"synthesis would need about {need.total / 1e9:.1f} GB (the volumes {need.volume_bytes / 1e9:.1f} "
                      f"GB; the network on a {canvas[0]}x{canvas[1]} canvas, {batch} slice(s) at a time, "
                      f"{need.network_bytes / 1e9:.1f} GB) but {where}; " + "; ".join(hints))
