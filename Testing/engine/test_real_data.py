"""The real, unpaired scans beside the repo load, normalise and slice (skipped when the folder is missing)."""
import numpy as np
import pytest
import torch

from helpers import REAL_DATA, requires_real_data
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.preprocessing import Normalization, prepare_volume

SCANS = {  # name -> (modality, expected size)
    "head_t1_rire001.mha": ("mr", (256, 256, 26)),
    "head_t1gd_brain1.nrrd": ("mr", (256, 256, 25)),
    "head_ct_ge_dicom": ("ct", (512, 611, 37)),  # regularised: 18.5 deg tilt, gaps 1-7 mm
    "pelvis_ct.nii.gz": ("ct", (122, 101, 112)),
    "pelvis_mr_t2.nii.gz": ("mr", (384, 384, 19)),
}


@requires_real_data
@pytest.mark.parametrize("name", sorted(SCANS))
@pytest.mark.parametrize("preset_name", ["yang2018", "hiasa2018"])
def test_real_scan_loads_normalises_and_slices(name, preset_name):
    modality, size = SCANS[name]
    image = V.read_volume(REAL_DATA / name)
    assert image.GetSize() == size
    before = V.array_of(image).copy()
    norm = Normalization.from_config(preset(preset_name))
    prepared = prepare_volume(image, modality, norm)
    np.testing.assert_array_equal(V.array_of(image), before)  # input untouched
    slices = prepared.slices
    assert slices.ndim == 3 and slices.dtype == np.float32
    assert np.isfinite(slices).all() and slices.min() >= -1 and slices.max() <= 1
    assert slices.max() > -0.9, "some anatomy falls inside the window"
    fit = V.plan_slice_fit(slices.shape[1:], prepared.pixel_spacing, norm.image_size)
    canvas = V.fit_slices(torch.from_numpy(slices[:4, None]), fit, pad_value=-1.0)
    assert tuple(canvas.shape[-2:]) == norm.image_size


@requires_real_data
def test_gantry_tilted_ct_is_regularised_on_read():
    image = V.read_volume(REAL_DATA / "head_ct_ge_dicom")
    assert image.GetSize() == (512, 611, 37)  # re-gridded along the slice normal, covering the sheared slices
    assert not V.Geometry.of(image).is_axis_aligned()  # the slice planes themselves are tilted 18.5 degrees
    prepared = prepare_volume(image, "ct", Normalization.from_config(preset("yang2018")))
    assert prepared.reorientation.resampled
