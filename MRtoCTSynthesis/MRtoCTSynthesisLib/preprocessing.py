"""From a volume to normalised 2D slices and back: the one definition shared by training and synthesis.

MR:  [N4] -> canonical LPS -> scaling to a reference intensity -> MR window -> [-1, 1] -> slices along the plane.
CT:  canonical LPS -> CT window (HU) -> [-1, 1] -> slices along the plane.
The ``Normalization`` travels inside every model file so synthesis repeats training's steps exactly.

MR scaling (``mr_scaling``), since MR has no physical unit:
* ``wm_peak``: Yang's white-matter peak by fuzzy C-means (``mr_normalization``) becomes ``mr_wm_peak_value``.
* ``percentile``: the ``mr_percentile``-th percentile of the body (Otsu foreground) becomes ``mr_percentile_value``.
* ``none``: the scanner's values as they are.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from skimage.filters import threshold_otsu

from . import volumes as V
from .mr_normalization import white_matter_peak

log = logging.getLogger(__name__)
MODALITIES = ("mr", "ct")
MR_SCALINGS = ("wm_peak", "percentile", "none")
CT_BACKGROUND_HU = -1000.0
N4_ITERATIONS = (50, 50, 30, 20)
WM_PEAK_VALUE = 2000.0     # Yang presets: white matter at 4/7 of the MR window [0, 3500] leaves room for fat
SHARP_SLICE_RATIO = 2.0    # voxels longer than this many times their shortest side are thick slices (``is_thick``)


def is_thick(spacing: Sequence[float]) -> bool:
    """Voxels (or pixels) more than SHARP_SLICE_RATIO times longer one way than another: a thick-slice series."""
    return max(spacing) > SHARP_SLICE_RATIO * min(spacing)


@dataclass(frozen=True)
class Normalization:
    """Everything that decides what the generators see; stored in model files as JSON.

    Fields after ``pixel_spacing_mm`` came later; their defaults reproduce what older model files did.
    """

    plane: str
    image_size: tuple
    ct_window: tuple
    mr_window: tuple
    mr_percentile: Optional[float] = 99.5
    mr_percentile_value: float = 3000.0
    n4: bool = False
    pixel_spacing_mm: Optional[tuple] = None
    mr_scaling: str = "percentile"
    mr_wm_peak_value: float = WM_PEAK_VALUE
    n4_shrink: int = 4
    n4_iterations: tuple = N4_ITERATIONS
    extra_planes: tuple = ()       # the network also runs along these planes; synthesis averages the HU (issue 21)

    @property
    def planes(self) -> tuple:
        """Every plane the network runs along, the primary ``plane`` first."""
        return (self.plane, *self.extra_planes)

    def planes_for(self, lps_spacing: tuple) -> tuple:
        """The planes to run on a volume with voxel sizes ``lps_spacing`` (L, P, S): the primary plane, and each extra
        plane whose slices are sharp (in-plane pixel aspect <= SHARP_SLICE_RATIO). A coronal or sagittal slice of a
        5 mm axial series smears each row over 5 mm; averaging that pass in blurs the skull that the sharp plane
        draws (issue 21: the three-plane model lost the vault of thick-slice scans)."""
        return (self.plane, *(plane for plane in self.extra_planes
                              if not is_thick(V.slice_spacing(lps_spacing, plane))))

    def along(self, plane: str) -> "Normalization":
        """This normalisation cutting slices along ``plane`` alone (what one pass of the network sees)."""
        return replace(self, plane=plane, extra_planes=())

    def __post_init__(self) -> None:
        if self.mr_scaling not in MR_SCALINGS:
            raise ValueError(f"mr_scaling {self.mr_scaling!r} is not one of {MR_SCALINGS}")
        if self.mr_scaling == "percentile" and self.mr_percentile is None:
            raise ValueError("mr_scaling 'percentile' needs mr_percentile (use mr_scaling 'none' for no scaling)")
        if int(self.n4_shrink) < 1 or not self.n4_iterations or min(self.n4_iterations) < 1:
            raise ValueError(f"N4 needs n4_shrink >= 1 and iterations >= 1 per level, got {self.n4_shrink}, "
                             f"{self.n4_iterations}")

    @classmethod
    def from_config(cls, config) -> "Normalization":
        return cls(plane=config.plane, image_size=tuple(config.image_size), ct_window=tuple(config.ct_window),
                   mr_window=tuple(config.mr_window), mr_percentile=config.mr_percentile,
                   mr_percentile_value=config.mr_percentile_value, n4=config.n4,
                   pixel_spacing_mm=config.pixel_spacing_mm, mr_scaling=config.mr_scaling,
                   mr_wm_peak_value=config.mr_wm_peak_value, n4_shrink=config.n4_shrink,
                   n4_iterations=tuple(config.n4_iterations), extra_planes=tuple(config.extra_planes))

    @classmethod
    def from_json(cls, values: dict) -> "Normalization":
        values = dict(values)
        for key in ("image_size", "ct_window", "mr_window", "pixel_spacing_mm", "n4_iterations", "extra_planes"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"invalid normalization record {values}: {error}") from error

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def window(self, modality: str) -> V.IntensityWindow:
        _check_modality(modality)
        return V.IntensityWindow(*(self.mr_window if modality == "mr" else self.ct_window))


@dataclass
class PreparedVolume:
    """Normalised slices in display orientation plus what is needed to put results back on the input grid."""

    slices: np.ndarray                 # (N, H, W) float32 in [-1, 1]
    pixel_spacing: tuple               # in-plane (row, column) mm
    canonical: V.Geometry              # the canonical grid (its geometry only: no second copy of the voxels)
    reorientation: V.Reorientation
    mr_scale: float = 1.0              # MR scaling factor applied (1 for CT)
    n4_seconds: float = 0.0            # time spent in N4 (0 when off)


def prepare_volume(image: sitk.Image, modality: str, norm: Normalization, oblique: str = "resample",
                   progress: Optional[Callable[[str], None]] = None) -> PreparedVolume:
    """Normalise a volume and cut it into slices along ``norm.plane``; the input image is not modified.

    ``progress(message)`` hears about the slow step (N4) and its duration, which is also logged.
    """
    _check_modality(modality)
    n4_seconds = 0.0
    if modality == "mr" and norm.n4:
        report = progress or (lambda message: None)
        report(f"N4 bias correction (shrink {norm.n4_shrink})")
        began = time.time()
        image = V.n4_bias_correction(image, shrink=norm.n4_shrink, iterations=norm.n4_iterations)
        n4_seconds = time.time() - began
        log.info("N4 bias correction: %.1f s", n4_seconds)
        report(f"N4 bias correction done in {n4_seconds:.1f} s")
    background = 0.0 if modality == "mr" else CT_BACKGROUND_HU
    canonical, how = V.to_canonical(image, oblique=oblique, default_value=background)
    grid = V.Geometry.of(canonical)
    array = V.array_of(canonical)  # our own float32 copy: normalised in place from here on
    del canonical
    scale = mr_scale_factor(array, grid.spacing[::-1], norm) if modality == "mr" else 1.0
    if scale != 1.0:
        array *= np.float32(scale)
    norm.window(modality).to_network(array, in_place=True)
    slices = np.ascontiguousarray(V.volume_to_slices(array, norm.plane))
    del array
    return PreparedVolume(slices, V.slice_spacing(grid.spacing, norm.plane), grid, how, scale, n4_seconds)


def mr_scale_factor(array: np.ndarray, spacing: tuple, norm: Normalization) -> float:
    """The factor that puts the MR's reference intensity on its target value (``norm.mr_scaling``).

    ``array`` is a canonical (K, J, I) volume with voxel sizes ``spacing`` per array axis.
    """
    if norm.mr_scaling == "none":
        return 1.0
    if norm.mr_scaling == "wm_peak":
        peak = white_matter_peak(array, spacing)
        if peak <= 0:
            raise V.VolumeError(f"the MR's white-matter peak is {peak} <= 0; is this a T1 magnitude image?")
        return norm.mr_wm_peak_value / peak
    return V.robust_scale_factor(array, foreground_of(array), norm.mr_percentile, norm.mr_percentile_value)


def restore_volume(slices_hu: np.ndarray, prepared: PreparedVolume, plane: str,
                   background: float = CT_BACKGROUND_HU) -> sitk.Image:
    """(N, H, W) slices on the canonical grid -> a float32 image on the original input grid."""
    canonical_array = np.ascontiguousarray(V.slices_to_volume(slices_hu, plane), dtype=np.float32)
    image = V.image_like(canonical_array, prepared.canonical)
    return V.from_canonical(image, prepared.reorientation, default_value=background)


def foreground_of(array: np.ndarray) -> np.ndarray:
    """Voxels above the Otsu threshold: the body, for percentile statistics (cheap; no morphology)."""
    if float(array.max()) <= float(array.min()):
        raise V.VolumeError("the volume is constant; there is no anatomy to normalise")
    return array > threshold_otsu(array)


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")


def normalization_metadata(norm: Normalization) -> dict:
    """The model-file fields that carry a Normalization (see modelfile.validate_metadata)."""
    record = norm.to_json()
    return {"plane": record["plane"], "extra_planes": record["extra_planes"], "image_size": record["image_size"],
            "ct_window": record["ct_window"], "mr_window": record["mr_window"],
            "pixel_spacing_mm": record["pixel_spacing_mm"],
            "mr_normalization": {"method": record["mr_scaling"], "percentile": record["mr_percentile"],
                                 "value": record["mr_percentile_value"], "wm_peak_value": record["mr_wm_peak_value"],
                                 "n4": record["n4"], "n4_shrink": record["n4_shrink"],
                                 "n4_iterations": record["n4_iterations"]}}


def normalization_from_metadata(metadata: dict) -> Normalization:
    """Inverse of ``normalization_metadata``: what synthesis must repeat for a model file.

    Files written before the method and N4 settings were recorded read as what that engine did: the percentile
    scaling (none when the percentile is null), N4 only when "n4" is true, with the then fixed shrink 4 and
    iterations (50, 50, 30, 20); files without "extra_planes" run along their one plane.
    """
    mr = metadata["mr_normalization"]
    try:
        percentile = mr["percentile"]
        return Normalization(plane=metadata["plane"], image_size=tuple(metadata["image_size"]),
                             ct_window=tuple(metadata["ct_window"]), mr_window=tuple(metadata["mr_window"]),
                             mr_percentile=percentile, mr_percentile_value=float(mr["value"]),
                             n4=bool(mr.get("n4", False)),
                             pixel_spacing_mm=None if metadata["pixel_spacing_mm"] is None
                             else tuple(metadata["pixel_spacing_mm"]),
                             mr_scaling=mr.get("method", "none" if percentile is None else "percentile"),
                             mr_wm_peak_value=float(mr.get("wm_peak_value", WM_PEAK_VALUE)),
                             n4_shrink=int(mr.get("n4_shrink", 4)),
                             n4_iterations=tuple(int(n) for n in mr.get("n4_iterations", N4_ITERATIONS)),
                             extra_planes=tuple(metadata.get("extra_planes", ())))
    except KeyError as error:
        raise ValueError(f"model metadata lacks the normalisation field {error}; was it made by this engine?") from error
