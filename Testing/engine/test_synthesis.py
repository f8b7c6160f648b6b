"""Synthesis: exact geometry in any orientation and plane, the undo chain, batch files, cancel, CLI."""
import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import PERMUTED_FLIPPED, assert_same_geometry, make_volume, tiny_model
from MRtoCTSynthesisLib import synthesis as S
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.modelfile import ModelFileError, load_model
from MRtoCTSynthesisLib.preprocessing import foreground_of

DIRECTIONS = {"oblique": None, "permuted_flipped": PERMUTED_FLIPPED, "lps": np.eye(3)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {plane: tiny_model(folder / f"{plane}.mrtoct.safetensors", plane) for plane in V.PLANES}


@pytest.mark.parametrize("plane", V.PLANES)
@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_sct_has_exactly_the_input_grid(models, plane, direction):
    mr = make_volume(size=(22, 18, 9), direction=DIRECTIONS[direction])
    before = sitk.GetArrayFromImage(mr).copy()
    result = S.synthesize(mr, models[plane], device="cpu", batch_size=4, quality_map=True)
    assert_same_geometry(result.sct, mr)
    assert result.sct.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(result.sct)
    assert np.isfinite(values).all() and values.min() >= -1000 - 1e-3 and values.max() <= 3500 + 1e-3
    for name in S.QUALITY_MAPS:
        assert_same_geometry(result.quality[name], mr)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mr), before)  # input untouched


@pytest.mark.parametrize("spacing, own_slices", [((0.7, 0.8, 2.5), True), ((0.9, 1.0, 1.2), False)])
def test_auto_runs_a_tilted_thick_series_on_its_own_slices(models, spacing, own_slices):
    """oblique="auto": a tilted series of thick slices (voxels > 2x longer one way) meets the network as its own
    slices, since resampling onto LPS axes would blend neighbouring slices; a near-isotropic one is resampled."""
    mr = make_volume(size=(22, 18, 9), spacing=spacing)                  # 20/10 degrees oblique
    run = {how: V.array_of(S.synthesize(mr, models["axial"], device="cpu", oblique=how).sct)
           for how in ("auto", "nearest", "resample")}
    assert np.abs(run["nearest"] - run["resample"]).max() > 1.0          # the two ways do differ here
    np.testing.assert_array_equal(run["auto"], run["nearest" if own_slices else "resample"])
    with pytest.raises(ValueError, match="oblique must be"):
        S.synthesize(mr, models["axial"], device="cpu", oblique="rotate")


def test_the_cli_and_synthesize_files_pass_oblique_on(tmp_path, models):
    mr = make_volume(size=(22, 18, 9), spacing=(0.7, 0.8, 2.5))          # tilted thick slices: auto = nearest
    V.write_volume(mr, tmp_path / "mr.nii.gz")
    for how in ("resample", "nearest"):
        assert cli_main(["synthesize", str(tmp_path / "mr.nii.gz"), "--model", str(models["axial"]), "--out",
                         str(tmp_path / how), "--device", "cpu", "--oblique", how]) == 0
        direct = S.synthesize(mr, models["axial"], device="cpu", oblique=how).sct
        np.testing.assert_allclose(V.array_of(V.read_volume(tmp_path / how / "mr_sct.nii.gz")), V.array_of(direct),
                                   atol=1e-3)


def test_a_unet_model_takes_any_field_of_view(tmp_path):
    """A slice that outgrows the canvas grows it to a multiple the U-Net accepts (16), not the ResNet's 4."""
    from MRtoCTSynthesisLib.modelfile import save_untrained_model

    model = save_untrained_model(tmp_path / "unet.mrtoct.safetensors", ngf=2, plane="axial", image_size=(32, 32),
                                 pixel_spacing_mm=(4.0, 4.0), generator="unet")
    mr = make_volume(size=(37, 41, 5), spacing=(4.0, 4.0, 4.0))      # 37 x 41 pixels > the 32 x 32 canvas
    result = S.synthesize(mr, model, device="cpu", batch_size=2)
    assert_same_geometry(result.sct, mr)
    assert np.isfinite(sitk.GetArrayFromImage(result.sct)).all()


def test_a_one_way_model_gives_the_quality_map_it_can(tmp_path):
    """Without G_MR (a supervised model) there is no cycle residual; the structure discrepancy needs only G_CT."""
    from MRtoCTSynthesisLib.modelfile import save_untrained_model

    model = save_untrained_model(tmp_path / "one_way.mrtoct.safetensors", generators=("G_CT",))
    mr = make_volume(size=(22, 18, 9))
    result = S.synthesize(mr, model, device="cpu", quality_map=True)
    assert list(result.quality) == ["structure_discrepancy"]
    assert_same_geometry(result.quality["structure_discrepancy"], mr)
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    [done] = S.synthesize_files([tmp_path / "mr.nii.gz"], tmp_path / "out", model, device="cpu", quality_map=True)
    assert done.error is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mr_sct.nii.gz", "mr_structure_discrepancy.nii.gz"]


class IdentityBundle:
    """Wraps a bundle so G_CT is the identity: the sCT must then be the MR's normalised values mapped to HU."""

    def __init__(self, bundle):
        self.metadata = bundle.metadata

    def build(self, name="G_CT", device="cpu"):
        return torch.nn.Identity()


@pytest.mark.parametrize("plane", V.PLANES)
def test_every_step_is_undone_exactly(tmp_path, monkeypatch, plane):
    """With an identity generator and the model's spacing equal to the input's, nothing may move or blur."""
    mr = make_volume(size=(20, 16, 12), spacing=(2.0, 2.0, 2.0), direction=PERMUTED_FLIPPED, high=2000)
    spacing = [2.0, 2.0]
    bundle = load_model(tiny_model(tmp_path / "m.mrtoct.safetensors", plane, (32, 32), spacing))
    monkeypatch.setattr(S, "load_bundle", lambda model: IdentityBundle(bundle))
    sct = V.array_of(S.synthesize(mr, "ignored", device="cpu", batch_size=5, mask_background=False).sct)
    array = V.array_of(mr)
    scaled = array * (3000 / np.percentile(array[foreground_of(array)], 99.5))
    expected = V.IntensityWindow(-1000, 3500).from_network(V.IntensityWindow(0, 3500).to_network(scaled))
    np.testing.assert_allclose(sct, expected, atol=0.05)


def test_background_outside_the_body_is_air(models):
    mr = make_volume(size=(24, 24, 12), spacing=(2.0, 2.0, 2.0), direction=np.eye(3), high=5)  # noise background
    array = V.array_of(mr)
    array[3:9, 6:18, 6:18] += 800  # the "body": a bright block
    mr = V.image_like(array, mr)
    masked = V.array_of(S.synthesize(mr, models["sagittal"], device="cpu").sct)
    unmasked = V.array_of(S.synthesize(mr, models["sagittal"], device="cpu", mask_background=False).sct)
    far = np.zeros(array.shape, bool)
    far[:, :, :2] = True  # 8 mm from the block: outside the 5 mm margin
    assert np.all(masked[far] == -1000) and not np.all(unmasked[far] == -1000)
    inside = np.zeros(array.shape, bool)
    inside[3:9, 6:18, 6:18] = True
    np.testing.assert_array_equal(masked[inside], unmasked[inside])


def test_model_files_are_checked_before_anything_runs(tmp_path):
    mr = make_volume()
    evil = tmp_path / "evil.mrtoct.safetensors"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelFileError, match="pickle"):
        S.synthesize(mr, evil)
    with pytest.raises(ModelFileError, match="no model of that name"):
        S.synthesize(mr, "no-such-model")


def test_cancel_stops_and_returns_nothing(models):
    calls = []
    with pytest.raises(S.SynthesisCancelled):
        S.synthesize(make_volume(), models["axial"], device="cpu", batch_size=1,
                     cancel=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


def test_progress_reaches_one(models):
    seen = []
    S.synthesize(make_volume(), models["sagittal"], device="cpu", progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_batch_with_a_bad_file_reports_it_and_keeps_the_others(models, tmp_path):
    good = [V.write_volume(make_volume(seed=s), tmp_path / "in" / f"mr{s}.nii.gz") for s in (1, 2)]
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(b"not a volume")
    out = tmp_path / "out"
    results = S.synthesize_files([good[0], bad, good[1]], out, models["sagittal"], device="cpu", quality_map=True,
                                 dicom_out=tmp_path / "dicom")
    assert [r.error is None for r in results] == [True, False, True]
    assert "cannot be read" in results[1].error
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"mr{s}{suffix}.nii.gz" for s in (1, 2) for suffix in ("_sct", "_cycle_residual", "_structure_discrepancy"))
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["mr1", "mr2"]
    for path, result in zip(good, (results[0], results[2])):
        assert_same_geometry(V.read_volume(result.output), V.read_volume(path), tol=1e-5)


def test_cli_synthesize_and_evaluate(models, tmp_path, capsys):
    mr = V.write_volume(make_volume(), tmp_path / "mr.nrrd")
    bad = tmp_path / "missing.nii.gz"
    code = cli_main(["synthesize", str(mr), str(bad), "--model", str(models["coronal"]), "--out",
                     str(tmp_path / "out"), "--device", "cpu", "--progress-json"])
    assert code == 1  # one input failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any("progress" in line for line in lines)
    records = lines[-1]["result"]
    assert records[0]["error"] is None and "no such file" in records[1]["error"]
    sct = records[0]["output"]
    assert cli_main(["evaluate", "--pred", sct, "--ref", sct, "--mask", str(mr), "--preset", "hiasa2018", "--json",
                     str(tmp_path / "m.json")]) == 0  # Hiasa's set: its coronal slices are too small for SSIM's 11x11
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["mae_255"] == 0 and metrics["psnr_255"] == float("inf")
