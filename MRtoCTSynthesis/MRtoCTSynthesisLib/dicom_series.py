"""The DICOM series of a folder, and the one rule that picks a series when the user did not name one.

Rule (``choose_series``; the CLI, the Python API and the Slicer logic all call it):

1. only series that form one 3D volume (at least two slices of one orientation, matrix and pixel size, each at its
   own position) are candidates;
2. ORIGINAL images before DERIVED ones (reformats, MPRs and other derived series are DERIVED in ImageType);
3. then the most slices (the finest sampling of the volume);
4. then the lowest SeriesNumber, then the SeriesInstanceUID (a fixed order).

``series=`` (``--series``) overrides the rule: a SeriesInstanceUID, or a SeriesNumber when it names one series.
Every error lists the folder's series (``mrtoct series FOLDER`` prints the same list).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pydicom
from pydicom.errors import InvalidDicomError

from .dicom_geometry import describe_series
from .volume_checks import VolumeError

log = logging.getLogger(__name__)
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
RULE = "one 3D volume; ORIGINAL before DERIVED; then most slices; then lowest SeriesNumber"


@dataclass
class DicomSeries:
    """One series of a folder: identity, what it holds and, if it cannot be read as a volume, why."""

    uid: str
    number: Optional[int]
    description: str
    modality: str
    image_type: str
    files: list = field(repr=False)
    orientation: str = ""            # e.g. "axial", from the first file's ImageOrientationPatient
    problem: Optional[str] = None    # None: the series is one 3D volume

    @property
    def is_volume(self) -> bool:
        return self.problem is None

    @property
    def original(self) -> bool:
        return not self.image_type.upper().startswith("DERIVED")

    def line(self) -> str:
        number = "-" if self.number is None else str(self.number)
        state = "" if self.is_volume else f"  (not a volume: {self.problem})"
        return (f"#{number:<5} {len(self.files):>4} files  {self.modality or '?':<3} {self.orientation or '?':<9} "
                f"{self.image_type or '?':<22} {self.description!r}  {self.uid}{state}")


def list_series(folder: Union[str, os.PathLike]) -> list[DicomSeries]:
    """The image series in ``folder`` (not its sub-folders), in SeriesNumber order; files that are not DICOM images
    are skipped."""
    return scan_folder(folder)[0]


def scan_folder(folder: Union[str, os.PathLike]) -> tuple[list[DicomSeries], list[Path]]:
    """(the image series of ``folder``, its damaged DICOM files).

    A file is damaged when it is DICOM but cut short: a .dcm/.ima file that cannot be parsed at all, or a file with
    the DICM signature whose header ends before its image attributes (no Rows or no SeriesInstanceUID) while its
    storage class is missing or that of the folder's images. pydicom reads such a file without an error, so without
    this check a slice would silently be missing from the series (and filled in by interpolation)."""
    folder = Path(folder)
    groups: dict[str, dict] = {}
    unparsable, headless = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
            if path.suffix.lower() in DICOM_SUFFIXES:
                unparsable.append(path)
            continue
        if "Rows" not in ds or "SeriesInstanceUID" not in ds:
            headless.append((path, _storage_class(ds)))
            continue  # DICOMDIR, structured reports, presentation states: no image (or a damaged image: below)
        uid = str(ds.SeriesInstanceUID)
        group = groups.setdefault(uid, {"ds": ds, "files": [], "classes": set()})
        group["files"].append(str(path))
        group["classes"].add(_storage_class(ds))
    image_classes = set().union(*(g["classes"] for g in groups.values())) - {None}
    damaged = unparsable + [p for p, kind in headless if kind is None or kind in image_classes]
    series = [_describe(uid, g["ds"], g["files"]) for uid, g in groups.items()]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid)), damaged


def _storage_class(ds: pydicom.Dataset) -> Optional[str]:
    """The file's SOP class (file meta header, else the dataset); None when neither has it."""
    meta = getattr(ds, "file_meta", None)
    value = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or ds.get("SOPClassUID")
    return str(value) if value else None


def _describe(uid: str, ds: pydicom.Dataset, files: list) -> DicomSeries:
    number = ds.get("SeriesNumber")
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    image_type = "\\".join(str(v) for v in ds.get("ImageType", []) or [])
    series = DicomSeries(uid, number, str(ds.get("SeriesDescription", "")), str(ds.get("Modality", "")), image_type,
                         files, _orientation(ds))
    try:
        describe_series(files)
    except ValueError as error:
        series.problem = str(error)
    return series


def _orientation(ds: pydicom.Dataset) -> str:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return ""
    row, column = [float(v) for v in iop[:3]], [float(v) for v in iop[3:]]
    normal = [row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
              row[0] * column[1] - row[1] * column[0]]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("sagittal", "coronal", "axial")[axis] + ("" if abs(normal[axis]) > 0.99 else " (oblique)")


def listing(series: list[DicomSeries], chosen: Optional[DicomSeries] = None) -> str:
    """One line per series, the chosen one marked with '*'."""
    return "\n".join(("* " if chosen is not None and s.uid == chosen.uid else "  ") + s.line() for s in series)


def choose_series(folder: Union[str, os.PathLike], series: Optional[Union[str, int]] = None) -> DicomSeries:
    """The series of ``folder`` to read: the one named by ``series`` (UID or number), else the rule of this module.

    Raises VolumeError, listing the folder's series, when none qualifies or ``series`` names none or several.
    """
    folder = Path(folder)
    found, damaged = scan_folder(folder)
    if damaged:
        names = ", ".join(p.name for p in damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise VolumeError(f"{folder}: the DICOM file(s) {names} are damaged (cut short before the image: probably an "
                          "incomplete copy), so a series would silently miss slices; copy them again, or move them "
                          "out of the folder if the series is complete without them")
    if not found:
        raise VolumeError(f"{folder}: folder holds no DICOM series (no DICOM image file); point to a folder of "
                          "DICOM files or to a volume file")
    if series is not None:
        wanted = str(series).strip()
        matches = [s for s in found if s.uid == wanted] or [s for s in found if str(s.number) == wanted]
        if len(matches) != 1:
            how = "no series" if not matches else f"{len(matches)} series"
            raise VolumeError(f"{folder}: {how} with UID or number {wanted!r}; give one of the UIDs (or a unique "
                              f"number) of:\n{listing(found)}")
        chosen = matches[0]
        if not chosen.is_volume:
            raise VolumeError(f"{folder}: series {wanted!r} is not one 3D volume ({chosen.problem})")
        return chosen
    candidates = [s for s in found if s.is_volume]
    if not candidates:
        raise VolumeError(f"{folder}: none of its DICOM series is one 3D volume:\n{listing(found)}")
    chosen = min(candidates, key=lambda s: (not s.original, -len(s.files), s.number is None, s.number or 0, s.uid))
    if len(found) > 1:
        log.warning("%s holds %d DICOM series; reading the one marked '*' (%s); choose another with --series "
                    "UID|number:\n%s", folder, len(found), RULE, listing(found, chosen))
    return chosen
