"""Export a synthetic CT (HU volume) as a DICOM CT Image Storage series that a planning system can import.

Decisions:

- Pixel storage: signed 16-bit integers holding HU directly (PixelRepresentation 1, RescaleSlope 1,
  RescaleIntercept 0). HU are rounded to the nearest integer, so values are exact to 1 HU over the full
  range -32768..32767 HU (metal, padding values such as -3024 included); values outside it are clipped
  with a logged warning.
- Geometry: one file per slice k of the volume, ImagePositionPatient = physical (LPS) point of voxel (0, 0, k),
  ImageOrientationPatient = the first two direction columns, PixelSpacing = (spacing y, spacing x). Slices are
  defined by their positions only, so any third axis is written faithfully: left-handed volumes (slices
  running against row x column) are written in reverse k order so InstanceNumber increases along the slice
  normal, and sheared volumes (third axis not orthogonal to the slice plane, e.g. CT gantry tilt) keep their
  slice positions. SliceThickness is the distance between adjacent slice planes.
- Identity: new Study/Series/SOP Instance and Frame of Reference UIDs, or, with ``reference_dicom``, the
  reference series' study, patient and frame of reference so the sCT lands beside the MR it was made from.
  The image must then be in that series' patient coordinate system.
- The series is flagged synthetic: ImageType DERIVED\\SECONDARY\\AXIAL, SeriesDescription,
  DerivationDescription, Manufacturer "mrtoct", SoftwareVersions with the engine version.
"""
from __future__ import annotations

import copy
import logging
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import DSfloat

from . import __version__
from .atomic import OutputSet, OutputVerificationError

logger = logging.getLogger(__name__)

DEFAULT_SERIES_DESCRIPTION = "Synthetic CT (sCT) from MR - not an acquired CT"
SERIES_NUMBER = 901  # high, so the sCT sorts after the acquired series of a study
WINDOW_CENTER, WINDOW_WIDTH = 40, 400  # soft-tissue window, HU
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
# Copied from ``reference_dicom`` (with PATIENT_KEYWORDS) so the sCT joins the reference's study and frame;
# written empty (or new, for the UIDs and study date/time) without a reference.
REFERENCE_KEYWORDS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber",
    "ReferringPhysicianName", "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition",
    "Laterality",  # General Series, Type 2C: present (empty when unknown) so validators such as dciodvfy accept it
)
_ORTHOGONALITY_TOLERANCE = 1e-4
_INT16 = np.iinfo(np.int16)


def write_ct_series(
    image: sitk.Image,
    out_dir: str | Path,
    *,
    reference_dicom: str | Path | None = None,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    patient: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[float], None] | None = None,
    outputs: OutputSet | None = None,
) -> list[Path]:
    """Write a 3D HU volume as a DICOM CT series (one Part 10 file per slice) into ``out_dir``.

    ``reference_dicom``: a DICOM file, or a folder of one DICOM series, whose study, patient and frame of
    reference the sCT joins. ``patient``: values for PATIENT_KEYWORDS, overriding the reference's.
    ``overwrite``: replace an existing non-empty ``out_dir`` that holds only ``.dcm`` files.
    ``progress``: called with the fraction done (0..1] after each slice.
    ``outputs``: stage the series in this set (published with the set's other outputs) instead of publishing it here.
    Every file is read back before the series is published (an existing one is replaced only then).
    Returns the files in InstanceNumber order. Nothing is left behind on error or interrupt.
    """
    hu = _validated_hu(image)
    row, col, normal, step = _slice_axes(image)
    out_dir = Path(out_dir)
    check_destination(out_dir, overwrite)
    shared = _series_dataset(image, row, col, series_description, _identity(reference_dicom, patient))
    shared.SliceThickness = _ds(abs(step))

    n_slices = image.GetSize()[2]
    order = list(range(n_slices) if step > 0 else range(n_slices - 1, -1, -1))
    width = max(4, len(str(n_slices)))
    names = [f"CT{instance:0{width}d}.dcm" for instance in range(1, n_slices + 1)]

    def write_into(folder: Path) -> None:
        for instance, (name, k) in enumerate(zip(names, order), start=1):
            origin = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
            _write_slice(folder / name, shared, hu[k], origin, normal, instance)
            if progress is not None:
                progress(instance / n_slices)

    own = outputs is None
    outputs = OutputSet() if own else outputs
    try:
        outputs.folder(out_dir, write_into, lambda folder: _verify_series(folder, names, hu.shape[1:]))
        if own:
            outputs.publish()
    except BaseException:
        if own:
            outputs.discard()
        raise
    return [out_dir / name for name in names]


def _verify_series(folder: Path, names: list[str], shape: tuple) -> None:
    """Read every written file back: a DICOM file with all its pixels (a full disk shows up here)."""
    expected = int(np.prod(shape)) * 2
    for name in names:
        try:
            ds = pydicom.dcmread(folder / name)
            complete = len(ds.PixelData) == expected
        except (InvalidDicomError, OSError, AttributeError, ValueError):
            complete = False
        if not complete:
            raise OutputVerificationError(f"{folder / name}: the written DICOM file does not read back complete "
                                          "(disk full or write error); free space or choose another folder")


def read_ct_series(folder: str | Path) -> sitk.Image:
    """Read the single DICOM series in ``folder`` (slices sorted by GDCM) as a float32 HU image.

    The third axis is taken from the first and last slice positions (not forced orthogonal), so sheared
    series such as gantry-tilted CTs keep their slice positions; uneven slice spacing is averaged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series_ids) != 1:
        raise ValueError(f"Expected exactly one DICOM series in {folder}, found {len(series_ids)}; "
                         "pass a folder holding a single series.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    reader.SetForceOrthogonalDirection(False)
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def _validated_hu(image: sitk.Image) -> np.ndarray:
    """HU as int16 array (z, y, x), rounded and clipped; raises on a non-3D, empty, vector or non-finite image."""
    if image.GetDimension() != 3:
        raise ValueError(f"Expected a 3D image, got {image.GetDimension()}D; a DICOM CT series needs a volume.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("Expected a scalar (one value per voxel) HU image, got a vector image.")
    if 0 in image.GetSize():
        raise ValueError(f"Image is empty (size {image.GetSize()}).")
    values = sitk.GetArrayViewFromImage(image)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(f"Image has {bad} NaN or infinite voxel(s); fill or mask them before exporting to DICOM.")
    clipped = int(np.count_nonzero((values < _INT16.min) | (values > _INT16.max)))
    if clipped:
        logger.warning("%d voxel(s) outside %d..%d HU were clipped for int16 DICOM storage.",
                       clipped, _INT16.min, _INT16.max)
    return np.clip(np.rint(values), _INT16.min, _INT16.max).astype(np.int16)


def _slice_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Row and column directions, unit slice normal (row x column) and the signed distance between slice planes.

    Raises on in-plane shear, which DICOM cannot represent.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    row, col = direction[:, 0], direction[:, 1]
    if (abs(np.linalg.norm(row) - 1) > _ORTHOGONALITY_TOLERANCE
            or abs(np.linalg.norm(col) - 1) > _ORTHOGONALITY_TOLERANCE
            or abs(np.dot(row, col)) > _ORTHOGONALITY_TOLERANCE):
        raise ValueError("The image's first two axes are not orthonormal, which DICOM cannot represent; "
                         "resample the image onto an orthogonal grid before exporting.")
    normal = np.cross(row, col) / np.linalg.norm(np.cross(row, col))
    return row, col, normal, image.GetSpacing()[2] * float(np.dot(direction[:, 2], normal))


def check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, a non-empty folder without ``overwrite``, or a folder holding anything but .dcm files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"Output path exists and is not a folder: {out_dir}")
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not overwrite:
        raise FileExistsError(f"Output folder is not empty: {out_dir}; choose an empty or new folder, "
                              "or pass overwrite=True (mrtoct synthesize --overwrite) to replace a previous export.")
    foreign = [e.name for e in entries if not (e.is_file() and e.suffix.lower() == ".dcm")]
    if foreign:
        raise FileExistsError(f"Refusing to replace {out_dir}: it holds more than DICOM files "
                              f"(e.g. {foreign[0]!r}); choose another folder or empty it first.")


def _identity(reference_dicom: str | Path | None, patient: dict[str, str] | None) -> Dataset:
    """Patient, study and frame-of-reference attributes: new UIDs, then the reference's, then ``patient``."""
    unknown = sorted(set(patient or {}) - set(PATIENT_KEYWORDS))
    if unknown:
        raise ValueError(f"Unknown patient field(s) {unknown}; allowed: {list(PATIENT_KEYWORDS)}.")
    identity = Dataset()
    for keyword in PATIENT_KEYWORDS + REFERENCE_KEYWORDS:
        setattr(identity, keyword, "")
    identity.StudyInstanceUID = generate_uid()
    identity.FrameOfReferenceUID = generate_uid()
    identity.StudyDate, identity.StudyTime = _now()
    if reference_dicom is not None:
        reference = _read_reference(Path(reference_dicom))
        for keyword in PATIENT_KEYWORDS + REFERENCE_KEYWORDS:
            if keyword in reference:
                setattr(identity, keyword, reference[keyword].value)
    for keyword, value in (patient or {}).items():
        setattr(identity, keyword, value)
    return identity


def _read_reference(path: Path) -> Dataset:
    """Header of a reference DICOM file, or of the first file of a folder holding one study/frame of reference."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        raise FileNotFoundError(f"Reference DICOM not found: {path}")
    keys, first = set(), None
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        if "StudyInstanceUID" not in header:
            continue  # e.g. a DICOMDIR
        if "FrameOfReferenceUID" not in header:
            raise ValueError(f"Reference {file} has no FrameOfReferenceUID, so it defines no patient coordinate "
                             "system; give the DICOM image series the synthetic CT was computed from.")
        keys.add((header.StudyInstanceUID, header.FrameOfReferenceUID))
        if first is None:
            first = header
    if first is None:
        raise ValueError(f"No DICOM image found in reference {path}; give a DICOM file or a series folder.")
    if len(keys) > 1:
        raise ValueError(f"Reference folder {path} mixes {len(keys)} studies or frames of reference; "
                         "give one file of the series the synthetic CT was computed from.")
    return first


def _series_dataset(image: sitk.Image, row: np.ndarray, col: np.ndarray, series_description: str,
                    identity: Dataset) -> Dataset:
    """Attributes shared by every slice of the series."""
    date, time = _now()
    ds = Dataset()
    ds.update(identity)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: any name copied from the reference can be encoded
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = (f"Synthetic CT predicted from MR by mrtoct {__version__}; HU are computed, "
                                "not measured. Verify before clinical use.")
    ds.BurnedInAnnotation = "NO"
    ds.Manufacturer = "mrtoct"
    ds.SoftwareVersions = f"mrtoct {__version__}"
    ds.KVP = ""
    ds.AcquisitionNumber = ""
    ds.PatientOrientation = ""
    ds.ImageOrientationPatient = _ds([*row, *col])
    ds.PixelSpacing = _ds([image.GetSpacing()[1], image.GetSpacing()[0]])
    ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = WINDOW_CENTER, WINDOW_WIDTH
    return ds


def _write_slice(path: Path, shared: Dataset, pixels: np.ndarray, origin: np.ndarray, normal: np.ndarray,
                 instance: int) -> None:
    """Write one slice of ``shared``'s series as a Part 10 file (Explicit VR Little Endian)."""
    ds = copy.deepcopy(shared)  # assigning to a shared element would change it in every slice
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = _ds(origin)
    ds.SliceLocation = _ds(float(np.dot(origin, normal)))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"MRTOCT_{__version__}"[:16]
    ds.save_as(path, enforce_file_format=True)


def _ds(values: float | np.ndarray | list[float]) -> DSfloat | list[DSfloat]:
    """Decimal String value(s) formatted to fit DICOM's 16 characters."""
    if np.ndim(values) == 0:
        return DSfloat(float(values), auto_format=True)
    return [DSfloat(float(v), auto_format=True) for v in values]


def _now() -> tuple[str, str]:
    """Current local date and time as DICOM DA and TM strings."""
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")
