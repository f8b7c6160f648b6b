"""Inputs that are not MRs but pass the value checks (issue 20): a CT without its rescale, a label map, a mask."""
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import REAL_DATA, tiny_model
from MRtoCTSynthesisLib import synthesis as S
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.input_kind import non_mr_kind
from MRtoCTSynthesisLib.phantom import make_phantom

REAL_MRS = ("head_t1_philips_mprage.nii.gz", "head_t1gd_remind022.nii.gz", "head_t1_rire001.mha",
            "head_t1gd_brain1.nrrd", "head_t1_tcga_fg6692.nii.gz", "head_t1gd_tcga_fg6692.nii.gz",
            "pelvis_mr_t2.nii.gz")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("head", 4, (40, 40, 30), (5.0, 5.0, 5.0))


def as_image(array, like):
    return V.image_like(np.ascontiguousarray(array), like)


def test_unrescaled_ct_label_map_and_mask_are_recognised(phantom):
    ct = V.array_of(phantom.ct)
    assert "without its rescale" in non_mr_kind(np.rint(ct + 1024).astype(np.int16))
    assert "label map" in non_mr_kind(V.array_of(phantom.labels, np.uint8))
    assert "2 distinct integer values: 0, 1" in non_mr_kind((V.array_of(phantom.labels) > 0).astype(np.uint8))
    assert "soft tissue at HU + 32768" in non_mr_kind(np.rint(ct + 32768).astype(np.uint16))   # unsigned storage
    assert "a constant volume (every voxel 300" in non_mr_kind(np.full((8, 8, 8), 300, np.int16))
    assert non_mr_kind(V.array_of(phantom.mr)) is None
    assert non_mr_kind(np.rint(V.array_of(phantom.mr)).astype(np.int16)) is None      # an integer MR is an MR


@pytest.mark.parametrize("name", REAL_MRS)
def test_real_mrs_are_accepted(name):
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (real data lives beside the project)")
    assert non_mr_kind(V.array_of(V.read_volume(path))) is None


def test_synthesis_refuses_them_and_the_override_accepts(tmp_path, phantom):
    model = tiny_model(tmp_path / "m.mrtoct.safetensors")
    unrescaled = as_image(np.rint(V.array_of(phantom.ct) + 1024).astype(np.float32), phantom.ct)
    with pytest.raises(V.VolumeError, match="without its rescale.*--input-is-mr"):
        S.synthesize(unrescaled, model, device="cpu")
    assert S.synthesize(unrescaled, model, device="cpu", input_is_mr=True).sct.GetSize() == unrescaled.GetSize()
    mask = sitk.Cast(phantom.labels > 0, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    cli = [sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", str(tmp_path / "mask.nii.gz"), "--model",
           str(model), "--device", "cpu", "--out", str(tmp_path / "out")]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "label map or mask" in refused.stderr + refused.stdout
    assert not (tmp_path / "out" / "mask_sct.nii.gz").exists()
    accepted = subprocess.run([*cli, "--input-is-mr"], capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stderr
