"""Generators and discriminators of the CycleGAN (Zhu et al. 2017, as used by Yang 2018 and Hiasa 2018).

- ``ResnetGenerator``: c7s1-ngf, two stride-2 convolutions, ``n_blocks`` residual blocks (reflection
  padding, instance norm), two transposed convolutions, c7s1-out, tanh.
- ``UnetGenerator``: the U-Net of ``unet.py`` (four poolings, skip connections) with one output and tanh: a
  generator choice of the recipe study (issue 22), not of the papers; H and W multiples of 16.
- ``PatchDiscriminator``: the 70x70 PatchGAN (n_layers=3): five 4x4 convolutions.

Both are built by name through ``build_network`` so a model file can name its architecture.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .unet import UNet


class ResidualBlock(nn.Module):
    """x + [reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """ResNet generator; keeps H x W whenever both are multiples of 4 (e.g. Yang's 384x256, Hiasa's 256x256)."""

    size_multiple = 4   # two stride-2 downsamplings

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True),
        ]
        for mult in (1, 2):  # two stride-2 downsamplings
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResidualBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):  # two fractionally-strided (stride 1/2) convolutions
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetGenerator(UNet):
    """U-Net generator: tanh of the U-Net's single output, so it maps to the same [-1, 1] window as the ResNet."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 16, norm: str = "instance") -> None:
        super().__init__(in_channels, out_channels, base=ngf, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN: C64-C128-C256-C512(stride 1)-C1, 4x4 kernels, LeakyReLU 0.2; 70x70 receptive field at n_layers=3."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def receptive_field(net: nn.Module) -> int:
    """Receptive field (pixels, one side) of a plain stack of convolutions: r <- r + (k - 1) * jump."""
    field, jump = 1, 1
    for layer in net.modules():
        if isinstance(layer, nn.Conv2d):
            field += (layer.kernel_size[0] - 1) * jump
            jump *= layer.stride[0]
    return field


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise conv weights from N(0, std) and biases to 0, as in the CycleGAN reference code."""
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return net


NETWORKS = {"resnet_generator": ResnetGenerator, "unet_generator": UnetGenerator,
            "patch_discriminator": PatchDiscriminator}
GENERATORS = {"resnet": "resnet_generator", "unet": "unet_generator"}   # TrainConfig.generator -> NETWORKS name


def generator_spec(generator: str, ngf: int, n_blocks: int, norm: str) -> dict:
    """The model file's description of a generator of the configuration (architecture name and its arguments)."""
    if generator == "resnet":
        kwargs = {"in_channels": 1, "out_channels": 1, "ngf": ngf, "n_blocks": n_blocks}
    else:
        kwargs = {"in_channels": 1, "out_channels": 1, "ngf": ngf, "norm": norm}
    return {"architecture": GENERATORS[generator], "kwargs": kwargs}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a network by its registered name; unknown names or arguments raise ValueError."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network architecture {name!r}; this engine knows {sorted(NETWORKS)}")
    try:
        return NETWORKS[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments {kwargs} for network {name!r}: {error}") from error


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
