"""Reference predictors that every quality table shows beside the trained models, scored like them.

* ``constant``: one HU value everywhere in the body, the median HU inside the body masks of the training CTs (the
  best constant for the MAE on the training data).
* ``mr-lookup``: sCT(x) = T[bin(MR(x))], a table of the median training-CT HU per MR-intensity bin inside the body,
  fitted on the training pairs. The MR is normalised as the networks' input is (the same ``Normalization``: N4 where
  it is on, white-matter-peak or percentile scaling, MR window), 128 bins over the window; empty bins take the value
  of the nearest filled bin. What intensity alone can tell.
* ``class-mean floor``: perfect labels (phantoms only): every label at the mean HU of that label in the subject's own
  CT. It needs the exact tissue map, so it is a floor that no MR-to-CT method is expected to reach.

A model that does not beat ``constant`` has not learned the mapping; each model's MAE is also reported as a fraction
of the constant's. Outside the evaluation mask every baseline is -1000 HU (air), which only SSIM near the mask's edge
sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

CONSTANT, LOOKUP, FLOOR = "constant", "mr-lookup", "class-mean floor"
BASELINES = (CONSTANT, LOOKUP, FLOOR)
LOOKUP_BINS = 128
AIR_HU = -1000.0


@dataclass
class Subject:
    """One paired subject: MR, its registered CT (HU, same grid), an optional evaluation mask and label map."""

    name: str
    mr: object                       # SimpleITK images
    ct: object
    mask: Optional[object] = None    # None: the CT body mask (CT > -500 HU, closed, holes filled)
    labels: Optional[object] = None  # phantoms only: the exact tissue labels (for the class-mean floor)
    seed: Optional[int] = None       # phantoms only

    @classmethod
    def of_phantom(cls, phantom, name: str) -> "Subject":
        return cls(name, phantom.mr, phantom.ct, None, phantom.labels, int(phantom.seed))


def evaluation_mask(subject) -> np.ndarray:
    """The subject's evaluation mask (its own, else the CT body mask: CT > -500 HU, closed, holes filled)."""
    from . import volumes as V

    image = subject.mask if subject.mask is not None else V.body_mask(subject.ct, threshold=-500.0)
    return V.array_of(image) > 0


@dataclass(frozen=True)
class Baselines:
    """The fitted reference predictors (fitted once per benchmark on the training subjects)."""

    constant_hu: float
    lookup_edges: np.ndarray      # LOOKUP_BINS + 1 edges in normalised MR units ([-1, 1])
    lookup_hu: np.ndarray         # LOOKUP_BINS values
    norm: object                  # the networks' preprocessing.Normalization (its MR steps are applied)

    def to_json(self) -> dict:
        return {"constant_hu": self.constant_hu, "lookup_hu": [round(float(v), 2) for v in self.lookup_hu],
                "mr_normalization": self.norm.to_json()}

    def normalised_mr(self, mr) -> np.ndarray:
        """The MR image as the networks see it, in [-1, 1] on its own grid: ``prepare_volume``'s intensity steps (N4
        where on, then its scale factor, then the MR window) without the reorientation and slicing."""
        from . import volumes as V
        from .preprocessing import mr_scale_factor

        if self.norm.n4:
            mr = V.n4_bias_correction(mr, shrink=self.norm.n4_shrink, iterations=self.norm.n4_iterations)
        array = V.array_of(mr).astype(np.float32)
        array *= np.float32(mr_scale_factor(array, tuple(mr.GetSpacing())[::-1], self.norm))
        return self.norm.window("mr").to_network(array)

    def predict(self, name: str, subject) -> Optional[np.ndarray]:
        """The baseline's sCT (HU) on the subject's grid, or None when it cannot be made (the floor without labels)."""
        from . import volumes as V

        mask = evaluation_mask(subject)
        sct = np.full(mask.shape, AIR_HU, np.float32)
        if name == CONSTANT:
            sct[mask] = self.constant_hu
        elif name == LOOKUP:
            sct[mask] = self.lookup_hu[_bin_of(self.normalised_mr(subject.mr)[mask], self.lookup_edges)]
        elif name == FLOOR:
            if subject.labels is None:
                return None
            labels, ct = V.array_of(subject.labels, np.int32), V.array_of(subject.ct)
            for label in np.unique(labels[mask]):
                inside = mask & (labels == label)
                sct[inside] = float(ct[inside].mean())
        else:
            raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
        return sct


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def fit_baselines(subjects: Sequence, norm) -> Baselines:
    """Fit the constant and the MR-intensity lookup on the training subjects (inside their evaluation masks); ``norm``
    is the networks' ``preprocessing.Normalization``."""
    from . import volumes as V

    edges = np.linspace(-1.0, 1.0, LOOKUP_BINS + 1)
    probe = Baselines(0.0, edges, np.zeros(LOOKUP_BINS), norm)
    hu, bins = [], []
    for subject in subjects:
        mask = evaluation_mask(subject)
        hu.append(V.array_of(subject.ct)[mask])
        bins.append(_bin_of(probe.normalised_mr(subject.mr)[mask], edges))
    hu, bins = np.concatenate(hu), np.concatenate(bins)
    order = np.argsort(bins, kind="stable")
    hu, bins = hu[order], bins[order]
    filled = np.unique(bins)
    medians = np.array([np.median(part) for part in np.split(hu, np.searchsorted(bins, filled[1:]))])
    centres = np.arange(LOOKUP_BINS)
    nearest = filled[np.abs(centres[:, None] - filled[None, :]).argmin(axis=1)]
    table = medians[np.searchsorted(filled, nearest)]
    return Baselines(float(np.median(hu)), edges, table.astype(np.float64), norm)
