"""Yang's MR intensity reference: the white-matter peak identified by fuzzy C-means (Yang 2018 sec. 3.1).

MR has no physical unit, so each volume is scaled so that a reference intensity lands on a fixed value
(``preprocessing`` holds the choice of reference). Here: fuzzy C-means with 3 classes (the T1 brain's CSF, grey and
white matter) on the intensities of the head at least 10 mm inside its surface (scalp fat, as bright as white
matter in T1, lies in the outer 10 mm; Yang does not say how the brain was delimited: this depth is the project's
choice); the white-matter class is the brightest one holding at least 20 % of those voxels (a smaller bright class
is contrast enhancement, vessels or fat, as in a contrast-enhanced T1, while white matter is the largest tissue of
the brain) and its peak is the mode of the intensities of its voxels.
On the project's head phantoms (64 x 64 x 48 voxels of 3 mm, N4-corrected) the peak lies within 1.5 % of the
median of the voxels labelled white matter (Testing/engine/test_mr_normalization.py).

FCM (Bezdek 1981) minimises J = sum_i sum_k u_ik^m (x_i - c_k)^2 with sum_k u_ik = 1, alternating
    c_k = sum_i u_ik^m x_i / sum_i u_ik^m   and   u_ik = 1 / sum_j (|x_i - c_k| / |x_i - c_j|)^(2 / (m - 1)).
It is 30 lines of numpy on 1D intensities, so no library is needed (scikit-fuzzy would add a dependency for it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes, distance_transform_edt
from skimage.filters import threshold_otsu

SCALP_DEPTH_MM = 10.0      # the white-matter peak is sought this deep inside the head
MIN_CLASS_SHARE = 0.2      # the white-matter class holds at least this share of the voxels searched
MAX_SAMPLES = 200_000       # FCM on a regular subsample of at most this many voxels (three 1D centres)
_PEAK_BINS = 128
_PEAK_SMOOTHING_BINS = 2.0  # Gaussian sigma of the histogram smoothing before its mode is taken


class NormalizationError(ValueError):
    """The MR cannot be normalised (no foreground, constant intensities); the message says why."""


def fuzzy_c_means(values: np.ndarray, classes: int = 3, fuzziness: float = 2.0, iterations: int = 300,
                  tolerance: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Fuzzy C-means of 1D ``values`` -> (centres sorted ascending (classes,), memberships (n, classes)).

    Deterministic: the centres start at the (k + 0.5) / classes quantiles; iteration stops when no centre moves by
    more than ``tolerance`` times the value range.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if classes < 2 or fuzziness <= 1:
        raise ValueError(f"fuzzy C-means needs classes >= 2 and fuzziness > 1, got {classes}, {fuzziness}")
    if x.size < classes:
        raise NormalizationError(f"fuzzy C-means needs at least {classes} values, got {x.size}")
    spread = float(x.max() - x.min())
    if spread <= 0:
        raise NormalizationError("the MR intensities are constant; there are no tissue classes to find")
    centres = np.quantile(x, (np.arange(classes) + 0.5) / classes)
    exponent = 2.0 / (fuzziness - 1.0)
    for _ in range(iterations):
        distance = np.abs(x[:, None] - centres[None, :]) + 1e-12 * spread   # no 0 / 0 for a value on a centre
        inverse = distance ** -exponent
        memberships = inverse / inverse.sum(axis=1, keepdims=True)
        weights = memberships ** fuzziness
        updated = weights.T @ x / weights.sum(axis=0)
        moved = float(np.abs(updated - centres).max())
        centres = updated
        if moved <= tolerance * spread:
            break
    order = np.argsort(centres)
    distance = np.abs(x[:, None] - centres[None, order]) + 1e-12 * spread
    inverse = distance ** -exponent
    return centres[order], inverse / inverse.sum(axis=1, keepdims=True)


def inner_head(array: np.ndarray, spacing: Sequence[float], depth_mm: float = SCALP_DEPTH_MM) -> np.ndarray:
    """Voxels at least ``depth_mm`` inside the head: Otsu foreground, holes filled slice by slice along axis 0
    (axial slices of a canonical array: the skull ring closes in them), then a Euclidean distance in mm.

    ``spacing`` gives one voxel size per array axis.
    """
    if float(array.max()) <= float(array.min()):
        raise NormalizationError("the MR is constant; there is no anatomy to normalise")
    head = np.stack([binary_fill_holes(s) for s in array > threshold_otsu(array)])
    inner = distance_transform_edt(head, sampling=tuple(float(s) for s in spacing)) >= depth_mm
    if not inner.any():
        raise NormalizationError(f"no voxel lies {depth_mm:g} mm inside the head: the MR is too small or not a "
                                 "head, and Yang's white-matter peak needs one (models for other MR: train with "
                                 "--mr-scaling percentile)")
    return inner


def white_matter_peak(array: np.ndarray, spacing: Sequence[float], classes: int = 3) -> float:
    """Yang's white-matter peak: the mode of the intensities of the brightest FCM class of ``inner_head`` that holds
    at least MIN_CLASS_SHARE of its voxels.

    The mode (of a 128-bin histogram smoothed by a 2-bin Gaussian) rather than the class centre: it stays on the
    white matter when a few brighter voxels (fat, vessels) share the class.
    """
    values = _masked_sample(array, inner_head(array, spacing))
    _, memberships = fuzzy_c_means(values, classes)
    hard = memberships.argmax(axis=1)
    white = next((k for k in range(classes - 1, -1, -1) if np.mean(hard == k) >= MIN_CLASS_SHARE), classes - 1)
    counts, edges = np.histogram(values[hard == white], bins=_PEAK_BINS)
    offsets = np.arange(-4 * int(_PEAK_SMOOTHING_BINS), 4 * int(_PEAK_SMOOTHING_BINS) + 1)
    kernel = np.exp(-offsets ** 2 / (2 * _PEAK_SMOOTHING_BINS ** 2))
    smoothed = np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")
    peak = int(smoothed.argmax())
    return float((edges[peak] + edges[peak + 1]) / 2)


def _masked_sample(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The float64 values of ``array`` inside ``mask``, as a regular subsample of at most MAX_SAMPLES."""
    values = np.asarray(array)[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        raise NormalizationError("the MR has no foreground voxels to normalise (an empty head mask)")
    step = max(1, values.size // MAX_SAMPLES)
    return values[::step].astype(np.float64)
