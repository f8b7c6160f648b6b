"""Digital head and pelvis phantoms: determinism, geometry, tissue values, the bone/air MR ambiguity, writing."""
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.phantom import (CT_RANGE, PHANTOM_KINDS, make_phantom, save_preview_png, subject_seeds,
                                        write_phantom, write_phantom_dataset)

AIR = {"head": "air_cavity", "pelvis": "bowel_gas"}
REFERENCE = {"head": "white_matter", "pelvis": "muscle"}          # the bright soft tissue of each kind
MARROW = {"bone_marrow", "pelvis_marrow", "spine_marrow", "femur_marrow"}
SOFT = {"skin", "muscle", "gluteus_medius", "gluteus_minimus", "iliopsoas", "grey_matter", "white_matter", "csf",
        "eye", "bladder", "bowel"}


def arrays(phantom):
    return tuple(sitk.GetArrayFromImage(getattr(phantom, k)) for k in ("mr", "ct", "labels"))


def label_id(phantom, name):
    return next(i for i, n in phantom.label_names.items() if n == name)


def mean_in(values, labels, phantom, name):
    return float(values[labels == label_id(phantom, name)].mean())


def centroid_mm(phantom, labels, name):
    """Physical (x, y, z) centroid of a label; direction is identity so x = origin + index * spacing."""
    zyx = np.argwhere(labels == label_id(phantom, name)).mean(axis=0)
    return np.array(phantom.labels.GetOrigin()) + zyx[::-1] * np.array(phantom.labels.GetSpacing())


@pytest.fixture(scope="module", params=PHANTOM_KINDS)
def phantom(request):
    return make_phantom(request.param, seed=0)


@pytest.mark.parametrize("kind", PHANTOM_KINDS)
def test_same_seed_same_phantom_other_seed_other_phantom(kind):
    a, b, c = (make_phantom(kind, seed) for seed in (5, 5, 6))
    for x, y in zip(arrays(a), arrays(b)):
        np.testing.assert_array_equal(x, y)
    for x, z in zip(arrays(a), arrays(c)):
        assert not np.array_equal(x, z)
    assert a.seed == 5 and a.kind == kind


def test_subjects_vary(phantom):
    subjects = [phantom] + [make_phantom(phantom.kind, seed) for seed in (1, 2)]
    volumes = [np.bincount(arrays(p)[2].ravel(), minlength=16) for p in subjects]
    bone_ct = [mean_in(arrays(p)[1], arrays(p)[2], p, "cortical_bone") for p in subjects]
    fat = label_id(phantom, "fat")
    assert len({tuple(v) for v in volumes}) == 3                   # shape/size/pose differ
    assert np.ptp([v[fat] for v in volumes]) > 0.05 * volumes[0][fat]   # fat thickness differs
    assert np.ptp(bone_ct) > 5                                      # tissue values differ


def test_geometry_is_shared_and_centred(phantom):
    images = (phantom.mr, phantom.ct, phantom.labels)
    for image in images:
        assert image.GetSize() == (64, 64, 48)
        assert image.GetSpacing() == (3.0, 3.0, 3.0)
        assert image.GetOrigin() == phantom.labels.GetOrigin()
        assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert phantom.labels.TransformIndexToPhysicalPoint((32, 32, 24)) == (0.0, 0.0, 0.0)
    assert [i.GetPixelID() for i in images] == [sitk.sitkFloat32, sitk.sitkFloat32, sitk.sitkUInt8]


def test_custom_grid():
    p = make_phantom("head", 1, shape=(40, 36, 32), spacing=(2.5, 3.0, 3.5))
    for image in (p.mr, p.ct, p.labels):
        assert image.GetSize() == (40, 36, 32) and image.GetSpacing() == (2.5, 3.0, 3.5)
    assert set(np.unique(arrays(p)[2])) == {0} | set(p.label_names)


def test_every_label_is_present(phantom):
    _, _, labels = arrays(phantom)
    assert set(np.unique(labels)) == {0} | set(phantom.label_names)
    assert len(set(phantom.label_names.values())) == len(phantom.label_names)
    assert (labels == 0).mean() > 0.2                              # air around the body


def test_ct_values_per_label(phantom):
    _, ct, labels = arrays(phantom)
    assert CT_RANGE[0] <= ct.min() and ct.max() <= CT_RANGE[1]
    assert abs(float(ct[labels == 0].mean()) + 1000) < 5
    for i, name in phantom.label_names.items():
        mean = float(ct[labels == i].mean())
        if name == AIR[phantom.kind]:
            assert mean < -900, (name, mean)
        elif name == "cortical_bone":
            assert 1100 < mean < 1900, (name, mean)
        elif name in MARROW:
            assert 150 < mean < 700, (name, mean)
        elif name == "fat":
            assert -150 < mean < -50, (name, mean)
        else:
            assert name in SOFT and -20 < mean < 100, (name, mean)


def test_ct_noise_level(phantom):
    _, ct, labels = arrays(phantom)
    outside = ct[labels == 0]
    assert 8 < outside[outside > -1024].std() < 22                 # Gaussian noise of 10-20 HU (air: no texture)


def test_mr_cortical_bone_and_air_are_both_dark(phantom):
    mr, _, labels = arrays(phantom)
    reference = mean_in(mr, labels, phantom, REFERENCE[phantom.kind])
    assert mean_in(mr, labels, phantom, "cortical_bone") < 0.15 * reference
    assert mean_in(mr, labels, phantom, AIR[phantom.kind]) < 0.15 * reference
    assert float(mr[labels == 0].mean()) < 0.15 * reference
    assert mr.min() >= 0
    # ... while their CTs are ~2500 HU apart, and marrow and fat are bright: MR contrast lives elsewhere
    assert mean_in(mr, labels, phantom, "fat") > reference
    marrow = next(n for n in phantom.label_names.values() if n in MARROW)
    assert mean_in(mr, labels, phantom, marrow) > 5 * mean_in(mr, labels, phantom, "cortical_bone")


def test_mr_has_bias_field_and_noise(phantom):
    mr, _, labels = arrays(phantom)
    region = mr[labels == label_id(phantom, REFERENCE[phantom.kind])]
    assert 0.02 < region.std() / region.mean() < 0.3


def test_head_anatomy_is_oriented_lps():
    p = make_phantom("head", 0)
    _, _, labels = arrays(p)
    body = np.argwhere(labels > 0)
    extent = (body.max(axis=0) - body.min(axis=0)) * np.array(p.labels.GetSpacing())[::-1]   # (z, y, x) mm
    assert extent[1] > 1.15 * extent[2]                             # longer front-to-back than side-to-side
    brain, sinus = centroid_mm(p, labels, "white_matter"), centroid_mm(p, labels, "air_cavity")
    eye = centroid_mm(p, labels, "eye")
    assert sinus[1] < brain[1] - 20 and eye[1] < brain[1] - 30      # anterior is -y
    assert brain[2] > eye[2] + 20                                   # superior is +z
    assert abs(eye[0]) < 5 and abs(brain[0]) < 5                    # left-right symmetric about x = 0


def test_pelvis_anatomy_is_oriented_lps():
    p = make_phantom("pelvis", 0)
    _, _, labels = arrays(p)
    bladder, sacrum = centroid_mm(p, labels, "bladder"), centroid_mm(p, labels, "spine_marrow")
    femur, hip = centroid_mm(p, labels, "femur_marrow"), centroid_mm(p, labels, "pelvis_marrow")
    assert bladder[1] < sacrum[1] - 20                              # bladder anterior to the sacrum
    assert femur[2] < hip[2]                                        # femurs below the hip bones
    femur_x = np.argwhere(labels == label_id(p, "femur_marrow"))[:, 2]
    assert femur_x.min() < 24 and femur_x.max() > 40                # one femur on each side
    assert not np.any(labels[:, :, 32] == label_id(p, "femur_marrow"))


def test_write_phantom_round_trip(tmp_path, phantom):
    paths = write_phantom(phantom, tmp_path, "subject")
    assert paths["mr"] == tmp_path / "mr" / "subject.nii.gz"
    assert paths["ct"] == tmp_path / "ct" / "subject.nii.gz"
    assert paths["labels"] == tmp_path / "labels" / "subject.nii.gz"
    names = json.loads((tmp_path / "labels.json").read_text(encoding="utf-8"))
    assert {int(k): v for k, v in names.items()} == phantom.label_names
    for key in ("mr", "ct", "labels"):
        original, read = getattr(phantom, key), sitk.ReadImage(str(paths[key]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(original))
        assert read.GetPixelID() == original.GetPixelID()
        np.testing.assert_allclose(read.GetSpacing(), original.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(read.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(read.GetDirection(), original.GetDirection(), atol=1e-6)


def test_write_refuses_mixing_kinds_and_bad_names(tmp_path):
    head, pelvis = (make_phantom(kind, 0, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0)) for kind in PHANTOM_KINDS)
    write_phantom(head, tmp_path, "a")
    write_phantom(head, tmp_path, "b")
    with pytest.raises(ValueError, match="separate folder"):
        write_phantom(pelvis, tmp_path, "c")
    with pytest.raises(ValueError, match="plain file name"):
        write_phantom(head, tmp_path, "../escape")


def test_write_dataset_is_named_and_reproducible(tmp_path):
    kwargs = dict(kind="pelvis", n_subjects=2, seed=3, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0))
    first = write_phantom_dataset(tmp_path / "a", **kwargs)
    again = write_phantom_dataset(tmp_path / "b", **kwargs)
    assert [p["ct"].name for p in first] == ["pelvis_000.nii.gz", "pelvis_001.nii.gz"]
    read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # noqa: E731
    for x, y in zip(first, again):
        np.testing.assert_array_equal(read(x["mr"]), read(y["mr"]))
    assert not np.array_equal(read(first[0]["labels"]), read(first[1]["labels"]))
    assert subject_seeds(3, 2) == subject_seeds(3, 2) and len(set(subject_seeds(3, 50))) == 50
    assert subject_seeds(3, 2) != subject_seeds(4, 2)


def test_preview_png(tmp_path, phantom):
    import matplotlib.image

    path = save_preview_png(phantom, tmp_path / "preview.png")
    assert 20_000 < path.stat().st_size < 300_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.1 and len(np.unique(image[..., 0])) > 100


def test_bad_arguments():
    with pytest.raises(ValueError, match="head.*pelvis"):
        make_phantom("knee", 0)
    with pytest.raises(ValueError, match="seed"):
        make_phantom("head", -1)
    with pytest.raises(ValueError, match="shape"):
        make_phantom("head", 0, shape=(64, 64))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom("head", 0, spacing=(3.0, 0.0, 3.0))
    with pytest.raises(ValueError, match="n_subjects"):
        write_phantom_dataset("unused", "head", 0)


@pytest.mark.parametrize("kind", PHANTOM_KINDS)
def test_generation_is_fast(kind):
    start = time.perf_counter()
    make_phantom(kind, 11)
    assert time.perf_counter() - start < 1.0
