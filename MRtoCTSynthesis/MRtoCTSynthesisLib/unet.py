"""The 2D U-Net of Ronneberger et al. 2015, shared by the synthesis generator (``networks.UnetGenerator``) and the
segmentation network of Hiasa et al. 2018 (``MRtoCTSegmentLib.unet.UNet2D``).

Four down levels (two 3x3 convolutions, each followed by normalisation and ReLU, then 2x2 max pooling), a bottleneck,
and four up levels (2x2 transposed convolution halving the channels, concatenation with the skip connection, two 3x3
convolutions), then a 1x1 convolution to the outputs. Widths are base, 2 base, 4 base, 8 base and 16 base at the
bottleneck (Ronneberger: base 64). Unlike the original (unpadded convolutions, output smaller than input), the
convolutions are zero-padded so the output has the input's H x W; four poolings need H and W to be multiples of 16.
"""
from __future__ import annotations

import torch
from torch import nn

DEPTH = 4
MULTIPLE = 2 ** DEPTH
NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """[conv3x3 (zero padding 1), norm, ReLU] x 2."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
                                   _norm(norm, out_channels), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
                   _norm(norm, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net: (B, in_channels, H, W) -> (B, out_channels, H, W), no output activation; H and W multiples of 16."""

    size_multiple = MULTIPLE

    def __init__(self, in_channels: int, out_channels: int, base: int = 64, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base < 1:
            raise ValueError(f"a U-Net needs in_channels, out_channels and base >= 1, got {in_channels}, "
                             f"{out_channels}, {base}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        self.in_channels = in_channels
        widths = [base * 2 ** level for level in range(DEPTH + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(channels, width, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm, dropout)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.up_conv.append(DoubleConv(width * 2, width, norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the U-Net expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"the U-Net needs H and W multiples of {MULTIPLE} (four 2x2 poolings), got "
                             f"{tuple(x.shape[-2:])}; pad the slices (volumes.plan_slice_fit(..., multiple=16))")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)
