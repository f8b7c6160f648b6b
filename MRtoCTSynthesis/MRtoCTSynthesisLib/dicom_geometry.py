"""Read one DICOM series so that every voxel lies where the DICOM headers say it is.

SimpleITK's ``ImageSeriesReader`` assumes a regular, orthogonal grid: the origin of the first file, the in-plane
direction cosines, a third axis along the slice normal (``ForceOrthogonalDirection``, the default) and one slice
spacing, ``|IPP_last - IPP_first| / (n - 1)``. Two common acquisitions break that assumption:

* **gantry tilt** (CT): the slice-to-slice offset is not parallel to the slice normal (a shear). The reader puts the
  slices along the normal, so every slice but the first is displaced in-plane (48 mm for the last slice of an
  18.5 degree GE head CT); with ``ForceOrthogonalDirection(False)`` the grid is sheared instead, which most of the
  pipeline (and NIfTI) cannot represent faithfully;
* **uneven slice gaps** (two acquisition blocks with different thickness, missing slices): one spacing cannot put
  every slice at its position (22.8 mm off in the middle of the same GE series).

:func:`read_dicom_series` sorts the files along the slice normal, checks whether the reader's regular grid puts every
slice at its ImagePositionPatient (within 1 % of the slice gap along the normal and 1 % of a pixel in-plane) and, if
so, returns exactly what ``ImageSeriesReader`` gives (same pixel type, values and geometry). Otherwise it
*regularises*: it builds an orthogonal grid

* axes: the slices' row direction (``IOP[0:3]``, increasing column index), column direction (``IOP[3:6]``, increasing
  row index) and the slice normal ``row x column``;
* in-plane spacing: PixelSpacing (column spacing along the row direction, row spacing along the column direction);
  the in-plane lattice is the first slice's lattice, extended so that it covers every slice's footprint (a tilt
  shifts the footprints in-plane);
* spacing along the normal: the median gap between neighbouring slices along the normal (or ``slice_spacing``),
  shrunk by less than 1 % or enlarged by at most 1 % so that the first and the last slice both fall exactly on grid
  planes (``n_intervals = ceil(span / (1.01 * target))``); the median keeps the native resolution of the majority of
  the slices without inventing planes for one odd narrow gap;

and fills it, for every output voxel, by linear interpolation along the normal between the two acquired slices that
bracket it, each sampled bilinearly at the voxel's in-plane position. Voxels outside the acquired data (beyond a
slice's footprint, where a tilt leaves a wedge uncovered) get ``fill_value``: -1024 (air) for CT, the series'
minimum for other modalities. The result is float32 and a warning says why the series was regularised (tilt angle,
gap range).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from scipy import ndimage

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 0.01     # regular grid: slice positions within 1 % of a gap (normal) / of a pixel (in-plane)
ORIENTATION_TOLERANCE = 1e-4  # direction cosines of all files must agree to this
CT_FILL_VALUE = -1024.0       # air, outside the acquired data of a CT
_EDGE_EPS = 1e-3              # fraction of a pixel / of a gap treated as "on" an edge or a slice


@dataclass(frozen=True)
class SliceHeader:
    """What the geometry needs from one file's header."""
    path: str
    position: np.ndarray            # ImagePositionPatient (LPS mm): centre of the first transmitted pixel
    row_direction: np.ndarray       # IOP[0:3]: direction of increasing column index (image x)
    column_direction: np.ndarray    # IOP[3:6]: direction of increasing row index (image y)
    spacing: Tuple[float, float]    # (along row direction = PixelSpacing[1], along column direction = PixelSpacing[0])
    size: Tuple[int, int]           # (Columns, Rows)
    modality: str


@dataclass
class SeriesLayout:
    """A series' files sorted along the slice normal and what stops it being a regular orthogonal grid."""
    files: List[str]                # sorted by position along the normal (ascending)
    headers: List[SliceHeader] = field(repr=False)
    row_direction: np.ndarray
    column_direction: np.ndarray
    normal: np.ndarray              # row x column
    spacing: Tuple[float, float]    # in-plane (along row direction, along column direction)
    size: Tuple[int, int]           # (columns, rows)
    u: np.ndarray                   # slice positions projected on the row direction
    v: np.ndarray                   # ... on the column direction
    w: np.ndarray                   # ... on the normal (ascending)
    modality: str

    @property
    def gaps(self) -> np.ndarray:
        """Distances between neighbouring slices along the normal (mm)."""
        return np.diff(self.w)

    @property
    def tilt_degrees(self) -> float:
        """Angle between the first-to-last slice offset and the slice normal (gantry tilt; 0 without shear)."""
        in_plane = math.hypot(self.u[-1] - self.u[0], self.v[-1] - self.v[0])
        return math.degrees(math.atan2(in_plane, self.w[-1] - self.w[0]))

    def reader_errors(self) -> Tuple[float, float]:
        """Largest slice displacement (along the normal, in-plane; mm) on ImageSeriesReader's default grid.

        The reader puts slice k at ``IPP_0 + k * |IPP_last - IPP_0| / (n - 1) * normal``.
        """
        positions = np.array([h.position for h in self.headers])
        n = len(positions)
        step = np.linalg.norm(positions[-1] - positions[0]) / (n - 1)
        error = positions - (positions[0] + np.arange(n)[:, None] * step * self.normal)
        along = np.abs(error @ self.normal)
        in_plane = np.hypot(error @ self.row_direction, error @ self.column_direction)
        return float(along.max()), float(in_plane.max())

    @property
    def is_regular(self) -> bool:
        """True when ImageSeriesReader's grid puts every slice at its ImagePositionPatient (within tolerance)."""
        along, in_plane = self.reader_errors()
        return (along <= RELATIVE_TOLERANCE * float(np.median(self.gaps))
                and in_plane <= RELATIVE_TOLERANCE * min(self.spacing))

    def irregularities(self) -> List[str]:
        """Why the series is not a regular grid (empty when it is)."""
        reasons = []
        gaps = self.gaps
        if np.hypot(self.u - self.u[0], self.v - self.v[0]).max() > RELATIVE_TOLERANCE * min(self.spacing):
            reasons.append("gantry tilt / shear")
        if gaps.max() - gaps.min() > RELATIVE_TOLERANCE * float(np.median(gaps)):
            reasons.append("uneven slice gaps")
        if not reasons and not self.is_regular:
            reasons.append("the reader's regular grid misplaces slices")
        return reasons


def read_dicom_series(file_names: Sequence[str], slice_spacing: Optional[float] = None,
                      fill_value: Optional[float] = None) -> sitk.Image:
    """Read one DICOM series (files in any order) into a 3D volume whose voxels are at their true positions.

    Regular series (even gaps, no shear): exactly ``ImageSeriesReader``'s result (original pixel type).
    Otherwise a float32 volume on an orthogonal grid along the slices' row/column/normal directions (see the module
    docstring); ``slice_spacing`` overrides the median gap as the target spacing along the normal and
    ``fill_value`` the value outside the acquired data (default: -1024 for CT, the data minimum otherwise).

    Raises ValueError for fewer than two files, files that are not DICOM images with position/orientation/pixel
    spacing, multi-frame files, mixed orientations, mixed pixel spacings or matrix sizes, and slices that share a
    position (several volumes in one series).
    """
    layout = describe_series(file_names)
    if layout.is_regular:
        image = _read_with_series_reader(layout.files)
        if _geometry_matches(image, layout):
            return image
        log.warning("ImageSeriesReader's geometry disagrees with the DICOM headers for %s...; regularising instead",
                    layout.files[0])
    return _regularise(layout, slice_spacing, fill_value)


def describe_series(file_names: Sequence[str]) -> SeriesLayout:
    """Read the headers, check the series is one consistent stack of slices and sort it along the slice normal."""
    file_names = [str(f) for f in file_names]
    if len(file_names) < 2:
        raise ValueError(f"a DICOM series needs at least two slice files to make a 3D volume; got {len(file_names)}"
                         + (f" ({file_names[0]})" if file_names else ""))
    headers = [_read_header(f) for f in file_names]
    first = headers[0]
    for h in headers[1:]:
        if (np.abs(h.row_direction - first.row_direction).max() > ORIENTATION_TOLERANCE
                or np.abs(h.column_direction - first.column_direction).max() > ORIENTATION_TOLERANCE):
            raise ValueError(f"mixed slice orientations in one series: {first.path} has ImageOrientationPatient "
                             f"{_fmt(first.row_direction)} {_fmt(first.column_direction)}, {h.path} has "
                             f"{_fmt(h.row_direction)} {_fmt(h.column_direction)}; select the files of one stack")
        if h.size != first.size:
            raise ValueError(f"mixed matrix sizes in one series: {first.path} is {first.size[0]}x{first.size[1]}, "
                             f"{h.path} is {h.size[0]}x{h.size[1]} (columns x rows)")
        if not np.allclose(h.spacing, first.spacing, rtol=1e-4, atol=1e-6):
            raise ValueError(f"mixed pixel sizes in one series: {first.path} has PixelSpacing "
                             f"{first.spacing[::-1]}, {h.path} has {h.spacing[::-1]} (mm)")
    row, column = _orthonormal(first)
    normal = np.cross(row, column)
    positions = np.array([h.position for h in headers])
    w = positions @ normal
    order = np.argsort(w, kind="stable")
    headers = [headers[i] for i in order]
    positions = positions[order]
    w = w[order]
    gaps = np.diff(w)
    if gaps.min() < 1e-2:
        i = int(np.argmin(gaps))
        raise ValueError(f"{headers[i].path} and {headers[i + 1].path} lie at the same position along the slice "
                         f"normal ({w[i]:.3f} mm): the files hold several volumes (echoes, phases, b-values?); "
                         "select the files of one volume")
    return SeriesLayout(files=[h.path for h in headers], headers=headers, row_direction=row,
                        column_direction=column, normal=normal, spacing=first.spacing, size=first.size,
                        u=positions @ row, v=positions @ column, w=w, modality=first.modality)


def _read_header(path: str) -> SliceHeader:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as error:
        raise ValueError(f"{path}: not a readable DICOM file ({error})") from error
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
               if k not in ds or ds.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{path}: DICOM file lacks {', '.join(missing)}; it is not a slice of an image volume "
                         "(or its geometry is in a multi-frame functional group, which is not supported)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported here; "
                         "give single-frame slice files")
    iop = np.array([float(x) for x in ds.ImageOrientationPatient], dtype=float)
    ipp = np.array([float(x) for x in ds.ImagePositionPatient], dtype=float)
    spacing = [float(x) for x in ds.PixelSpacing]
    if iop.shape != (6,) or ipp.shape != (3,) or len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"{path}: malformed ImagePositionPatient/ImageOrientationPatient/PixelSpacing "
                         f"({list(ipp)}, {list(iop)}, {spacing})")
    return SliceHeader(path=path, position=ipp, row_direction=iop[:3], column_direction=iop[3:],
                       spacing=(spacing[1], spacing[0]), size=(int(ds.Columns), int(ds.Rows)),
                       modality=str(ds.get("Modality", "")).upper())


def _orthonormal(h: SliceHeader) -> Tuple[np.ndarray, np.ndarray]:
    row, column = h.row_direction, h.column_direction
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise ValueError(f"{h.path}: ImageOrientationPatient {_fmt(row)} {_fmt(column)} is not two orthogonal "
                         "unit vectors")
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    return row, column / np.linalg.norm(column)


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.5g}" for x in v) + ")"


def _read_with_series_reader(files: Sequence[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    return reader.Execute()


def _geometry_matches(image: sitk.Image, layout: SeriesLayout) -> bool:
    """Belt and braces: every slice of the reader's image at its file's ImagePositionPatient (within tolerance)."""
    if image.GetDimension() != 3 or image.GetSize() != (*layout.size, len(layout.files)):
        return False
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    if np.abs(direction[:, :2] - np.column_stack([layout.row_direction, layout.column_direction])).max() > 1e-4:
        return False
    k = np.arange(len(layout.files))
    predicted = origin + (k * spacing[2])[:, None] * direction[:, 2]
    error = np.array([h.position for h in layout.headers]) - predicted
    along = np.abs(error @ layout.normal).max()
    in_plane = np.hypot(error @ layout.row_direction, error @ layout.column_direction).max()
    return (along <= RELATIVE_TOLERANCE * float(np.median(layout.gaps))
            and in_plane <= RELATIVE_TOLERANCE * min(layout.spacing))


def _read_slice(path: str, size: Tuple[int, int]) -> np.ndarray:
    """One file's pixels with rescale slope/intercept applied (GDCM), as (rows, columns) float32."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float32)
    if array.size != size[0] * size[1]:
        raise ValueError(f"{path}: holds {array.shape} pixels, header says {size[1]} rows x {size[0]} columns")
    return array.reshape(size[1], size[0])


def _axis(offsets: np.ndarray, step: float, n_pixels: int) -> Tuple[float, int]:
    """In-plane output axis on the first slice's lattice covering every slice's footprint: (start, count)."""
    start = offsets[0] - math.ceil((offsets[0] - offsets.min()) / step - _EDGE_EPS) * step
    end = offsets.max() + (n_pixels - 1) * step
    return start, int(math.ceil((end - start) / step - _EDGE_EPS)) + 1


def _sample_coordinates(grid: np.ndarray, offset: float, step: float, n_pixels: int) -> Tuple[np.ndarray, np.ndarray]:
    """Continuous pixel indices of a slice at the output grid positions, clipped, and which of them lie on it."""
    index = (grid - offset) / step
    inside = (index >= -_EDGE_EPS) & (index <= n_pixels - 1 + _EDGE_EPS)
    return np.clip(index, 0, n_pixels - 1), inside


def _regularise(layout: SeriesLayout, slice_spacing: Optional[float], fill_value: Optional[float]) -> sitk.Image:
    dx, dy = layout.spacing
    columns, rows = layout.size
    u0, nu = _axis(layout.u, dx, columns)
    v0, nv = _axis(layout.v, dy, rows)
    span = float(layout.w[-1] - layout.w[0])
    target = float(slice_spacing) if slice_spacing else float(np.median(layout.gaps))
    if target <= 0:
        raise ValueError(f"slice_spacing must be positive, got {slice_spacing}")
    intervals = max(1, int(math.ceil(span / (target * (1 + RELATIVE_TOLERANCE)) - _EDGE_EPS)))
    dz = span / intervals
    nw = intervals + 1

    u_grid = u0 + dx * np.arange(nu)
    v_grid = v0 + dy * np.arange(nv)
    slices = [_read_slice(f, layout.size) for f in layout.files]
    if fill_value is None:
        fill_value = CT_FILL_VALUE if layout.modality == "CT" else float(min(s.min() for s in slices))

    # Each acquired slice resampled (bilinear) onto the output in-plane lattice when first needed, with its
    # footprint; output planes advance monotonically, so only the two bracketing slices are kept.
    cache: dict = {}

    def on_lattice(k: int) -> Tuple[np.ndarray, np.ndarray]:
        if k not in cache:
            a, a_in = _sample_coordinates(u_grid, layout.u[k], dx, columns)
            b, b_in = _sample_coordinates(v_grid, layout.v[k], dy, rows)
            if np.allclose(a, np.round(a), atol=_EDGE_EPS) and np.allclose(b, np.round(b), atol=_EDGE_EPS):
                values = slices[k][np.round(b).astype(int)[:, None], np.round(a).astype(int)[None, :]]
            else:
                bb, aa = np.meshgrid(b, a, indexing="ij")
                values = ndimage.map_coordinates(slices[k], [bb, aa], order=1, mode="nearest")
            for old in [j for j in cache if j < k - 1]:
                del cache[old]
            cache[k] = (values, b_in[:, None] & a_in[None, :])
        return cache[k]

    # Linear interpolation along the normal between the two bracketing slices.
    out = np.empty((nw, nv, nu), dtype=np.float32)
    w_rel = layout.w - layout.w[0]
    for p in range(nw):
        w = p * dz
        k = int(np.clip(np.searchsorted(w_rel, w, side="right") - 1, 0, len(slices) - 2))
        t = (w - w_rel[k]) / (w_rel[k + 1] - w_rel[k])
        t = 0.0 if t < _EDGE_EPS else 1.0 if t > 1 - _EDGE_EPS else t
        if t == 0.0 or t == 1.0:
            value, inside = on_lattice(k if t == 0.0 else k + 1)
        else:
            (below, inside_below), (above, inside_above) = on_lattice(k), on_lattice(k + 1)
            value, inside = (1 - t) * below + t * above, inside_below & inside_above
        out[p] = np.where(inside, value, np.float32(fill_value))

    image = sitk.GetImageFromArray(out)
    image.SetSpacing((dx, dy, dz))
    image.SetDirection(np.column_stack([layout.row_direction, layout.column_direction, layout.normal]).flatten())
    image.SetOrigin(tuple(u0 * layout.row_direction + v0 * layout.column_direction + layout.w[0] * layout.normal))
    gaps = layout.gaps
    shift = float(np.hypot(layout.u - layout.u[0], layout.v - layout.v[0]).max())
    log.warning("DICOM series %s... (%d slices) regularised because of %s: tilt %.2f degrees (slices shifted up to "
                "%.1f mm in-plane), gaps along the slice normal %.3f-%.3f mm. Resampled onto an orthogonal %dx%dx%d "
                "grid, spacing %.4g x %.4g x %.4g mm (linear between slices, %g outside the acquired data)",
                layout.files[0], len(layout.files),
                " and ".join(layout.irregularities()) or "a disagreement between ImageSeriesReader and the headers",
                layout.tilt_degrees, shift, gaps.min(), gaps.max(), nu, nv, nw, dx, dy, dz, fill_value)
    return image
