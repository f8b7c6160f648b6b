"""Segmentation accuracy per structure: Dice and surface distances (mm), for label maps on one grid.

* Dice = 2 |P & R| / (|P| + |R|) (``MRtoCTSynthesisLib.metrics.dice``; nan when a structure is absent from both).
* Surface voxels are the voxels of a mask with a 6-connected neighbour outside it. For each surface voxel of P its
  distance (mm, using the voxel spacing) to the nearest surface voxel of R, and vice versa; the *mean surface
  distance* (MSD, also called average symmetric surface distance) is the mean of both sets together, HD95 the 95th
  percentile of both sets together. A structure present in only one map gets inf; absent from both, nan.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from MRtoCTSynthesisLib.metrics import dice

from .labels import LabelTable


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask (voxels with a face neighbour outside; the array border counts as outside)."""
    mask = np.asarray(mask, bool)
    return mask & ~binary_erosion(mask, generate_binary_structure(mask.ndim, 1), border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Optional[np.ndarray]:
    """Distances (mm) pred-surface -> ref-surface and ref-surface -> pred-surface, concatenated; None if either
    mask is empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() or not ref.any():
        return None
    sp, sr = surface(pred), surface(ref)
    sampling = tuple(float(s) for s in spacing)
    to_ref = distance_transform_edt(~sr, sampling=sampling)
    to_pred = distance_transform_edt(~sp, sampling=sampling)
    return np.concatenate([to_ref[sp], to_pred[sr]])


def mean_surface_distance(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric mean surface distance in mm (see module docstring)."""
    distances = surface_distances(pred, ref, spacing)
    if distances is None:
        return float("nan") if not np.any(pred) and not np.any(ref) else float("inf")
    return float(distances.mean())


def evaluate_labels(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], table: Optional[LabelTable] = None,
                    labels: Optional[Sequence[int]] = None) -> dict:
    """{structure name (or str(value)): {"dice", "msd_mm", "hd95_mm"}} for label maps on one grid.

    ``spacing`` is per array axis (SimpleITK arrays: (z, y, x)). Structures default to the table's, else every
    nonzero value in either map.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}; resample onto one grid first")
    if labels is None:
        labels = [s.value for s in table.structures] if table is not None else \
            sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
    scores = dice(pred.astype(np.int64), ref.astype(np.int64), labels)
    result = {}
    for value in labels:
        name = table.by_value(value).name if table is not None else str(value)
        p, r = pred == value, ref == value
        distances = surface_distances(p, r, spacing)
        if distances is None:
            msd = hd95 = float("nan") if not p.any() and not r.any() else float("inf")
        else:
            msd, hd95 = float(distances.mean()), float(np.percentile(distances, 95))
        result[name] = {"dice": scores[int(value)], "msd_mm": msd, "hd95_mm": hd95}
    return result
