"""Equation-level tests of MRtoCTSynthesisLib.losses (Yang 2018 eqs. 1-8, Hiasa 2018 eqs. 3-5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from MRtoCTSynthesisLib import losses
from MRtoCTSynthesisLib.networks import PatchDiscriminator, ResnetGenerator, init_weights


def reference_mind(image: np.ndarray, region: int = 9, patch: int = 7, sigma: float = 2.0) -> np.ndarray:
    """Yang eqs. 4-6 evaluated literally in float64 with loops over pixels, offsets and patch positions.

    Same boundary (pixels outside take the nearest edge value) and V floor as the library. The Gaussian patch
    weights are deliberately left unnormalised: matching the library (which normalises) checks that the
    normalisation of C_sigma does not change F.
    """
    height, width = image.shape
    r, p = region // 2, patch // 2
    weight = {(py, px): np.exp(-(py * py + px * px) / (2 * sigma ** 2))
              for py in range(-p, p + 1) for px in range(-p, p + 1)}

    def pixel(y: int, x: int) -> float:
        return image[min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    def patch_distance(y: int, x: int, dy: int, dx: int) -> float:  # eq. 5 with Gaussian weights C_sigma(p)
        return sum(c * (pixel(y + py, x + px) - pixel(y + dy + py, x + dx + px)) ** 2 for (py, px), c in weight.items())

    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    distances = np.zeros((len(offsets), height, width))
    variance = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            for k, (dy, dx) in enumerate(offsets):
                distances[k, y, x] = patch_distance(y, x, dy, dx)
            variance[y, x] = sum(distances[offsets.index(n), y, x] for n in ((-1, 0), (1, 0), (0, -1), (0, 1))) / 4
    floor = 1e-3 * variance.mean() + 1e-30
    features = np.zeros_like(distances)
    for y in range(height):
        for x in range(width):
            v = max(variance[y, x], floor)
            unnormalised = [np.exp(-distances[k, y, x] / v) for k in range(len(offsets))]
            z = max(unnormalised)  # eq. 4: Z makes the largest component 1
            for k in range(len(offsets)):
                features[k, y, x] = unnormalised[k] / z
    return features


def _random_images(seed: int, shape: tuple[int, ...] = (2, 1, 12, 13)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _half_flat_images() -> torch.Tensor:
    """Random images whose 10 left columns are constant: V = 0 in columns 0-5 (the floor is active) and the
    patches of columns 0-2 never leave the flat part."""
    images = _random_images(1)
    images[..., :10] = 0.25
    return images


def _faint_texture_images() -> torch.Tensor:
    """Random images whose 10 left columns carry only faint (1e-3) noise: there 0 < V < 1e-3 mean_x V, so the
    floored V sets the scale of F."""
    images = _random_images(2)
    images[..., :10] = 0.25 + 1e-3 * images[..., :10]
    return images


@pytest.fixture(scope="module")
def images_and_reference() -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    cases = {"random": _random_images(0), "faint": _faint_texture_images(), "half_flat": _half_flat_images()}
    return {name: (images, np.stack([reference_mind(im[0].double().numpy()) for im in images]))
            for name, images in cases.items()}


# --------------------------------------------------------------------------------------------------- MIND
@pytest.mark.parametrize("case", ["random", "faint", "half_flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mind_matches_loop_reference(images_and_reference, case, dtype):
    images, reference = images_and_reference[case]
    features = losses.mind_descriptor(images.to(dtype))
    assert features.shape == (2, 80, 12, 13) and features.dtype == dtype
    assert np.abs(features.double().numpy() - reference).max() < 1e-5


def test_mind_variance_floor_is_active_on_flat_regions(images_and_reference):
    """Where every patch compared is flat, D_P = 0 and F = 1; where V = 0 but some patch reaches the texture, the
    floored V makes those components ~0 instead of 0/0."""
    features = losses.mind_descriptor(_half_flat_images())
    assert torch.isfinite(features).all()
    assert torch.all(features[..., :3] == 1)
    assert features[..., 3:6].amin(dim=1).max() < 1e-6
    assert np.abs(features.double().numpy() - images_and_reference["half_flat"][1]).max() < 1e-5


def test_mind_is_invariant_to_affine_intensity_changes():
    images = _random_images(3, (2, 1, 20, 17))
    reference = losses.mind_descriptor(images)
    assert (losses.mind_descriptor(3.7 * images - 120) - reference).abs().max() < 1e-5
    # In float64 the rounding of the transformed input itself is negligible even for extreme maps.
    images = images.double()
    reference = losses.mind_descriptor(images)
    for a, b in ((3.7, -120.0), (0.01, 5.0), (2500.0, -1000.0)):
        assert (losses.mind_descriptor(a * images + b) - reference).abs().max() < 1e-10


def test_mind_components_in_unit_interval_with_unit_maximum():
    features = losses.mind_descriptor(_random_images(4, (3, 1, 16, 16)))
    assert features.min() > 0 and features.max() <= 1
    assert torch.equal(features.amax(dim=1), torch.ones(3, 16, 16))


def test_mind_of_constant_image_is_all_ones_and_differentiable():
    image = torch.full((1, 1, 10, 10), 7.0, requires_grad=True)
    features = losses.mind_descriptor(image)
    assert torch.equal(features, torch.ones(1, 80, 10, 10))
    losses.structure_loss(image, _random_images(5, (1, 1, 10, 10))).backward()
    assert torch.isfinite(image.grad).all()


def test_mind_region_and_patch_parameters_follow_equations():
    image = _random_images(6, (1, 1, 9, 9))
    features = losses.mind_descriptor(image[0:1], region=3, patch=3, sigma=1.0)
    assert features.shape == (1, 8, 9, 9)
    reference = reference_mind(image[0, 0].double().numpy(), region=3, patch=3, sigma=1.0)
    assert np.abs(features[0].double().numpy() - reference).max() < 1e-5


def test_gaussian_kernel_is_normalised_gaussian():
    kernel = losses.gaussian_kernel2d(7, 2.0, dtype=torch.float64)
    offsets = torch.arange(7, dtype=torch.float64) - 3
    expected = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 8)
    assert kernel.shape == (7, 7)
    assert torch.allclose(kernel, expected / expected.sum(), atol=1e-15)
    assert losses.gaussian_kernel2d(5, 1.0, dtype=torch.float16).dtype == torch.float16


# ---------------------------------------------------------------------------------------- structure loss
def test_structure_loss_is_zero_for_identical_and_positive_for_different_images():
    images = _random_images(7, (2, 1, 16, 16))
    assert losses.structure_loss(images, images.clone()).item() == 0
    assert losses.structure_loss(images, _random_images(8, (2, 1, 16, 16))).item() > 0.01


def test_structure_loss_equals_mean_absolute_feature_difference(images_and_reference):
    (a, ref_a), (b, ref_b) = images_and_reference["random"], images_and_reference["faint"]
    expected = np.abs(ref_b - ref_a).sum() / (2 * 80 * 12 * 13)  # 1 / (N |R_nl|) sum_x ||dF_x||_1, batch mean
    assert abs(losses.structure_loss(a, b).item() - expected) < 1e-6
    assert abs(losses.structure_loss(a.double(), b.double()).item() - expected) < 1e-10


def test_structure_loss_is_invariant_to_modality_like_intensity_maps():
    """Structure (not intensity) is compared: an affine remap of the input costs nothing."""
    images = _random_images(9, (1, 1, 24, 24))
    assert losses.structure_loss(images, 2000 * images - 1000).item() < 2e-6


# ------------------------------------------------------------------------------------ gradient consistency
AUTHORS_KERNELS = {  # yuta-hi/pytorch_similarity _helper.gradient_kernel_2d, derivative along axis 0 (rows)
    "central": [[0, -1, 0], [0, 0, 0], [0, 1, 0]],
    "sobel": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "prewitt": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
}


def reference_gradient(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Loop evaluation of sum_{p, q} K[p, q] I(i + p - 1, j + q - 1) with edge pixels replicated."""
    height, width = image.shape
    out = np.zeros_like(image)
    for i in range(height):
        for j in range(width):
            for p in range(3):
                for q in range(3):
                    out[i, j] += kernel[p, q] * image[min(max(i + p - 1, 0), height - 1), min(max(j + q - 1, 0), width - 1)]
    return out


def reference_gc(a: np.ndarray, b: np.ndarray, operator: str = "central", absolute: bool = True) -> float:
    """GC of the authors' GradientCorrelation2d: mean over u, v of NCC(|K_d * A|, |K_d * B|), NCC by np.corrcoef."""
    kernel = np.array(AUTHORS_KERNELS[operator], float)
    total = 0.0
    for k in (kernel, kernel.T):
        ga, gb = reference_gradient(a, k), reference_gradient(b, k)
        if absolute:
            ga, gb = np.abs(ga), np.abs(gb)
        total += np.corrcoef(ga.ravel(), gb.ravel())[0, 1]
    return total / 2


@pytest.mark.parametrize("operator", sorted(AUTHORS_KERNELS))
def test_image_gradients_match_loop_reference(operator):
    image = (torch.arange(30.0).view(1, 1, 5, 6) ** 2).double()
    gu, gv = losses.image_gradients(image, operator)
    kernel = np.array(AUTHORS_KERNELS[operator], float)
    assert gu.shape == gv.shape == (1, 1, 5, 6)
    assert np.allclose(gu[0, 0].numpy(), reference_gradient(image[0, 0].numpy(), kernel), atol=1e-12)
    assert np.allclose(gv[0, 0].numpy(), reference_gradient(image[0, 0].numpy(), kernel.T), atol=1e-12)


def test_central_gradient_is_the_central_difference():
    image = torch.arange(20.0).view(1, 1, 4, 5) ** 2
    gu, gv = losses.image_gradients(image)
    values = image[0, 0].numpy()
    assert np.array_equal(gu[0, 0, 1:-1].numpy(), values[2:] - values[:-2])
    assert np.array_equal(gv[0, 0, :, 1:-1].numpy(), values[:, 2:] - values[:, :-2])


def test_normalized_cross_correlation_equals_numpy_corrcoef():
    a, b = _random_images(10, (3, 1, 11, 9)), _random_images(11, (3, 1, 11, 9))
    b = b + 0.5 * a  # correlated
    ncc = losses.normalized_cross_correlation(a, b)
    expected = [np.corrcoef(x.numpy().ravel(), y.numpy().ravel())[0, 1] for x, y in zip(a, b)]
    assert ncc.shape == (3,)
    assert np.allclose(ncc.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("operator", sorted(AUTHORS_KERNELS))
@pytest.mark.parametrize("absolute", [True, False])
def test_gradient_correlation_matches_loop_reference_of_authors_code(operator, absolute):
    a, b = _random_images(12, (2, 1, 14, 10)).double(), _random_images(13, (2, 1, 14, 10)).double()
    b = b + 0.7 * a
    expected = [reference_gc(x, y, operator, absolute) for x, y in zip(a[:, 0].numpy(), b[:, 0].numpy())]
    assert np.allclose(losses.gradient_correlation(a, b, operator, absolute).numpy(), expected, atol=1e-12)


def test_gradient_correlation_identities():
    a = _random_images(14, (3, 1, 32, 24))
    ones = torch.ones(3)
    assert torch.allclose(losses.gradient_correlation(a, a), ones, atol=1e-5)
    assert torch.allclose(losses.gradient_correlation(a, 3.7 * a - 120), ones, atol=1e-5)
    assert torch.allclose(losses.gradient_correlation(a, 1e-3 * a + 1), ones, atol=1e-5)
    assert abs(losses.gradient_consistency_loss(a, a).item()) < 1e-6
    unrelated = _random_images(15, (3, 1, 32, 24))
    assert losses.gradient_consistency_loss(a, unrelated).item() > 0.8  # |gradients| of independent noise: GC ~ 0
    shifted = torch.roll(a, 1, dims=-1)
    assert (losses.gradient_correlation(a, shifted) < 0.5).all()  # misaligned edges are penalised


def test_absolute_gradient_correlation_ignores_edge_polarity():
    """A T1-like MR (bone dark) and a CT (bone bright) of the same anatomy: the signed GC is -1, the authors' GC 1."""
    ct = torch.zeros(1, 1, 24, 24)
    ct[..., 6:18, 6:18] = 1000.0       # a bright block (bone in CT) ...
    mr = 800.0 - 0.7 * ct              # ... dark in the MR
    assert losses.gradient_correlation(mr, ct, absolute=False).item() == pytest.approx(-1.0, abs=1e-6)
    assert losses.gradient_correlation(mr, ct).item() == pytest.approx(1.0, abs=1e-6)
    assert losses.gradient_consistency_loss(mr, ct).item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_gradient_operator_is_refused():
    with pytest.raises(ValueError, match="unknown gradient operator"):
        losses.gradient_correlation(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), operator="scharr")


def test_gradient_consistency_loss_is_batch_mean_of_one_minus_gc():
    a, b = _random_images(16, (4, 1, 10, 10)), _random_images(17, (4, 1, 10, 10))
    expected = (1 - losses.gradient_correlation(a, b)).mean()
    assert torch.allclose(losses.gradient_consistency_loss(a, b), expected)


def test_constant_image_gives_zero_correlation_and_finite_gradients():
    constant = torch.full((1, 1, 8, 8), 3.0, requires_grad=True)
    other = _random_images(18, (1, 1, 8, 8)).requires_grad_()
    gc = losses.gradient_correlation(constant, other)
    assert gc.item() == 0
    gc.sum().backward()
    assert torch.isfinite(constant.grad).all() and torch.isfinite(other.grad).all()


# ------------------------------------------------------------------------------------- adversarial and L1
def test_lsgan_losses_equal_hand_computed_values():
    d_real = torch.tensor([[0.5, 1.5], [1.0, 0.0]])
    d_fake = torch.tensor([[0.2, -0.4], [0.0, 1.0]])
    # mean((d_real - 1)^2) = (0.25 + 0.25 + 0 + 1) / 4 = 0.375; mean(d_fake^2) = (0.04 + 0.16 + 0 + 1) / 4 = 0.3
    assert losses.lsgan_discriminator_loss(d_real, d_fake).item() == pytest.approx(0.5 * (0.375 + 0.3))
    # mean((d_fake - 1)^2) = (0.64 + 1.96 + 1 + 0) / 4 = 0.9
    assert losses.lsgan_generator_loss(d_fake).item() == pytest.approx(0.9)
    assert losses.lsgan_generator_loss(torch.ones(2, 1, 3, 3)).item() == 0


def test_cycle_and_identity_losses_are_mean_absolute_error():
    reconstructed = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    real = torch.tensor([[[[0.0, 0.0], [0.5, 1.0]]]])
    assert losses.cycle_loss(reconstructed, real).item() == pytest.approx((1 + 2 + 0 + 2) / 4)
    assert losses.identity_loss(reconstructed, real).item() == pytest.approx((1 + 2 + 0 + 2) / 4)


# ----------------------------------------------------------------------------- gradients reach parameters
def _norm_cancelled_biases(net: nn.Module) -> set[int]:
    """Biases of convolutions followed by a non-affine InstanceNorm: the norm removes them, so their gradient is
    mathematically zero."""
    cancelled = set()
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            for layer, following in zip(module, list(module)[1:]):
                if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(following, nn.InstanceNorm2d) \
                        and not following.affine and layer.bias is not None:
                    cancelled.add(id(layer.bias))
    return cancelled


def _assert_gradients_reach_every_parameter(net: nn.Module) -> None:
    cancelled = _norm_cancelled_biases(net)
    assert cancelled  # the generator and discriminator both have conv + InstanceNorm pairs
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        if id(parameter) in cancelled:
            assert parameter.grad.abs().max() < 1e-5, name
        else:
            assert parameter.grad.abs().max() > 0, name


@pytest.fixture
def tiny_generator() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(1, 1, ngf=4, n_blocks=1))


LOSSES_OF_GENERATOR = {
    "structure": lambda x, fake: losses.structure_loss(x, fake),
    "gradient_consistency": lambda x, fake: losses.gradient_consistency_loss(x, fake),
    "cycle": lambda x, fake: losses.cycle_loss(fake, x),
    "lsgan_generator": None,  # needs a discriminator, built in the test
}


@pytest.mark.parametrize("loss_name", sorted(LOSSES_OF_GENERATOR))
def test_gradients_reach_every_generator_parameter(tiny_generator, loss_name):
    x = _random_images(19, (2, 1, 32, 32)) * 2 - 1
    fake = tiny_generator(x)
    if loss_name == "lsgan_generator":
        discriminator = init_weights(PatchDiscriminator(1, ndf=4, n_layers=3))
        loss = losses.lsgan_generator_loss(discriminator(fake))
    else:
        loss = LOSSES_OF_GENERATOR[loss_name](x, fake)
    loss.backward()
    _assert_gradients_reach_every_parameter(tiny_generator)


def test_gradients_reach_every_discriminator_parameter(tiny_generator):
    torch.manual_seed(1)
    discriminator = init_weights(PatchDiscriminator(1, ndf=4, n_layers=3))
    real = _random_images(20, (2, 1, 32, 32)) * 2 - 1
    fake = tiny_generator(_random_images(21, (2, 1, 32, 32))).detach()
    losses.lsgan_discriminator_loss(discriminator(real), discriminator(fake)).backward()
    _assert_gradients_reach_every_parameter(discriminator)
    assert all(p.grad is None for p in tiny_generator.parameters())


# ------------------------------------------------------------------------------ dtype, device, validation
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32_and_keep_dtype(dtype):
    """HU-scale inputs: squared differences (~1e6) would overflow float16 if computed in the input dtype."""
    a = (3000 * _random_images(22, (1, 1, 16, 16)) - 1000).to(dtype)
    b = (3000 * _random_images(23, (1, 1, 16, 16)) - 1000).to(dtype)
    features = losses.mind_descriptor(a)
    assert features.dtype == dtype
    assert (features.float() - losses.mind_descriptor(a.float())).abs().max() < 1e-2
    for loss in (losses.structure_loss, losses.gradient_consistency_loss):
        value = loss(a, b)
        assert value.dtype == dtype
        assert abs(value.item() - loss(a.float(), b.float()).item()) < 1e-2


def test_losses_under_cpu_autocast_match_float32():
    a, b = _random_images(24, (1, 1, 16, 16)), _random_images(25, (1, 1, 16, 16))
    expected = losses.structure_loss(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.structure_loss(a, b.to(torch.bfloat16))
    assert value.dtype == torch.float32
    assert abs(value.item() - expected.item()) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_on_cuda_match_cpu():
    a, b = _random_images(26, (2, 1, 24, 20)), _random_images(27, (2, 1, 24, 20))
    for loss in (losses.structure_loss, losses.gradient_consistency_loss, losses.cycle_loss):
        assert abs(loss(a.cuda(), b.cuda()).item() - loss(a, b).item()) < 1e-5
    assert torch.allclose(losses.mind_descriptor(a.cuda()).cpu(), losses.mind_descriptor(a), atol=1e-5)


def test_inputs_are_not_modified():
    a, b = _random_images(28, (1, 1, 12, 12)), _random_images(29, (1, 1, 12, 12))
    a_copy, b_copy = a.clone(), b.clone()
    losses.structure_loss(a, b)
    losses.gradient_consistency_loss(a, b)
    losses.mind_descriptor(a)
    assert torch.equal(a, a_copy) and torch.equal(b, b_copy)


@pytest.mark.parametrize("call, message", [
    (lambda: losses.mind_descriptor(torch.rand(1, 2, 8, 8)), "single-channel"),
    (lambda: losses.mind_descriptor(torch.rand(1, 8, 8)), r"\(N, C, H, W\)"),
    (lambda: losses.mind_descriptor(torch.ones(1, 1, 8, 8, dtype=torch.int64)), "floating-point"),
    (lambda: losses.mind_descriptor(torch.rand(1, 1, 8, 8), region=8), "region"),
    (lambda: losses.mind_descriptor(torch.rand(1, 1, 8, 8), region=1), "region"),
    (lambda: losses.mind_descriptor(torch.rand(1, 1, 8, 8), patch=0), "patch"),
    (lambda: losses.mind_descriptor(torch.rand(1, 1, 8, 8), sigma=0.0), "sigma"),
    (lambda: losses.mind_descriptor(np.zeros((1, 1, 8, 8))), "torch.Tensor"),
    (lambda: losses.structure_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "same shape"),
    (lambda: losses.gradient_correlation(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 8, 8)), "same shape"),
    (lambda: losses.gradient_correlation(torch.rand(1, 1, 1, 8), torch.rand(1, 1, 1, 8)), "H, W >= 2"),
    (lambda: losses.normalized_cross_correlation(torch.rand(3), torch.rand(3)), "batched"),
    (lambda: losses.normalized_cross_correlation(torch.rand(2, 3), torch.rand(2, 3), eps=0), "eps"),
    (lambda: losses.cycle_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5)), "same shape"),
    (lambda: losses.lsgan_generator_loss(torch.empty(0)), "empty"),
    (lambda: losses.gaussian_kernel2d(4), "size"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
