"""Loss terms of the two CycleGAN variants.

- least-squares adversarial losses (Yang 2018 eqs. 1-2; Hiasa 2018 replaces its eqs. 1-2 by the same LSGAN form),
- L1 cycle-consistency (Yang eq. 3, Hiasa eq. 3) and the optional CycleGAN identity term,
- Yang's structure-consistency loss on MIND features (eqs. 4-8),
- Hiasa's gradient-consistency loss on the gradient correlation (eqs. 4-5) of absolute gradients, as the authors'
  code computes it.

Every function takes batched tensors, is differentiable, leaves its inputs untouched, keeps their device and
returns its result in the inputs' floating dtype. MIND and the correlations are evaluated in float32 when given
float16/bfloat16 (with autocast disabled for MIND's convolution): exp(-D/V) and sums of squares are too
ill-conditioned in half precision.
"""
from __future__ import annotations

import torch
from torch.nn import functional

_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Absolute part of MIND's variance floor: keeps V > 0 on a constant image without touching any real image.
_VARIANCE_FLOOR_ABS = 1e-30
# Relative part of MIND's variance floor (Heinrich et al. clamp V the same way): V >= 1e-3 * mean_x V.
_VARIANCE_FLOOR_REL = 1e-3


def _check_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")


def _check_images(image: torch.Tensor, name: str) -> None:
    _check_tensor(image, name)
    if image.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (N, C, H, W), got shape {tuple(image.shape)}")


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], images: bool = False) -> None:
    for tensor, name in zip((a, b), names):
        (_check_images if images else _check_tensor)(tensor, name)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def _check_odd(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {value!r}")


def _working(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in at least float32 (half precision is promoted, float32/float64 kept)."""
    return tensor.float() if tensor.dtype in _HALF_DTYPES else tensor


# ----------------------------------------------------------------------------------------------- adversarial
def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss 0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2)).

    Yang eqs. 1-2 (and Hiasa's LSGAN replacement of its eqs. 1-2) averaged over the PatchGAN outputs. The 0.5
    is the CycleGAN reference code's halving of the discriminator objective, which slows D relative to G.
    """
    _check_tensor(d_real, "d_real")
    _check_tensor(d_fake, "d_fake")
    return 0.5 * ((d_real - 1).square().mean() + d_fake.square().mean())


def lsgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss mean((D(G(x)) - 1)^2): G pushes D's output on fakes towards the real label."""
    _check_tensor(d_fake, "d_fake")
    return (d_fake - 1).square().mean()


# ------------------------------------------------------------------------------------------- L1 consistency
def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """One direction of Yang eq. 3 / Hiasa eq. 3: mean |G_A(G_B(x)) - x| (the trainer sums both directions)."""
    _check_pair(reconstructed, real, ("reconstructed", "real"))
    return (reconstructed - real).abs().mean()


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """CycleGAN's optional identity term mean |G_A(a) - a|, the same L1 mean as ``cycle_loss``."""
    return cycle_loss(same, real)


# ------------------------------------------------------------------------------------- MIND structure loss
def gaussian_kernel2d(size: int = 7, sigma: float = 2.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Patch weights C_sigma(p) proportional to exp(-|p|^2 / (2 sigma^2)) on a size x size grid, summing to 1.

    Yang sec. 2.3 replaces the all-one kernel C of eq. 7 by this Gaussian. The normalisation does not change
    MIND: scaling C scales every D_P and V by the same factor, and F depends only on the ratio D_P / V.
    """
    _check_odd(size, "size", minimum=1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    coordinates = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    profile = torch.exp(-coordinates.square() / (2 * sigma ** 2))
    kernel = torch.outer(profile, profile)
    return kernel / kernel.sum()


def _mind(image: torch.Tensor, region: int, patch: int, sigma: float) -> torch.Tensor:
    """Validated MIND of an (N, 1, H, W) image, computed and returned in the working precision (>= float32)."""
    _check_images(image, "image")
    if image.shape[1] != 1:
        raise ValueError(f"MIND needs single-channel images (N, 1, H, W), got {image.shape[1]} channels; "
                         "fold channels into the batch to describe each one")
    _check_odd(region, "region", minimum=3)
    _check_odd(patch, "patch", minimum=1)
    with torch.autocast(device_type=image.device.type, enabled=False):
        image = _working(image)
        batch, _, height, width = image.shape
        r, p = region // 2, patch // 2
        # Boundary: I is extended by replicating its edge pixels; eqs. 5-7 then hold exactly at every pixel.
        extended = functional.pad(image, (r + p,) * 4, mode="replicate")
        # I'(alpha)(y) = I(y + alpha) for all region^2 offsets (row-major, dy then dx, from -r to r), evaluated on
        # the domain y in [-p, H + p) x [-p, W + p) that the patch sums of eq. 7 read.
        shifted = functional.unfold(extended, region).view(batch, region * region, height + 2 * p, width + 2 * p)
        squared = (extended[..., r:-r, r:-r] - shifted).square()
        # Eq. 7 with C_sigma: D_P(I, x, x + alpha) = sum_p C_sigma(p) (I(x + p) - I(x + alpha + p))^2, as one
        # depthwise convolution over all images and offsets (much faster than a batch of 1-channel convolutions).
        channels = batch * region * region
        weights = gaussian_kernel2d(patch, sigma, dtype=image.dtype, device=image.device).expand(channels, 1, -1, -1)
        distances = functional.conv2d(squared.reshape(1, channels, height + 2 * p, width + 2 * p), weights,
                                      groups=channels).view(batch, region * region, height, width)
        centre = region * region // 2  # alpha = (0, 0)
        # Eq. 6: V(I, x) = 1/4 sum over the 4-neighbourhood n of D_P(I, x, x + n).
        variance = distances[:, [centre - region, centre - 1, centre + 1, centre + region]].mean(1, keepdim=True)
        # Flat areas have V = 0; floor V at 1e-3 of its image mean (scales like V, so MIND stays invariant to
        # a * I + b) plus a negligible absolute constant for an entirely constant image.
        floor = _VARIANCE_FLOOR_REL * variance.mean(dim=(2, 3), keepdim=True) + _VARIANCE_FLOOR_ABS
        variance = torch.maximum(variance, floor)
        # R_nl excludes alpha = (0, 0), so |R_nl| = region^2 - 1 = 80 for Yang's 9 x 9 region: our reading of eq. 4
        # (the paper does not say); with the centre, D_P(I, x, x) = 0 would make Z = 1 and one component always 1.
        distances = torch.cat((distances[:, :centre], distances[:, centre + 1:]), dim=1)
        # Eq. 4 with Z = max_alpha exp(-D_P / V), i.e. F = exp(-(D_P - min_alpha D_P) / V); max_alpha F_x = 1.
        return torch.exp(-(distances - distances.amin(dim=1, keepdim=True)) / variance)


def mind_descriptor(image: torch.Tensor, region: int = 9, patch: int = 7, sigma: float = 2.0) -> torch.Tensor:
    """MIND features F (Yang eqs. 4-7) of a batch of single-channel images (N, 1, H, W) -> (N, region^2 - 1, H, W).

    Channel k holds F^alpha for the k-th offset alpha of the region x region neighbourhood in row-major order
    (dy, then dx, each from -region//2 to region//2) with alpha = (0, 0) left out:
        D_P(I, x, x + alpha) = sum_p C_sigma(p) (I(x + p) - I(x + alpha + p))^2   (eqs. 5, 7; patch x patch Gaussian)
        V(I, x) = 1/4 sum_{n in 4-neighbourhood} D_P(I, x, x + n), floored at 1e-3 * mean_x V   (eq. 6)
        F^alpha_x = exp(-D_P / V) / Z,  Z chosen so that max_alpha F^alpha_x = 1   (eq. 4)
    Pixels outside the image take the value of the nearest edge pixel (replicate padding).
    """
    return _mind(image, region, patch, sigma).to(image.dtype)


def structure_loss(input_image: torch.Tensor, synthetic_image: torch.Tensor, region: int = 9, patch: int = 7,
                   sigma: float = 2.0) -> torch.Tensor:
    """One term of Yang eq. 8: 1 / (N_voxels |R_nl|) sum_x ||F_x(synthetic) - F_x(input)||_1, averaged over the batch.

    That is the mean of |F(synthetic) - F(input)| over images, offsets and pixels, with |R_nl| = region^2 - 1 (80
    for 9 x 9: the centre offset is excluded, our reading of eq. 4); the trainer adds the MR and CT terms.
    """
    _check_pair(input_image, synthetic_image, ("input_image", "synthetic_image"), images=True)
    difference = _mind(synthetic_image, region, patch, sigma) - _mind(input_image, region, patch, sigma)
    return difference.abs().mean().to(torch.promote_types(input_image.dtype, synthetic_image.dtype))


# ------------------------------------------------------------------------------- gradient-consistency loss
# Hiasa's authors' kernels (yuta-hi/pytorch_similarity, torch_similarity/_helper.py, gradient_kernel_2d): the
# derivative along rows (u); its transpose gives the derivative along columns (v). "central" is their 'default'.
GRADIENT_OPERATORS: dict[str, tuple[tuple[float, ...], ...]] = {
    "central": ((0, -1, 0), (0, 0, 0), (0, 1, 0)),
    "sobel": ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),
    "prewitt": ((-1, -1, -1), (0, 0, 0), (1, 1, 1)),
}


def image_gradients(image: torch.Tensor, operator: str = "central") -> tuple[torch.Tensor, torch.Tensor]:
    """Derivatives (g_u, g_v) along rows and columns of a batch (N, C, H, W), each (N, C, H, W).

    g_u = K * I and g_v = K^T * I (cross-correlation, edge pixels replicated), K the 3 x 3 kernel of ``operator``:
    "central" [-1, 0, +1] (g_u[i, j] = I[i + 1, j] - I[i - 1, j]), "sobel" or "prewitt" (the same difference,
    smoothed across by [1, 2, 1] or [1, 1, 1]), as in Hiasa's authors' implementation.
    """
    _check_images(image, "image")
    if operator not in GRADIENT_OPERATORS:
        raise ValueError(f"unknown gradient operator {operator!r}; choose one of {sorted(GRADIENT_OPERATORS)}")
    if image.shape[-2] < 2 or image.shape[-1] < 2:
        raise ValueError(f"image gradients need H, W >= 2, got shape {tuple(image.shape)}")
    batch, channels, height, width = image.shape
    kernel_u = torch.tensor(GRADIENT_OPERATORS[operator], dtype=image.dtype, device=image.device)
    kernels = torch.stack((kernel_u, kernel_u.T))[:, None]  # (2, 1, 3, 3)
    flat = functional.pad(image.reshape(batch * channels, 1, height, width), (1, 1, 1, 1), mode="replicate")
    gradients = functional.conv2d(flat, kernels).view(batch, channels, 2, height, width)
    return gradients[:, :, 0], gradients[:, :, 1]


def normalized_cross_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Hiasa eq. 4 NCC of each batch item over all its remaining elements -> (N,).

    NCC = sum (A - mean A)(B - mean B) / sqrt(sum (A - mean A)^2 sum (B - mean B)^2), evaluated with means (the
    1/n factors cancel). The denominator is floored at eps, so a constant image gets NCC = 0 and finite
    gradients; eps is far below any real image's spread, so NCC(A, a A + b) = sign(a) exactly.
    """
    _check_pair(a, b, ("a", "b"))
    if a.ndim < 2:
        raise ValueError(f"a and b must be batched (N, ...) with at least one element dimension, got {a.ndim}-D")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    a_centred, b_centred = (x - x.mean(1, keepdim=True) for x in (_working(a).flatten(1), _working(b).flatten(1)))
    covariance = (a_centred * b_centred).mean(1)
    variances = a_centred.square().mean(1) * b_centred.square().mean(1)
    ncc = covariance / torch.sqrt(torch.clamp_min(variances, eps ** 2))  # clamp before sqrt: no 0 * inf
    return ncc.to(torch.promote_types(a.dtype, b.dtype))


def gradient_correlation(a: torch.Tensor, b: torch.Tensor, operator: str = "central",
                         absolute: bool = True) -> torch.Tensor:
    """Hiasa eq. 4 as their authors implement it: GC = 1/2 (NCC(|g_u A|, |g_u B|) + NCC(|g_v A|, |g_v B|)) -> (N,).

    The NCC is taken per image over all pixels. The absolute gradients (yuta-hi/pytorch_similarity,
    GradientCorrelation2d) make GC blind to edge polarity: bone is dark in T1 MR and bright in CT, and the signed
    form (``absolute=False``, eq. 4 read literally) is negative for such true pairs, so 1 - GC would reward an sCT
    with the MR's polarity. The signed form is kept for measurements only.
    """
    _check_pair(a, b, ("a", "b"), images=True)
    with torch.autocast(device_type=a.device.type, enabled=False):
        (au, av), (bu, bv) = image_gradients(_working(a), operator), image_gradients(_working(b), operator)
        if absolute:
            au, av, bu, bv = au.abs(), av.abs(), bu.abs(), bv.abs()
        gc = 0.5 * (normalized_cross_correlation(au, bu) + normalized_cross_correlation(av, bv))
    return gc.to(torch.promote_types(a.dtype, b.dtype))


def gradient_consistency_loss(a: torch.Tensor, b: torch.Tensor, operator: str = "central") -> torch.Tensor:
    """One sum of Hiasa eq. 5 as a batch mean: mean_n (1 - GC(a_n, b_n)), GC of the absolute gradients.

    The trainer forms L_GC = 1/2 (loss(x_CT, G_MR(x_CT)) + loss(y_MR, G_CT(y_MR))); batch means replace eq. 5's
    sums over images so the weight lambda_GC does not depend on the batch size.
    """
    return (1 - gradient_correlation(a, b, operator)).mean()
