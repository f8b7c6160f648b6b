"""Training data: find volumes in folders, check them before anything starts, cache their normalised slices.

Each volume is preprocessed once (``preprocessing.prepare_volume``, then resized/padded to the network canvas) into a
float16 ``.npy`` file in a cache folder and memory-mapped from then on, so a dataset larger than RAM trains and a
second run starts at once. The cache key covers the file (path, size, mtime) and every normalisation setting.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import volumes as V
from .atomic import write_atomically
from .preprocessing import Normalization, prepare_volume
from .sampling import SlicePair, make_sampler

log = logging.getLogger(__name__)
CACHE_VERSION = 1
CT_AIR_BELOW_HU = -500.0


class DatasetError(ValueError):
    """The training data cannot be used; the message names the folder or file and what to do."""


def find_volumes(folder: os.PathLike, role: str = "volume") -> list[Path]:
    """Volume files (NIfTI, NRRD, MHA) in ``folder`` and its sub-folders that hold DICOM files, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{role} folder {root} does not exist or is not a folder")
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.lower().endswith(V.VOLUME_SUFFIXES)]
    found += [p for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("*.dcm"))]
    if any(root.glob("*.dcm")):
        found.append(root)
    if not found:
        raise DatasetError(f"{role} folder {root} holds no volumes ({', '.join(V.VOLUME_SUFFIXES)} files or DICOM "
                           "series folders)")
    return found


def looks_like_ct(array: np.ndarray) -> bool:
    """CT in HU has air near -1000; MR magnitudes are >= 0: values below CT_AIR_BELOW_HU mean a CT."""
    return float(array.min()) < CT_AIR_BELOW_HU


def check_modality(array: np.ndarray, modality: str, path: os.PathLike) -> None:
    """Refuse an MR in the CT folder and vice versa (``looks_like_ct``)."""
    lowest = float(array.min())
    if modality == "ct" and not looks_like_ct(array):
        raise DatasetError(f"{path} is in the CT folder but has no values below {CT_AIR_BELOW_HU:g} (lowest "
                           f"{lowest:g}); a CT in Hounsfield units has air near -1000. Is it an MR?")
    if modality == "mr" and looks_like_ct(array):
        raise DatasetError(f"{path} is in the MR folder but has values down to {lowest:g}, like a CT in HU; "
                           "move it to the CT folder")


def check_folders(mr_folder: os.PathLike, ct_folder: os.PathLike, paired: bool = False) -> tuple[list, list]:
    """Find and check all training volumes (readable, 3D, right modality); raises DatasetError before training."""
    mr, ct = find_volumes(mr_folder, "MR"), find_volumes(ct_folder, "CT")
    for paths, modality in ((mr, "mr"), (ct, "ct")):
        for path in paths:
            try:
                check_modality(V.array_of(V.read_volume(path)), modality, path)
            except V.VolumeError as error:
                raise DatasetError(f"unreadable {modality.upper()} volume: {error}") from error
    if paired and [volume_stem(p) for p in mr] != [volume_stem(p) for p in ct]:
        raise DatasetError("paired training needs MR and CT volumes with the same names in both folders "
                           f"(MR: {[p.name for p in mr][:5]}..., CT: {[p.name for p in ct][:5]}...)")
    return mr, ct


def volume_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(V.VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class SliceCache:
    """Normalised, canvas-fitted slices of each volume as memory-mapped float16 arrays (N, H, W)."""

    def __init__(self, cache_dir: os.PathLike, norm: Normalization, canvas: Optional[Sequence[int]] = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.norm = norm
        self.canvas = tuple(canvas) if canvas is not None else tuple(norm.image_size)

    def key(self, path: Path, modality: str) -> str:
        stat = path.stat()
        record = {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns, "modality": modality,
                  "norm": self._norm_record(), "canvas": self.canvas, "version": CACHE_VERSION}
        return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]

    def _norm_record(self) -> dict:
        """The normalisation as the key sees it: a cache holds one plane's slices, so "extra_planes" (which a
        cache's normalisation never has) is left out and caches written before it existed stay valid."""
        record = self.norm.to_json()
        record.pop("extra_planes")
        return record

    def target(self, path: os.PathLike, modality: str) -> Path:
        """The cache file of ``path`` (it exists once the volume has been prepared)."""
        path = Path(path)
        return self.cache_dir / f"{volume_stem(path)}-{modality}-{self.key(path, modality)}.npy"

    def slices(self, path: os.PathLike, modality: str) -> np.ndarray:
        path = Path(path)
        target = self.target(path, modality)
        if not target.exists():
            self._build(path, modality, target)
        return np.load(target, mmap_mode="r")

    def _build(self, path: Path, modality: str, target: Path) -> None:
        image = V.read_volume(path)
        check_modality(V.array_of(image), modality, path)
        prepared = prepare_volume(image, modality, self.norm)
        fit = V.plan_slice_fit(prepared.slices.shape[1:], prepared.pixel_spacing, self.norm.image_size,
                               self.norm.pixel_spacing_mm)
        fit = fit.on_canvas(tuple(max(c, f) for c, f in zip(self.canvas, fit.canvas_shape)))
        fitted = V.fit_slices(torch.from_numpy(prepared.slices[:, None]), fit, pad_value=-1.0)[:, 0]
        write_atomically(target, lambda temp: np.save(temp, fitted.numpy().astype(np.float16)), suffix=".npy")
        log.info("cached %s (%s): %d slices%s", path.name, modality, fitted.shape[0],
                 f" (N4 bias correction {prepared.n4_seconds:.1f} s)" if prepared.n4_seconds else "")


@dataclass
class SliceBatch:
    mr: torch.Tensor          # (B, 1, H, W) in [-1, 1]
    ct: torch.Tensor          # (B, 1, H, W) in [-1, 1]
    pairs: list               # the SlicePair of each sample


class SliceDataset:
    """MR and CT slice stacks plus the sampler of the preset (random, position-based or paired)."""

    def __init__(self, mr: Sequence[np.ndarray], ct: Sequence[np.ndarray], sampling: str,
                 crop: Sequence[int], pbs_max_shift: int = 5) -> None:
        self.mr, self.ct, self.crop = list(mr), list(ct), tuple(crop)
        self.paired = sampling == "paired"
        self.sampler = make_sampler(sampling, [len(v) for v in self.mr], [len(v) for v in self.ct], pbs_max_shift)

    def batch(self, rng: np.random.Generator, size: int) -> SliceBatch:
        pairs = self.sampler.sample_batch(rng, size)
        mr, ct = [], []
        for pair in pairs:
            mr_slice = self.mr[pair.mr_volume][pair.mr_slice]
            ct_slice = self.ct[pair.ct_volume][pair.ct_slice]
            mr_offset = self._crop_offset(rng, mr_slice.shape)
            ct_offset = mr_offset if self.paired else self._crop_offset(rng, ct_slice.shape)
            mr.append(self._cut(mr_slice, mr_offset))
            ct.append(self._cut(ct_slice, ct_offset))
        as_tensor = lambda xs: torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))  # noqa: E731
        return SliceBatch(as_tensor(mr), as_tensor(ct), pairs)

    def _crop_offset(self, rng: np.random.Generator, shape: Sequence[int]) -> tuple:
        return tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(shape, self.crop))

    def _cut(self, image: np.ndarray, offset: Sequence[int]) -> np.ndarray:
        (top, left), (h, w) = offset, self.crop
        return image[top:top + h, left:left + w]


def paired_slice(dataset: SliceDataset, pair: SlicePair) -> tuple[np.ndarray, np.ndarray]:
    """The centre crop of a pair's MR and CT slices (validation and previews: no randomness)."""
    def centre(image):
        top, left = ((s - c) // 2 for s, c in zip(image.shape, dataset.crop))
        return np.asarray(image[top:top + dataset.crop[0], left:left + dataset.crop[1]], dtype=np.float32)
    return centre(dataset.mr[pair.mr_volume][pair.mr_slice]), centre(dataset.ct[pair.ct_volume][pair.ct_slice])
