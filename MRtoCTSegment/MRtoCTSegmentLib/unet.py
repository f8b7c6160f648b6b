"""The 2D U-Net of Ronneberger et al. 2015 (``MRtoCTSynthesisLib.unet``), as used by Hiasa et al. 2018 (sec. 3.2)
with a two-channel input (MR + sCT) and class logits as outputs.

Networks are built by name (``build_network``) so a segmentation model file can name its architecture.
"""
from __future__ import annotations

from typing import Any

from MRtoCTSynthesisLib.unet import MULTIPLE, NORMS, UNet
from torch import nn

__all__ = ["MULTIPLE", "NORMS", "UNet2D", "SEG_NETWORKS", "build_network"]


class UNet2D(UNet):
    """U-Net: (B, in_channels, H, W) -> (B, n_classes, H, W) logits; H and W multiples of 16."""

    def __init__(self, in_channels: int = 2, n_classes: int = 2, base: int = 64, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        if in_channels < 1 or n_classes < 2 or base < 1:
            raise ValueError(f"UNet2D needs in_channels >= 1, n_classes >= 2 (background + structures) and base >= 1, "
                             f"got {in_channels}, {n_classes}, {base}")
        super().__init__(in_channels, n_classes, base, norm, dropout)
        self.n_classes = n_classes


SEG_NETWORKS = {"unet2d": UNet2D}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """A segmentation network by registered name; unknown names or arguments raise ValueError."""
    if name not in SEG_NETWORKS:
        raise ValueError(f"unknown segmentation architecture {name!r}; this engine knows {sorted(SEG_NETWORKS)}")
    try:
        return SEG_NETWORKS[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments {kwargs} for segmentation network {name!r}: {error}") from error
