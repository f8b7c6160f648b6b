"""DICOM CT export: round trips through SimpleITK/GDCM, tags read with pydicom, reference study, bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from MRtoCTSynthesisLib import __version__
from MRtoCTSynthesisLib.dicom_export import read_ct_series, write_ct_series


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


OBLIQUE = rotation(2, 20) @ rotation(0, 10)
FLIPPED = np.diag([-1.0, -1.0, 1.0]) @ rotation(1, 15)  # negative entries, right-handed
LEFT_HANDED = np.diag([1.0, -1.0, -1.0]) @ OBLIQUE @ np.diag([1.0, 1.0, -1.0])


def hu_volume(direction: np.ndarray, size=(24, 20, 7), spacing=(0.7, 0.8, 2.5), seed: int = 0) -> sitk.Image:
    values = np.random.default_rng(seed).integers(-1000, 3001, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin((-31.5, 12.25, 87.0))
    image.SetDirection(direction.flatten().tolist())
    return image


def read_with_gdcm(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_geometry(actual: sitk.Image, expected: sitk.Image) -> None:
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=1e-5)


def mr_series(folder: Path, n_slices: int = 3) -> dict[str, str]:
    """A minimal MR DICOM series; returns its identifying UIDs and patient ID."""
    folder.mkdir()
    ids = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
           "SeriesInstanceUID": generate_uid(), "PatientID": "MR-0042"}
    for k in range(n_slices):
        ds = Dataset()
        for keyword, value in ids.items():
            setattr(ds, keyword, value)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, generate_uid(), "MR"
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex, ds.PatientPosition = "Doe^Jane", "19700101", "F", "HFS"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 3.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [1, 1], 3, k + 1
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((4, 4), "<u2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"MR{k}.dcm", enforce_file_format=True)
    return ids


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED], ids=["oblique", "flipped"])
def test_round_trip_through_gdcm_is_exact(tmp_path: Path, direction: np.ndarray) -> None:
    image = hu_volume(direction)
    files = write_ct_series(image, tmp_path / "sct")
    assert len(files) == 7 and all(f.is_file() for f in files)
    back = read_with_gdcm(tmp_path / "sct")
    assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image).astype(np.int16))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_ct_series(tmp_path / "sct")),
                                  sitk.GetArrayFromImage(image))


def test_left_handed_volume_is_written_along_the_normal(tmp_path: Path) -> None:
    image = hu_volume(LEFT_HANDED)
    files = write_ct_series(image, tmp_path / "sct")
    back = read_with_gdcm(tmp_path / "sct")
    n = image.GetSize()[2]
    np.testing.assert_allclose(back.GetOrigin(), image.TransformIndexToPhysicalPoint((0, 0, n - 1)), atol=1e-3)
    np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3))[:, 2], -LEFT_HANDED[:, 2], atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image)[::-1])
    locations = [float(pydicom.dcmread(f).SliceLocation) for f in files]
    assert locations == sorted(locations)


def test_sheared_volume_keeps_slice_positions(tmp_path: Path) -> None:
    tilt = np.radians(18.5)  # like a CT gantry tilt: slices stacked along z, slice plane tilted about x
    sheared = np.array([[1, 0, 0], [0, np.cos(tilt), 0], [0, -np.sin(tilt), 1]])
    image = hu_volume(sheared)
    files = write_ct_series(image, tmp_path / "sct")
    for k, f in enumerate(files):
        np.testing.assert_allclose(pydicom.dcmread(f).ImagePositionPatient,
                                   image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-6)
    back = read_ct_series(tmp_path / "sct")
    assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_tags(tmp_path: Path) -> None:
    image = hu_volume(OBLIQUE)
    files = write_ct_series(image, tmp_path / "sct")
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(files)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets} | {ds.FrameOfReferenceUID for ds in datasets}) == 2
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert "ynthetic" in ds.SeriesDescription and "ynthetic" in ds.DerivationDescription
        assert ds.Manufacturer == "mrtoct" and __version__ in ds.SoftwareVersions
        assert ds.BurnedInAnnotation == "NO" and ds.RescaleType == "HU"
        assert (ds.RescaleSlope, ds.RescaleIntercept, ds.PixelRepresentation) == (1, 0, 1)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert (ds.Rows, ds.Columns, ds.InstanceNumber) == (20, 24, k + 1)
        np.testing.assert_allclose(ds.PixelSpacing, [0.8, 0.7])
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        np.testing.assert_allclose(ds.ImagePositionPatient, image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-6)
        np.testing.assert_allclose(ds.ImageOrientationPatient, np.concatenate([OBLIQUE[:, 0], OBLIQUE[:, 1]]),
                                   atol=1e-9)
        np.testing.assert_array_equal(ds.pixel_array, sitk.GetArrayFromImage(image)[k])


def test_hu_are_rounded_and_clipped_to_int16(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = sitk.GetImageFromArray(np.array([[[12.4, 12.6, -3024.0, 40000.0]]], np.float32))
    with caplog.at_level(logging.WARNING):
        files = write_ct_series(image, tmp_path / "sct")
    assert "1 voxel(s)" in caplog.text
    np.testing.assert_array_equal(pydicom.dcmread(files[0]).pixel_array, [[12, 13, -3024, 32767]])


@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "file"])
def test_reference_dicom_puts_sct_in_the_mr_study(tmp_path: Path, as_folder: bool) -> None:
    ids = mr_series(tmp_path / "mr")
    reference = tmp_path / "mr" if as_folder else tmp_path / "mr" / "MR0.dcm"
    files = write_ct_series(hu_volume(OBLIQUE), tmp_path / "sct", reference_dicom=reference,
                            patient={"PatientName": "Roe^Jane"})
    for ds in map(pydicom.dcmread, files):
        assert ds.StudyInstanceUID == ids["StudyInstanceUID"]
        assert ds.FrameOfReferenceUID == ids["FrameOfReferenceUID"]
        assert ds.SeriesInstanceUID != ids["SeriesInstanceUID"]
        assert (ds.PatientID, ds.PatientBirthDate, ds.PatientSex, ds.PatientPosition) == (
            "MR-0042", "19700101", "F", "HFS")
        assert ds.PatientName == "Roe^Jane"


def test_progress_reaches_one(tmp_path: Path) -> None:
    seen: list[float] = []
    write_ct_series(hu_volume(OBLIQUE), tmp_path / "sct", progress=seen.append)
    assert seen == sorted(seen) and len(seen) == 7 and seen[-1] == 1.0


@pytest.mark.parametrize("image, message", [
    (sitk.Image(8, 8, sitk.sitkFloat32), "3D"),
    (sitk.GetImageFromArray(np.full((2, 3, 4), np.nan, np.float32)), "NaN"),
], ids=["2d", "nan"])
def test_bad_input_raises_and_leaves_nothing(tmp_path: Path, image: sitk.Image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_ct_series(image, tmp_path / "sct")
    assert list(tmp_path.iterdir()) == []


def test_bad_reference_or_patient_field_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No DICOM image"):
        write_ct_series(hu_volume(OBLIQUE), tmp_path / "sct", reference_dicom=tmp_path / "empty")
    with pytest.raises(ValueError, match="Unknown patient field"):
        write_ct_series(hu_volume(OBLIQUE), tmp_path / "sct", patient={"StudyInstanceUID": "1.2.3"})
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "sct"
    first = write_ct_series(hu_volume(OBLIQUE, seed=1), out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_ct_series(hu_volume(OBLIQUE, seed=2), out)
    assert sorted(out.iterdir()) == first
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in first}
    second = write_ct_series(hu_volume(OBLIQUE, seed=2), out, overwrite=True)
    assert sorted(out.iterdir()) == second
    assert {pydicom.dcmread(f).SeriesInstanceUID for f in second}.isdisjoint(uids)
    assert [p.name for p in tmp_path.iterdir()] == ["sct"]  # no staging or backup folder left behind
    (out / "notes.txt").write_text("not DICOM", encoding="utf-8")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_ct_series(hu_volume(OBLIQUE), out, overwrite=True)


def test_read_ct_series_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_ct_series(tmp_path / "missing")
