"""Volumes: reading, canonical orientation, planes, fitting, intensity windows, masks, N4."""
import logging

import numpy as np
from scipy.ndimage import binary_fill_holes
import pytest
import SimpleITK as sitk
import torch

from helpers import PERMUTED_FLIPPED, assert_same_geometry, make_volume
from MRtoCTSynthesisLib import volumes as V

OBLIQUE = dict()  # make_volume's default: 20/10 degrees oblique, 0.7/0.8/2.5 mm, off-origin
DIRECTIONS = {"lps": np.eye(3), "permuted_flipped": PERMUTED_FLIPPED, "oblique": None}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_keeps_voxels_and_geometry(tmp_path, suffix):
    image = make_volume()
    path = V.write_volume(image, tmp_path / f"v{suffix}")
    back = V.read_volume(path)
    assert_same_geometry(image, back, tol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert [p.name for p in tmp_path.iterdir()] == [f"v{suffix}"]  # no temporary file left


@pytest.mark.parametrize("plane", V.PLANES)
@pytest.mark.parametrize("direction", ["lps", "permuted_flipped", "oblique"])
def test_round_trip_without_resampling_is_exact(tmp_path, plane, direction):
    """Read -> canonical -> slices along the plane -> volume -> original grid -> written: identical voxels."""
    original = make_volume(direction=DIRECTIONS[direction])
    path = V.write_volume(original, tmp_path / "in.nrrd")
    image = V.read_volume(path)
    canonical, how = V.to_canonical(image, oblique="nearest")
    assert not how.resampled
    slices = V.volume_to_slices(V.array_of(canonical), plane)
    rebuilt = V.image_like(np.ascontiguousarray(V.slices_to_volume(slices.copy(), plane)), canonical)
    out = V.read_volume(V.write_volume(V.from_canonical(rebuilt, how), tmp_path / "out.nii.gz"))
    assert_same_geometry(original, out, tol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(original))


def test_axis_aligned_canonical_is_lps_and_needs_no_resampling():
    image = make_volume(direction=PERMUTED_FLIPPED)
    canonical, how = V.to_canonical(image)
    assert not how.resampled
    np.testing.assert_allclose(canonical.GetDirection(), np.eye(3).flatten())
    np.testing.assert_allclose(V.Geometry.of(image).lps_spacing, canonical.GetSpacing())   # known before reorienting
    assert sorted(canonical.GetSpacing()) == sorted(image.GetSpacing()) != list(canonical.GetSpacing())
    # the same physical point holds the same value
    index = (3, 5, 2)
    point = image.TransformIndexToPhysicalPoint(index)
    assert canonical[canonical.TransformPhysicalPointToIndex(point)] == image[index]


def smooth_oblique_volume():
    image = make_volume(size=(40, 36, 14))
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (14, 36, 40)], indexing="ij")
    array = (100 * np.sin(i / 9.0) + 80 * np.cos(j / 7.0) + 30 * k / 14).astype(np.float32)
    return V.image_like(array, image)


def test_oblique_resampling_gives_lps_grid_and_comes_back_on_the_exact_grid():
    image = smooth_oblique_volume()
    canonical, how = V.to_canonical(image, oblique="resample")
    assert how.resampled
    np.testing.assert_allclose(canonical.GetDirection(), np.eye(3).flatten())
    # each canonical axis keeps the spacing of the input axis closest to it (20/10 degrees: the same axes)
    np.testing.assert_allclose(canonical.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(V.Geometry.of(image).lps_spacing, canonical.GetSpacing())
    back = V.from_canonical(canonical, how)
    assert_same_geometry(image, back)
    # interior voxels survive two linear interpolations of a smooth field closely
    a, b = sitk.GetArrayFromImage(image)[3:-3, 6:-6, 6:-6], sitk.GetArrayFromImage(back)[3:-3, 6:-6, 6:-6]
    assert np.median(np.abs(a - b)) < 3.0


def test_slices_follow_display_conventions():
    """Sagittal rows run superior->inferior and columns anterior->posterior; axial rows anterior->posterior."""
    array = np.zeros((5, 6, 7), np.float32)  # K (I->S), J (A->P), I (R->L)
    array[4, 0, 3] = 1  # most superior, most anterior voxel
    sagittal = V.volume_to_slices(array, "sagittal")
    assert sagittal.shape == (7, 5, 6) and sagittal[3, 0, 0] == 1
    coronal = V.volume_to_slices(array, "coronal")
    assert coronal.shape == (6, 5, 7) and coronal[0, 0, 3] == 1
    axial = V.volume_to_slices(array, "axial")
    assert axial.shape == (5, 6, 7) and axial[4, 0, 3] == 1
    assert V.slice_spacing((0.7, 0.8, 2.5), "sagittal") == (2.5, 0.8)
    assert V.slice_spacing((0.7, 0.8, 2.5), "coronal") == (2.5, 0.7)
    assert V.slice_spacing((0.7, 0.8, 2.5), "axial") == (0.8, 0.7)
    with pytest.raises(ValueError, match="plane"):
        V.volume_to_slices(array, "oblique")


def test_fit_keeps_aspect_ratio_and_unfit_inverts():
    # Yang: ~270 sagittal slices of a head resized and padded to 384x256 keeping the aspect ratio
    fit = V.plan_slice_fit((120, 90), (2.0, 2.0), (384, 256))
    assert fit.canvas_shape == (384, 256)
    assert fit.resized_shape == (341, 256)
    assert abs(fit.resized_shape[0] / fit.resized_shape[1] - 120 / 90) < 0.01
    x = torch.rand(3, 1, 120, 90)
    canvas = V.fit_slices(x, fit, pad_value=-1.0)
    assert canvas.shape == (3, 1, 384, 256)
    assert torch.all(canvas[..., : fit.offset[0], :] == -1.0)
    smooth = torch.linspace(0, 1, 120)[:, None].expand(120, 90).reshape(1, 1, 120, 90)
    back = V.unfit_slices(V.fit_slices(smooth, fit, -1.0), fit)
    assert back.shape == smooth.shape and torch.max(torch.abs(back - smooth)[..., 2:-2, :]) < 0.01


def test_fit_with_target_spacing_grows_canvas_to_multiple_of_four():
    fit = V.plan_slice_fit((300, 100), (1.0, 1.0), (256, 256), target_spacing=(1.0, 1.0))
    assert fit.resized_shape == (300, 100) and fit.canvas_shape == (300, 256)
    fit = V.plan_slice_fit((301, 100), (1.0, 1.0), (256, 256), target_spacing=(1.0, 1.0))
    assert fit.canvas_shape == (304, 256)


def test_intensity_windows_papers():
    yang_ct = V.IntensityWindow(-1000, 3500)
    hu = np.array([-2000.0, -1000.0, 1250.0, 3500.0, 5000.0])
    np.testing.assert_allclose(yang_ct.to_network(hu), [-1, -1, 0, 1, 1])
    np.testing.assert_allclose(yang_ct.from_network(yang_ct.to_network(hu[1:4])), hu[1:4])
    hiasa_ct, hiasa_mr = V.IntensityWindow(-150, 350), V.IntensityWindow(0, 100)
    np.testing.assert_allclose(hiasa_ct.to_byte_range(np.array([-150.0, 100.0, 350.0])), [0, 127.5, 255])
    np.testing.assert_allclose(hiasa_mr.to_byte_range(np.array([0.0, 50.0, 100.0, 200.0])), [0, 127.5, 255, 255])
    t = torch.tensor([0.0, 3500.0])
    assert torch.allclose(V.IntensityWindow(0, 3500).to_network(t), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError):
        V.IntensityWindow(5, 5)


def test_robust_scale_is_unit_free():
    rng = np.random.default_rng(1)
    mr = rng.gamma(3.0, 100.0, size=(8, 16, 16)).astype(np.float32)
    a, _ = V.robust_scale(mr, value=3000)
    b, factor = V.robust_scale(mr * 7.3, value=3000)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert abs(np.percentile(b[b > 0], 99.5) - 3000) < 1e-2
    mr_copy = mr.copy()
    V.robust_scale(mr)
    np.testing.assert_array_equal(mr, mr_copy)
    with pytest.raises(V.VolumeError, match="foreground"):
        V.robust_scale(np.zeros((2, 2, 2), np.float32))


def ball_image(size=32, radius=10, inside=1000.0, hole_radius=3):
    z, y, x = np.mgrid[:size, :size, :size] - size / 2
    r = np.sqrt(x**2 + y**2 + z**2)
    array = np.where(r < radius, inside, 0.0).astype(np.float32)
    array[r < hole_radius] = 0  # a dark cavity inside (like a sinus or the bladder in some MR)
    array[1, 1, 1] = inside  # a bright speck outside: not the largest component
    return V.image_like(array, make_volume(size=(size,) * 3, spacing=(1.0, 1.0, 1.0)))


def test_body_mask_largest_component_holes_filled():
    image = ball_image()
    mask = V.body_mask(image)
    assert_same_geometry(mask, image)
    m = sitk.GetArrayFromImage(mask).astype(bool)
    assert m[16, 16, 16], "the dark cavity is filled"
    assert not m[1, 1, 1], "the outside speck is not the largest component"
    assert abs(m.sum() - 4 / 3 * np.pi * 10**3) / (4 / 3 * np.pi * 10**3) < 0.15



def test_body_mask_keeps_a_scalp_dimmed_below_otsu():
    """A head whose scalp fades over the top (a coil's fall-off) to below Otsu's threshold: the ring of scalp is open
    there in every plane, so an Otsu mask loses the dark skull under it; half of Otsu's threshold keeps both."""
    k, j, i = np.ogrid[:48, :48, :48]
    r = np.sqrt((k - 24.0) ** 2 + (j - 24.0) ** 2 + (i - 24.0) ** 2)
    array = np.where(r < 16, 100.0, 0.0) + np.where((r >= 16) & (r < 18), 3.0, 0.0)        # brain, dark skull
    array += np.where((r >= 18) & (r < 20), np.where(k > 34, 35.0, 100.0), 0.0)            # scalp, dim on top
    array[:24, 21:27, 21:27] = np.where(r[:24, 21:27, 21:27] < 20, 100.0, 0.0)              # neck: joins them
    array += np.random.default_rng(0).rayleigh(1.0, array.shape)                           # background noise
    image = V.image_like(array.astype(np.float32), make_volume(size=(48,) * 3, spacing=(1.0, 1.0, 1.0)))
    otsu = V.otsu_threshold(image)
    top_skull = (24 + 17, 24, 24)                                                          # (k, j, i)
    assert 35 < otsu < 70 and V.default_body_threshold(image) < 35                         # the dim scalp: between
    assert not (sitk.GetArrayFromImage(V.body_mask(image, threshold=otsu)) > 0)[top_skull]
    mask = sitk.GetArrayFromImage(V.body_mask(image)) > 0
    assert mask[top_skull] and mask[24 + 19, 24, 24] and not mask[24 + 23, 24, 24]         # skull, scalp; not air


def test_holes_are_filled_in_every_plane_not_only_axial_slices():
    """A dark region that every axial slice opens to the outside but coronal slices enclose (the skull at the
    vertex of a T1 MR, cut tangentially by axial slices) is inside the body."""
    solid = np.zeros((30, 30, 30), bool)
    solid[5:25, 5:25, 5:25] = True
    solid[10:20, 10:20, 10:20] = False          # a cavity ...
    solid[10:20, 20:25, 14:16] = False          # ... opened to the outside along axis j in every axial slice k
    axial_only = np.stack([binary_fill_holes(s) for s in solid])
    assert not axial_only[15, 15, 15]
    filled = V.fill_holes_in_every_plane(solid)
    assert filled[5:25, 5:25, 5:25].all() and filled.sum() == 20 ** 3

def test_n4_removes_a_smooth_bias():
    image = ball_image(size=32, radius=13, hole_radius=0)
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    bias = np.exp(0.4 * x)[None, None, :] * np.ones((32, 32, 32), np.float32)
    biased = V.image_like(V.array_of(image) * bias, image)
    corrected = V.array_of(V.n4_bias_correction(biased, shrink=2, iterations=(20, 20)))
    inside = V.array_of(image) > 0
    cv = lambda a: a[inside].std() / a[inside].mean()  # noqa: E731
    assert cv(corrected) < 0.5 * cv(V.array_of(biased))


def test_clear_errors(tmp_path):
    with pytest.raises(V.VolumeError, match="no such file"):
        V.read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(V.VolumeError, match="no DICOM series"):
        V.read_volume(tmp_path / "empty")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(V.VolumeError, match="cannot be read"):
        V.read_volume(bad)
    flat = sitk.Image(8, 8, sitk.sitkFloat32)
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(V.VolumeError, match="3D"):
        V.read_volume(tmp_path / "flat.nii.gz")
    with pytest.raises(V.VolumeError, match="suffix"):
        V.write_volume(make_volume(), tmp_path / "x.png")


def write_dicom_series(image, folder, series_uid):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    image = sitk.Cast(image, sitk.sitkInt16)
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in [("0008|0060", "MR"), ("0020|000e", series_uid), ("0020|000d", "1.2.3"),
                           ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0008|0018", f"{series_uid}.{k + 1}")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{k:03d}.dcm"))
        writer.Execute(s)


def test_dicom_folder_with_two_series_reads_the_largest(tmp_path, caplog):
    small = make_volume(size=(8, 8, 3), spacing=(1, 1, 2), direction=np.eye(3), high=100)
    large = make_volume(size=(8, 8, 6), spacing=(1, 1, 2), direction=np.eye(3), high=100, seed=3)
    write_dicom_series(small, tmp_path / "dicom", "1.2.3.4.1")
    write_dicom_series(large, tmp_path / "dicom", "1.2.3.4.2")
    with caplog.at_level(logging.WARNING):
        image = V.read_volume(tmp_path / "dicom")
    assert image.GetSize() == (8, 8, 6)
    assert "2 DICOM series" in caplog.text
    np.testing.assert_allclose(image.GetSpacing(), (1, 1, 2), atol=1e-4)
