"""Segmentation inputs and targets as 2D slices: the one definition shared by training and inference.

A channel is a volume on the subject's grid: "mr" (real MR at inference, G_MR(CT) in training) is normalised as an
MR, "sct" (G_CT(MR) at inference, the real CT in training) as a CT (``preprocessing.prepare_volume`` with the
segmentation model's Normalization). Label maps go through the same canonical orientation with nearest-neighbour
interpolation and are cut along the same plane, so slice i of every channel and of the labels is the same tissue.
In-plane, slices are resized/padded onto the network canvas (a multiple of 16) with ``volumes.plan_slice_fit``:
bilinear for images, nearest for labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.atomic import write_atomically
from MRtoCTSynthesisLib.preprocessing import Normalization, PreparedVolume, prepare_volume

from .unet import MULTIPLE

log = logging.getLogger(__name__)
MODALITY_OF_CHANNEL = {"mr": "mr", "sct": "ct"}
CACHE_VERSION = 1


@dataclass
class PreparedChannels:
    slices: np.ndarray              # (N, C, h, w) float32 in [-1, 1], display orientation along the plane
    reference: PreparedVolume       # geometry of the first channel (canonical grid, reorientation)
    fit: V.SliceFit                 # how (h, w) slices go onto the network canvas


def check_same_grid(images: Mapping[str, sitk.Image], what: str = "channels") -> None:
    """All images must share one voxel grid (size, spacing, origin, direction)."""
    items = list(images.items())
    first_name, first = items[0]
    for name, image in items[1:]:
        if not V.Geometry.of(image).matches(V.Geometry.of(first), tol=1e-4):
            raise V.VolumeError(f"{what}: {name} is not on the grid of {first_name} (size {image.GetSize()} vs "
                                f"{first.GetSize()}, spacing/origin/direction must match too); resample it first")


def plan_fit(prepared: PreparedVolume, norm: Normalization, canvas: Optional[Sequence[int]] = None) -> V.SliceFit:
    """In-plane resize/pad of the slices onto the canvas (``norm.image_size`` or a larger ``canvas``), x16."""
    fit = V.plan_slice_fit(prepared.slices.shape[1:], prepared.pixel_spacing, norm.image_size, norm.pixel_spacing_mm,
                           multiple=MULTIPLE)
    if canvas is not None:
        fit = fit.on_canvas(tuple(max(c, f) for c, f in zip(canvas, fit.canvas_shape)))
    return fit


def prepare_channels(images: Mapping[str, sitk.Image], channels: Sequence[str], norm: Normalization,
                     oblique: str = "resample", canvas: Optional[Sequence[int]] = None) -> PreparedChannels:
    """Normalise each channel volume and cut it into slices (N, C, h, w); all on the same grid."""
    missing = [c for c in channels if c not in images]
    if missing:
        raise ValueError(f"channels {missing} are needed but not given (have {sorted(images)})")
    check_same_grid({c: images[c] for c in channels})
    prepared = [prepare_volume(images[c], MODALITY_OF_CHANNEL[c], norm, oblique=oblique) for c in channels]
    stack = np.stack([p.slices for p in prepared], axis=1)
    return PreparedChannels(stack, prepared[0], plan_fit(prepared[0], norm, canvas))


def label_slices(labels: sitk.Image, plane: str, oblique: str = "resample") -> np.ndarray:
    """(N, h, w) integer slices of a label map, through the same canonical grid as ``prepare_volume`` (nearest)."""
    canonical, _ = V.to_canonical(labels, oblique=oblique, interpolator=sitk.sitkNearestNeighbor, default_value=0)
    return np.ascontiguousarray(V.volume_to_slices(sitk.GetArrayFromImage(canonical), plane))


def fit_images(slices: np.ndarray, fit: V.SliceFit) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) float32 on the canvas (bilinear, pad -1 = the bottom of each window)."""
    return V.fit_slices(torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)), fit, pad_value=-1.0)


def fit_labels(labels: np.ndarray, fit: V.SliceFit) -> torch.Tensor:
    """(N, h, w) -> (N, H, W) int64 on the canvas: nearest-neighbour resize, background padding."""
    x = torch.from_numpy(np.ascontiguousarray(labels).astype(np.float32))[:, None]
    if tuple(x.shape[-2:]) != tuple(fit.resized_shape):
        x = F.interpolate(x, size=tuple(fit.resized_shape), mode="nearest-exact")
    top, left = fit.offset
    bottom = fit.canvas_shape[0] - fit.resized_shape[0] - top
    right = fit.canvas_shape[1] - fit.resized_shape[1] - left
    return F.pad(x, (left, right, top, bottom), value=0.0)[:, 0].round().long()


# ------------------------------------------------------------------------------------------- training volumes

@dataclass
class SegVolume:
    """One training/validation subject on the (padded) canvas: images (N, C, H, W) float16, labels (N, H, W) uint8."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def file_key(path: os.PathLike) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}


def cache_key(record: dict) -> str:
    return hashlib.sha1(json.dumps({**record, "version": CACHE_VERSION}, sort_keys=True,
                                   default=str).encode()).hexdigest()[:20]


def load_cached(cache_dir: Optional[Path], name: str, key: str) -> Optional[SegVolume]:
    if cache_dir is None:
        return None
    path = cache_dir / f"{name}-{key}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return SegVolume(name, data["images"], data["labels"])


def store_cached(cache_dir: Optional[Path], volume: SegVolume, key: str) -> None:
    if cache_dir is None:
        return
    path = cache_dir / f"{volume.name}-{key}.npz"
    write_atomically(path, lambda temp: np.savez(temp, images=volume.images, labels=volume.labels), suffix=".npz")


def make_volume(name: str, images: Mapping[str, sitk.Image], labels: sitk.Image, channels: Sequence[str],
                norm: Normalization, canvas: Sequence[int]) -> SegVolume:
    """Channels + label map (same grid) -> a SegVolume on the padded canvas, only slices with some body in them."""
    check_same_grid({**{c: images[c] for c in channels}, "labels": labels}, f"subject {name}")
    prepared = prepare_channels(images, channels, norm, canvas=canvas)
    targets = label_slices(labels, norm.plane)
    if targets.shape != prepared.slices[:, 0].shape:
        raise V.VolumeError(f"subject {name}: label slices {targets.shape} do not match image slices "
                            f"{prepared.slices[:, 0].shape}")
    keep = targets.reshape(len(targets), -1).any(axis=1)
    if not keep.any():
        raise V.VolumeError(f"subject {name}: the label map is empty (all background)")
    images_fitted = fit_images(prepared.slices[keep], prepared.fit).numpy().astype(np.float16)
    labels_fitted = fit_labels(targets[keep], prepared.fit).numpy().astype(np.uint8)
    return SegVolume(name, images_fitted, labels_fitted)
