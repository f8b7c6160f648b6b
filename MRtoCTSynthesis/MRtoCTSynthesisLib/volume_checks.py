"""Checks made on a volume before any work, so a bad file is refused with its reason instead of read wrongly.

ITK reads a truncated NIfTI with the missing voxels as zeros, reads a zero voxel spacing (NIfTI pixdim 0) as 1 mm,
and allocates whatever size a header declares. So, from the header and the file alone (no voxel is decoded):

* the file is not empty;
* the voxels the header declares fit in memory: ``voxels * 4 bytes * MEMORY_COPIES <= MemAvailable`` (the pipeline
  holds a few float32 copies of a volume);
* NIfTI: the data stream is as long as the header says, ``vox_offset + voxels * bitpix / 8`` bytes (for ``.nii.gz``
  the stream is decompressed once, chunk by chunk, to measure it), every spatial pixdim is non-zero, and float data
  hold no NaN or inf (ITK's NIfTI reader turns NaN into 0, so this is checked on the file, in the same pass);

and on the image read: every spacing is positive and finite, and every voxel is finite (no NaN or inf).
"""
from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

MEMORY_COPIES = 3
_CHUNK = 1 << 22


class VolumeError(ValueError):
    """A volume cannot be read or used; the message says why and what to do."""


def itk_message(error: Exception) -> str:
    """The useful part of a SimpleITK exception: from its 'ERROR:' line to the end, on one line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ERROR:" in line), len(lines) - 1)
    text = " ".join(lines[start:])
    text = text.split("ERROR:", 1)[-1].strip() if "ERROR:" in text else text
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text)  # drop the object's address: "Image(0x5564...): "


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else physical pages free (POSIX), else None (unknown)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_volume_file(path: Path) -> None:
    """Refuse an empty file, a header declaring more voxels than memory holds, a truncated NIfTI, NIfTI pixdim 0."""
    size = path.stat().st_size
    if size == 0:
        raise VolumeError(f"{path}: the file is empty (0 bytes); the copy or download did not complete, copy it again")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # not a header ITK knows: read_volume reports it with ITK's reason
    voxels = math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
    available = available_memory_bytes()
    needed = voxels * 4 * MEMORY_COPIES
    if available is not None and needed > available:
        raise VolumeError(f"{path}: its header declares {'x'.join(map(str, reader.GetSize()))} voxels "
                          f"({voxels * 4 / 1e9:.1f} GB as float32); processing needs about {needed / 1e9:.1f} GB but "
                          f"{available / 1e9:.1f} GB of memory are available. Check the header (a damaged file?) or "
                          "use a machine with more memory")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name.endswith(".gz"))


def _check_nifti(path: Path, compressed: bool) -> None:
    opener = gzip.open if compressed else open
    with opener(path, "rb") as handle:
        head = handle.read(540)
    header = _nifti_header(head)
    if header is None:
        return  # not NIfTI-1/2 after all: ITK decides
    dims, bitpix, pixdim, vox_offset, dtype = header
    spatial = [float(p) for p in pixdim[:min(3, len(dims))]]
    if any(not math.isfinite(p) or p == 0 for p in spatial):
        raise VolumeError(f"{path}: the NIfTI header gives voxel spacing (pixdim) {spatial}; a zero or non-finite "
                          "spacing has no size in mm (ITK would silently read it as 1 mm). Write the true voxel size "
                          "into the header (e.g. nibabel: img.header.set_zooms(...)) and try again")
    expected = vox_offset + math.prod(dims) * bitpix // 8
    actual, ended_early, not_finite = _scan_data(path, compressed, vox_offset, dtype)
    if ended_early or actual < expected:
        how = "its compressed stream ends early" if ended_early else f"it holds {actual} bytes"
        raise VolumeError(f"{path}: the file is truncated: the header declares {'x'.join(map(str, dims))} voxels "
                          f"({expected} bytes of data) but {how}; the copy or download did not complete, copy it "
                          "again")
    if not_finite:
        raise VolumeError(f"{path}: {not_finite} voxel(s) are NaN or infinite (ITK would silently read NaN as 0); "
                          "a scan holds finite values only. Replace them (e.g. with the background value) or "
                          "re-export the volume")


_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def _nifti_header(head: bytes) -> Optional[tuple[list[int], int, list[float], int, Optional[np.dtype]]]:
    """(dims, bitpix, spatial pixdims, vox_offset, float dtype or None) of a NIfTI-1/2 header, in either byte order."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", head[70:74])
            pixdim = struct.unpack(endian + "8f", head[76:108])
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "hh", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        ndim = max(1, min(7, dim[0]))
        dtype = np.dtype(endian + _FLOAT_TYPES[datatype]) if datatype in _FLOAT_TYPES else None
        return ([max(1, int(d)) for d in dim[1:ndim + 1]], int(bitpix), list(pixdim[1:ndim + 1]), max(0, vox_offset),
                dtype)
    return None


def _scan_data(path: Path, compressed: bool, offset: int, dtype: Optional[np.dtype]) -> tuple[int, bool, int]:
    """One pass over the file: (bytes of data, decompressed for gzip; whether a compressed stream ended before its
    end mark; how many float voxels after ``offset`` are NaN or inf, 0 for integer data)."""
    total, not_finite, pending = 0, 0, b""
    opener = gzip.open if compressed else open
    with opener(path, "rb") as handle:
        try:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                start = max(0, offset - total)
                total += len(chunk)
                if dtype is not None and start < len(chunk):
                    data = pending + chunk[start:]
                    usable = len(data) - len(data) % dtype.itemsize
                    not_finite += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype))))
                    pending = data[usable:]
        except (EOFError, zlib.error, gzip.BadGzipFile):
            return total, True, not_finite
    return total, False, not_finite


def check_image(image: sitk.Image, where: str) -> None:
    """Refuse a zero, negative or non-finite spacing and NaN/inf voxels."""
    spacing = image.GetSpacing()
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise VolumeError(f"{where}: voxel spacing {tuple(spacing)} mm is not positive; set the true voxel size "
                          "(e.g. in Slicer: Volumes module, Volume Information) and try again")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        finite = np.isfinite(values)
        if not finite.all():
            bad = values[~finite]
            raise VolumeError(f"{where}: {bad.size} voxel(s) are NaN or infinite ({int(np.isnan(bad).sum())} NaN); "
                              "a scan holds finite values only. Replace them (e.g. with the background value) or "
                              "re-export the volume")
