"""Image-synthesis metrics of Yang et al. 2018 (sec. 3.2) and Hiasa et al. 2018 (sec. 3.1).

All functions take numpy arrays of equal shape (2D images or 3D volumes, any axis order) and an optional
mask (nonzero = inside; Yang computes every metric "within the head region mask"). Inputs are never modified.

- MAE = mean |pred - ref|; PSNR = 20 log10(data_range / sqrt(MSE)). Yang uses data_range = 4500 for CT in
  [-1000, 3500] HU. Hiasa reports both on CT normalised to [0, 255] from the window [-150, 350] HU
  (``mae_psnr_255``: PSNR = 20 log10(255 / sqrt(MSE))).
- SSIM (Wang et al. 2004): the standard Gaussian window (11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03,
  C_i = (K_i data_range)^2, population covariances (scikit-image with gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False), averaged over the mask. 3D volumes are scored slice by slice: 2D maps on the slices
  along ``axis`` (give the axis of the model's plane), so the window never straddles slices, as in the 2D-slice
  synthesis of both papers.
- SSIM(HG): Yang's SSIM over "regions with high gradient magnitudes" of the reference CT. The paper gives no
  threshold or operator; THIS PROJECT'S CHOICE: the voxels whose reference gradient magnitude (central differences,
  per mm) exceeds its 90th percentile in the mask.
- Mutual information (nats) from a 64 x 64-bin joint histogram: Hiasa's measure between the MR and the synthetic CT
  when no paired CT exists; Hiasa's Fig. 4 reports the mean over slices (``mutual_information_per_slice``).
- ``paper_metrics``: the set each paper reports, chosen by preset (``metric_set``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from skimage.metrics import structural_similarity

TISSUES = ("air", "soft_tissue", "bone")
SSIM_SIGMA = 1.5                # Wang et al. 2004: Gaussian window, sigma 1.5 ...
SSIM_WINDOW = 11                # ... truncated at 3.5 sigma by scikit-image: 11 x 11
METRIC_SETS = {"yang2018": ("mae", "psnr", "ssim", "ssim_hg"),
               "hiasa2018": ("mae_255", "psnr_255", "mi_mr_sct_slices", "mi_mr_sct")}


def _as_mask(mask: Optional[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask (nonzero = inside), all-true when None; refuses a wrong shape or an empty mask."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}; pass a mask of the same grid")
    mask = mask != 0
    if not mask.any():
        raise ValueError("mask is empty (no voxel inside); pass a mask that covers the region to evaluate")
    return mask


def _pair(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 views/copies of pred and ref plus the boolean mask, after checking shapes and finiteness."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}; "
                         "resample both onto the same grid first")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected 2D images or 3D volumes, got {pred.ndim}D arrays of shape {pred.shape}")
    mask = _as_mask(mask, pred.shape)
    for name, array in (("prediction", pred), ("reference", ref)):
        if not np.isfinite(array[mask]).all():
            raise ValueError(f"{name} contains NaN or infinite values inside the mask; fix or mask them out")
    return pred, ref, mask


def _check_range(data_range: float) -> None:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive (e.g. 4500 for CT in [-1000, 3500] HU), got {data_range}")


def mae(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute error, mean over the mask of |pred - ref|."""
    pred, ref, mask = _pair(pred, ref, mask)
    return float(np.abs(pred[mask] - ref[mask]).mean())


def psnr(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None, data_range: float = 4500.0) -> float:
    """PSNR = 20 log10(data_range / sqrt(MSE)) in dB over the mask; inf when the images agree exactly."""
    _check_range(data_range)
    pred, ref, mask = _pair(pred, ref, mask)
    mse = np.mean((pred[mask] - ref[mask]) ** 2)
    return float("inf") if mse == 0 else float(20.0 * np.log10(data_range / np.sqrt(mse)))


def _ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float, axis: int) -> np.ndarray:
    """Per-pixel SSIM map (Gaussian 11 x 11 window, sigma 1.5); 3D arrays are scored as 2D slices along ``axis``."""
    _check_range(data_range)
    if pred.ndim == 3 and not -3 <= axis < 3:
        raise ValueError(f"axis must be -3..2 for a 3D volume, got {axis}")
    in_plane = [n for i, n in enumerate(pred.shape) if pred.ndim == 2 or i != axis % pred.ndim]
    if min(in_plane) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs slices of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its window), got "
                         f"slices of {in_plane} from shape {pred.shape}; for 3D volumes choose the slice axis with "
                         "`axis`")
    channel_axis = axis if pred.ndim == 3 else None
    _, smap = structural_similarity(ref, pred, data_range=data_range, channel_axis=channel_axis, full=True,
                                    gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False)
    return smap


def ssim(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None, data_range: float = 4500.0,
         axis: int = 0) -> float:
    """Mean over the mask of the SSIM map (slice-wise along ``axis`` for 3D volumes)."""
    pred, ref, mask = _pair(pred, ref, mask)
    return float(_ssim_map(pred, ref, data_range, axis)[mask].mean())


def gradient_magnitude(image: np.ndarray, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """|grad image| from central differences (np.gradient), per unit of ``spacing`` (one value per axis)."""
    image = np.asarray(image, dtype=np.float64)
    spacing = (1.0,) * image.ndim if spacing is None else tuple(spacing)
    if len(spacing) != image.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must give one positive value per axis ({image.ndim}), got {spacing}")
    return np.sqrt(sum(g ** 2 for g in np.gradient(image, *spacing)))


def high_gradient_mask(ref: np.ndarray, mask: Optional[np.ndarray] = None, percentile: float = 90.0,
                       spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Voxels of the mask whose reference gradient magnitude is strictly above its ``percentile`` in the mask.

    Strict ">" keeps flat regions out: on a piecewise-constant image where most gradients are 0 the threshold is 0
    and exactly the edge voxels are selected. A flat reference gives an empty mask.
    """
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    ref = np.asarray(ref, dtype=np.float64)
    mask = _as_mask(mask, ref.shape)
    magnitude = gradient_magnitude(ref, spacing)
    return mask & (magnitude > np.percentile(magnitude[mask], percentile))


def ssim_high_gradient(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None,
                       data_range: float = 4500.0, percentile: float = 90.0,
                       spacing: Optional[Sequence[float]] = None, axis: int = 0) -> float:
    """Yang's SSIM(HG): SSIM map averaged over ``high_gradient_mask(ref, mask)``; nan when the reference is flat."""
    pred, ref, mask = _pair(pred, ref, mask)
    return _masked_mean(_ssim_map(pred, ref, data_range, axis), high_gradient_mask(ref, mask, percentile, spacing))


def _masked_mean(values: np.ndarray, region: np.ndarray) -> float:
    """Mean of values in region; nan for an empty region (a class or edge set absent from this image)."""
    return float(values[region].mean()) if region.any() else float("nan")


def mae_per_tissue(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None,
                   air_max: float = -200.0, bone_min: float = 250.0) -> dict[str, float]:
    """MAE per reference-CT class: air (ref < air_max), soft tissue (air_max <= ref < bone_min), bone (ref >= bone_min).

    Classes come from the reference HU; a class absent from the mask gets nan.
    """
    if not air_max < bone_min:
        raise ValueError(f"air_max ({air_max}) must be below bone_min ({bone_min})")
    pred, ref, mask = _pair(pred, ref, mask)
    error = np.abs(pred - ref)
    classes = (ref < air_max, (ref >= air_max) & (ref < bone_min), ref >= bone_min)
    return {tissue: _masked_mean(error, mask & region) for tissue, region in zip(TISSUES, classes)}


def mae_psnr_255(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None,
                 ct_window: Sequence[float] = (-150.0, 350.0)) -> dict[str, float]:
    """Hiasa sec. 3.1: MAE and PSNR = 20 log10(255 / sqrt(MSE)) of CT normalised as in their sec. 2.2, i.e. HU
    clipped to ``ct_window`` and mapped linearly to [0, 255]. Keys: mae_255, psnr_255."""
    low, high = (float(v) for v in ct_window)
    if not high > low:
        raise ValueError(f"ct_window must have high > low, got {tuple(ct_window)}")
    pred, ref, mask = _pair(pred, ref, mask)
    to_bytes = lambda x: (np.clip(x, low, high) - low) * (255.0 / (high - low))  # noqa: E731
    pred_255, ref_255 = to_bytes(pred), to_bytes(ref)
    return {"mae_255": mae(pred_255, ref_255, mask), "psnr_255": psnr(pred_255, ref_255, mask, 255.0)}


def mutual_information_per_slice(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None, axis: int = 0,
                                 bins: int = 64) -> float:
    """Hiasa Fig. 4: the mean over slices (along ``axis``) of the 2D mutual information of each slice within the
    mask; slices without mask voxels are left out."""
    a, b, mask = _pair(a, b, mask)
    if a.ndim != 3:
        raise ValueError(f"per-slice mutual information needs 3D volumes, got shape {a.shape}")
    a, b, mask = (np.moveaxis(x, axis, 0) for x in (a, b, mask))
    return float(np.mean([mutual_information(x, y, m, bins) for x, y, m in zip(a, b, mask) if m.any()]))


def mutual_information(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None, bins: int = 64) -> float:
    """MI = sum p(x, y) ln[p(x, y) / (p(x) p(y))] in nats, from a ``bins`` x ``bins`` joint histogram over the mask.

    Invariant to invertible intensity remaps as long as the bins keep distinct values apart, so it compares
    different modalities (MR vs synthetic CT). Hiasa reports the mean over slices: call it per slice for that.
    """
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins}")
    a, b, mask = _pair(a, b, mask)
    joint, _, _ = np.histogram2d(a[mask], b[mask], bins=int(bins))
    p = joint / joint.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / (px * py)[nonzero])))


def dice(pred_labels: np.ndarray, ref_labels: np.ndarray, labels: Optional[Sequence[int]] = None) -> dict[int, float]:
    """Dice = 2 |P_l & R_l| / (|P_l| + |R_l|) per label l.

    ``labels`` defaults to every nonzero label in either map (0 is background). A label absent from both maps
    gets nan (undefined, not a perfect score), so that np.nanmean over labels ignores it.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"shape mismatch: predicted labels {pred_labels.shape} vs reference {ref_labels.shape}")
    for name, array in (("predicted", pred_labels), ("reference", ref_labels)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} label map has dtype {array.dtype}; label maps must be integer "
                             "(round and cast with .astype(int) if they hold whole numbers)")

    def counts(values: np.ndarray) -> dict[int, int]:
        uniq, n = np.unique(values, return_counts=True)
        return dict(zip(uniq.tolist(), n.tolist()))

    n_pred, n_ref = counts(pred_labels), counts(ref_labels)
    n_both = counts(pred_labels[pred_labels == ref_labels])
    if labels is None:
        labels = sorted((set(n_pred) | set(n_ref)) - {0})
    result = {}
    for label in (int(x) for x in labels):
        total = n_pred.get(label, 0) + n_ref.get(label, 0)
        result[label] = 2.0 * n_both.get(label, 0) / total if total else float("nan")
    return result


def evaluate(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None, data_range: float = 4500.0,
             spacing: Optional[Sequence[float]] = None, axis: int = 0) -> dict[str, float]:
    """Yang's four metrics (MAE, PSNR, SSIM, SSIM(HG)) plus MAE per tissue class, all within the mask.

    Keys: mae, psnr, ssim, ssim_hg, mae_air, mae_soft_tissue, mae_bone. SSIM is slice-wise along ``axis``; the
    other defaults are those of the single-metric functions; ``spacing`` (per axis) enters only the gradient
    magnitude of SSIM(HG).
    """
    pred, ref, mask = _pair(pred, ref, mask)
    smap = _ssim_map(pred, ref, data_range, axis)
    result = {
        "mae": mae(pred, ref, mask),
        "psnr": psnr(pred, ref, mask, data_range),
        "ssim": float(smap[mask].mean()),
        "ssim_hg": _masked_mean(smap, high_gradient_mask(ref, mask, spacing=spacing)),
    }
    result.update({f"mae_{tissue}": value for tissue, value in mae_per_tissue(pred, ref, mask).items()})
    return result


def metric_set(preset: str) -> str:
    """The paper whose metrics a preset reports: "hiasa2018" for hiasa2018, else "yang2018" (Yang's comparison
    includes cycleGAN, its PBS variant and the paired upper bound)."""
    return "hiasa2018" if preset == "hiasa2018" else "yang2018"


def paper_metrics(pred: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray], preset: str,
                  ct_window: Sequence[float], axis: int = 0, spacing: Optional[Sequence[float]] = None,
                  mr: Optional[np.ndarray] = None) -> dict[str, float]:
    """The metrics the preset's paper reports (``METRIC_SETS``), slices along ``axis`` (the model's plane).

    yang2018: MAE (HU), PSNR and SSIM with data range = the CT window's width (4500 for [-1000, 3500]), SSIM(HG).
    hiasa2018: MAE and PSNR on the [0, 255] scale of ``ct_window``; with ``mr``, MI(MR, sCT) per slice (Fig. 4) and
    over the volume.
    """
    if metric_set(preset) == "yang2018":
        result = evaluate(pred, ref, mask, float(ct_window[1] - ct_window[0]), spacing, axis)
        return {key: result[key] for key in METRIC_SETS["yang2018"]}
    result = mae_psnr_255(pred, ref, mask, ct_window)
    if mr is not None:
        result["mi_mr_sct_slices"] = mutual_information_per_slice(mr, pred, mask, axis)
        result["mi_mr_sct"] = mutual_information(mr, pred, mask)
    return result
