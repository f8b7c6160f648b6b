"""From a volume to normalised 2D slices and back: the one definition shared by training and synthesis.

MR:  [N4] -> canonical LPS -> robust percentile scaling -> MR window -> [-1, 1] -> slices along the plane.
CT:  canonical LPS -> CT window (HU) -> [-1, 1] -> slices along the plane.
The ``Normalization`` travels inside every model file so synthesis repeats training's steps exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
from skimage.filters import threshold_otsu

from . import volumes as V

MODALITIES = ("mr", "ct")
CT_BACKGROUND_HU = -1000.0


@dataclass(frozen=True)
class Normalization:
    """Everything that decides what the generators see; stored in model files as JSON."""

    plane: str
    image_size: tuple
    ct_window: tuple
    mr_window: tuple
    mr_percentile: Optional[float] = 99.5
    mr_percentile_value: float = 3000.0
    n4: bool = False
    pixel_spacing_mm: Optional[tuple] = None

    @classmethod
    def from_config(cls, config) -> "Normalization":
        return cls(plane=config.plane, image_size=tuple(config.image_size), ct_window=tuple(config.ct_window),
                   mr_window=tuple(config.mr_window), mr_percentile=config.mr_percentile,
                   mr_percentile_value=config.mr_percentile_value, n4=config.n4,
                   pixel_spacing_mm=config.pixel_spacing_mm)

    @classmethod
    def from_json(cls, values: dict) -> "Normalization":
        values = dict(values)
        for key in ("image_size", "ct_window", "mr_window", "pixel_spacing_mm"):
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
    mr_scale: float = 1.0              # MR robust-scaling factor applied (1 for CT)


def prepare_volume(image: sitk.Image, modality: str, norm: Normalization, oblique: str = "resample") -> PreparedVolume:
    """Normalise a volume and cut it into slices along ``norm.plane``; the input image is not modified."""
    _check_modality(modality)
    if modality == "mr" and norm.n4:
        image = V.n4_bias_correction(image)
    background = 0.0 if modality == "mr" else CT_BACKGROUND_HU
    canonical, how = V.to_canonical(image, oblique=oblique, default_value=background)
    grid = V.Geometry.of(canonical)
    array = V.array_of(canonical)  # our own float32 copy: normalised in place from here on
    del canonical
    scale = 1.0
    if modality == "mr" and norm.mr_percentile is not None:
        scale = V.robust_scale_factor(array, foreground_of(array), norm.mr_percentile, norm.mr_percentile_value)
        array *= np.float32(scale)
    norm.window(modality).to_network(array, in_place=True)
    slices = np.ascontiguousarray(V.volume_to_slices(array, norm.plane))
    del array
    return PreparedVolume(slices, V.slice_spacing(grid.spacing, norm.plane), grid, how, scale)


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
    return {"plane": record["plane"], "image_size": record["image_size"], "ct_window": record["ct_window"],
            "mr_window": record["mr_window"], "pixel_spacing_mm": record["pixel_spacing_mm"],
            "mr_normalization": {"percentile": record["mr_percentile"], "value": record["mr_percentile_value"],
                                 "n4": record["n4"]}}


def normalization_from_metadata(metadata: dict) -> Normalization:
    """Inverse of ``normalization_metadata``: what synthesis must repeat for a model file."""
    mr = metadata["mr_normalization"]
    try:
        return Normalization(plane=metadata["plane"], image_size=tuple(metadata["image_size"]),
                             ct_window=tuple(metadata["ct_window"]), mr_window=tuple(metadata["mr_window"]),
                             mr_percentile=mr["percentile"], mr_percentile_value=float(mr["value"]), n4=bool(mr["n4"]),
                             pixel_spacing_mm=None if metadata["pixel_spacing_mm"] is None
                             else tuple(metadata["pixel_spacing_mm"]))
    except KeyError as error:
        raise ValueError(f"model metadata lacks the normalisation field {error}; was it made by this engine?") from error
