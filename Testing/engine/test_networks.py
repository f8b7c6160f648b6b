"""Tests of MRtoCTSynthesisLib.networks against the CycleGAN architecture used by Yang 2018 and Hiasa 2018."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from MRtoCTSynthesisLib.networks import (
    PatchDiscriminator, ResidualBlock, ResnetGenerator, build_network, count_parameters, init_weights,
    receptive_field,
)


def test_full_size_parameter_counts_match_cyclegan():
    """1-channel CycleGAN nets: ResNet-9 generator ~11.37M parameters, 70x70 PatchGAN ~2.76M."""
    assert count_parameters(ResnetGenerator(1, 1, ngf=64, n_blocks=9)) == pytest.approx(11.37e6, rel=5e-3)
    discriminator = PatchDiscriminator(1, ndf=64, n_layers=3)
    assert count_parameters(discriminator) == pytest.approx(2.76e6, rel=5e-3)
    assert receptive_field(discriminator) == 70


def test_discriminator_receptive_field_is_70_pixels_empirically():
    """d(one output pixel)/d(input) is non-zero on exactly a 70x70 window.

    InstanceNorm statistics couple every pixel of the image, so they are replaced by identities: the 70x70
    field is that of the convolution stack.
    """
    torch.manual_seed(0)
    discriminator = init_weights(PatchDiscriminator(1, ndf=2, n_layers=3))
    for index, layer in enumerate(discriminator.model):
        if isinstance(layer, nn.InstanceNorm2d):
            discriminator.model[index] = nn.Identity()
    image = torch.randn(1, 1, 160, 160, dtype=torch.float64, requires_grad=True)
    output = discriminator.double()(image)
    centre_row, centre_col = output.shape[-2] // 2, output.shape[-1] // 2
    output[0, 0, centre_row, centre_col].backward()
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert (height.item(), width.item()) == (70, 70)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 159 and cols.max() < 159  # not clipped by the image
    assert rows.numel() == 70 * 70  # every pixel of the window matters


@pytest.mark.parametrize("height, width", [(384, 256), (256, 256)])  # Yang's sagittal slices, Hiasa's slices
def test_generator_keeps_image_size(height, width):
    generator = ResnetGenerator(1, 1, ngf=4, n_blocks=1)
    with torch.no_grad():
        output = generator(torch.randn(1, 1, height, width))
    assert output.shape == (1, 1, height, width)


def test_generator_structure_and_tanh_output():
    generator = init_weights(ResnetGenerator(1, 1, ngf=4, n_blocks=9))
    layers = list(generator.modules())
    assert sum(isinstance(layer, ResidualBlock) for layer in layers) == 9
    down = [layer for layer in layers if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2)]
    up = [layer for layer in layers if isinstance(layer, nn.ConvTranspose2d)]
    assert len(down) == 2 and len(up) == 2 and all(layer.stride == (2, 2) for layer in up)
    assert isinstance(generator.model[-1], nn.Tanh)
    with torch.no_grad():
        output = generator(1000 * torch.randn(2, 1, 32, 32))
    assert output.abs().max() <= 1


def test_init_weights_draws_conv_weights_from_normal_0_002():
    generator = init_weights(ResnetGenerator(1, 1, ngf=64, n_blocks=9))
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([conv.weight.detach().flatten() for conv in convs])
    assert abs(weights.mean().item()) < 1e-4
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert all(torch.count_nonzero(conv.bias) == 0 for conv in convs)


def test_build_network_by_name():
    assert isinstance(build_network("resnet_generator", ngf=4, n_blocks=1), ResnetGenerator)
    assert isinstance(build_network("patch_discriminator", ndf=4), PatchDiscriminator)


@pytest.mark.parametrize("name, kwargs", [
    ("vnet_generator", {}),
    ("resnet_generator", {"n_resblocks": 9}),
    ("patch_discriminator", {"n_layers": 3, "dropout": 0.5}),
])
def test_build_network_rejects_unknown_names_and_arguments(name, kwargs):
    with pytest.raises(ValueError, match=name if not kwargs else "bad arguments"):
        build_network(name, **kwargs)


def test_unet_generator_keeps_size_maps_to_tanh_range_and_is_built_by_name():
    from MRtoCTSynthesisLib.networks import UnetGenerator, generator_spec

    torch.manual_seed(0)
    net = UnetGenerator(ngf=4)
    y = net(torch.randn(2, 1, 32, 48) * 5)
    assert y.shape == (2, 1, 32, 48) and y.abs().max() <= 1
    spec = generator_spec("unet", 4, 9, "batch")
    assert spec == {"architecture": "unet_generator",
                    "kwargs": {"in_channels": 1, "out_channels": 1, "ngf": 4, "norm": "batch"}}
    assert isinstance(build_network(spec["architecture"], **spec["kwargs"]), UnetGenerator)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 1, 40, 32))


def test_segmentation_unet_is_the_shared_unet_with_its_own_keys():
    from MRtoCTSegmentLib.unet import UNet2D
    from MRtoCTSynthesisLib.unet import UNet

    seg = UNet2D(in_channels=2, n_classes=3, base=4)
    assert isinstance(seg, UNet) and seg.n_classes == 3
    assert "head.weight" in seg.state_dict() and "down.0.0.weight" in seg.state_dict()  # model files keep loading
