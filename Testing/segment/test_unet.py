"""U-Net shapes and registry; the Dice + cross-entropy loss on hand-computed cases."""
import math

import pytest
import torch

from MRtoCTSegmentLib.losses import dice_ce_loss, soft_dice_loss
from MRtoCTSegmentLib.unet import NORMS, SEG_NETWORKS, UNet2D, build_network


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (32, 48), (80, 64)])
def test_output_has_the_input_size_and_one_map_per_class(channels, size):
    net = UNet2D(in_channels=channels, n_classes=5, base=4)
    assert net(torch.zeros(2, channels, *size)).shape == (2, 5, *size)


@pytest.mark.parametrize("norm", NORMS)
def test_every_normalisation_builds_and_runs(norm):
    net = build_network("unet2d", in_channels=2, n_classes=3, base=2, norm=norm).eval()
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_four_levels_and_base_width():
    net = UNet2D(2, 3, base=8)
    assert len(net.down) == 4 and len(net.up) == 4
    assert net.down[0][0].out_channels == 8 and net.bottleneck[0].out_channels == 8 * 16
    assert net.head.out_channels == 3 and net.down[0][0].in_channels == 2


def test_bad_inputs_are_refused_with_a_reason():
    net = UNet2D(2, 3, base=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 2, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="n_classes"):
        UNet2D(2, 1)
    with pytest.raises(ValueError, match="unknown segmentation architecture"):
        build_network("vnet3d")
    with pytest.raises(ValueError, match="bad arguments"):
        build_network("unet2d", width=3)
    assert set(SEG_NETWORKS) == {"unet2d"}


TARGET = torch.tensor([[[0, 1], [1, 1]]])


def test_soft_dice_by_hand():
    p1 = torch.tensor([[0.2, 0.6], [0.8, 1.0]])
    probs = torch.stack([1 - p1, p1])[None]
    # class 1: 2 * 2.4 / (2.6 + 3) = 6/7; class 0: 2 * 0.8 / (1.4 + 1) = 2/3
    assert soft_dice_loss(probs, TARGET, smooth=0) == pytest.approx(1 - 6 / 7)
    assert soft_dice_loss(probs, TARGET, include_background=True, smooth=0) == pytest.approx(1 - (6 / 7 + 2 / 3) / 2)


def test_dice_ce_by_hand_for_uniform_logits():
    total, terms = dice_ce_loss(torch.zeros(1, 2, 2, 2), TARGET, smooth=0)
    # CE = ln 2 everywhere; class 1 Dice = 2 * 1.5 / (2 + 3) = 0.6
    assert terms["ce"] == pytest.approx(math.log(2))
    assert terms["dice"] == pytest.approx(0.4)
    assert float(total) == pytest.approx(math.log(2) + 0.4)
    weighted, _ = dice_ce_loss(torch.zeros(1, 2, 2, 2), TARGET, ce_weight=0.5, dice_weight=2.0, smooth=0)
    assert float(weighted) == pytest.approx(0.5 * math.log(2) + 0.8)


def test_perfect_prediction_costs_nothing_and_absent_classes_score_one():
    onehot = torch.nn.functional.one_hot(TARGET, 3).permute(0, 3, 1, 2).float()
    total, terms = dice_ce_loss(onehot * 40 - 20, TARGET)  # class 2 absent from target and prediction
    assert terms["ce"] < 1e-6 and terms["dice"] < 1e-6 and float(total) < 1e-6


def test_loss_has_gradients_and_refuses_wrong_shapes():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    dice_ce_loss(logits, TARGET)[0].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        soft_dice_loss(torch.rand(1, 2, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))
