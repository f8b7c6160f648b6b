"""`mrtoct evaluate` prints the metric set of the model's preset on the slices of its plane; the CT-window cap note."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import tiny_model
from MRtoCTSynthesisLib import metrics
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.cli import main
from MRtoCTSynthesisLib.modelfile import range_note, read_metadata
from MRtoCTSynthesisLib.phantom import make_phantom


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A phantom's CT as reference, a noisy copy as 'sCT', its MR; written as files."""
    folder = tmp_path_factory.mktemp("evaluate")
    phantom = make_phantom("head", 2, (24, 28, 20), (7.0, 7.0, 7.0))
    rng = np.random.default_rng(0)
    ct = V.array_of(phantom.ct)
    sct = V.image_like((ct + rng.normal(0, 60, ct.shape)).astype(np.float32), phantom.ct)
    paths = {"ref": folder / "ct.nii.gz", "pred": folder / "sct.nii.gz", "mr": folder / "mr.nii.gz"}
    for key, image in (("ref", phantom.ct), ("pred", sct), ("mr", phantom.mr)):
        V.write_volume(image, paths[key])
    return paths


def run_evaluate(volumes, tmp_path, capsys, *extra):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(volumes["pred"]), "--ref", str(volumes["ref"]), "--json", str(out),
                 *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8")), capsys.readouterr().out


def expected_in_plane(volumes, plane, preset, ct_window, with_mr=False):
    images = [V.read_volume(volumes[k]) for k in ("pred", "ref", "mr")]
    mask = V.body_mask(images[1], threshold=-500.0)
    slices = [V.volume_to_slices(V.array_of(V.to_canonical(image)[0]), plane) for image in images + [mask]]
    return metrics.paper_metrics(slices[0], slices[1], slices[3] > 0, preset, ct_window, 0, (7.0, 7.0, 7.0),
                                 slices[2] if with_mr else None)


def test_evaluate_prints_yangs_set_on_the_models_plane(volumes, tmp_path, capsys):
    model = tiny_model(tmp_path / "m.mrtoct.safetensors", plane="coronal")  # preset yang2018, coronal
    result, printed = run_evaluate(volumes, tmp_path, capsys, "--model", str(model))
    assert list(result) == ["mae", "psnr", "ssim", "ssim_hg"]
    assert "yang2018 metrics" in printed and "coronal slices" in printed
    assert result == pytest.approx(expected_in_plane(volumes, "coronal", "yang2018", (-1000, 3500)))
    sagittal = expected_in_plane(volumes, "sagittal", "yang2018", (-1000, 3500))
    assert result["ssim"] != pytest.approx(sagittal["ssim"], abs=1e-6), "the plane decides the SSIM slices"


def test_evaluate_prints_hiasas_set_for_the_hiasa_preset(volumes, tmp_path, capsys):
    result, printed = run_evaluate(volumes, tmp_path, capsys, "--preset", "hiasa2018", "--mr", str(volumes["mr"]))
    assert list(result) == ["mae_255", "psnr_255", "mi_mr_sct_slices", "mi_mr_sct"]
    assert "[-150, 350] HU" in printed
    assert result == pytest.approx(expected_in_plane(volumes, "coronal", "hiasa2018", (-150, 350), with_mr=True))


def test_evaluate_refuses_volumes_on_different_grids(volumes, tmp_path, capsys):
    other = V.read_volume(volumes["ref"])
    other.SetOrigin((1.0, 2.0, 3.0))
    path = tmp_path / "moved.nii.gz"
    sitk.WriteImage(other, str(path))
    assert main(["evaluate", "--pred", str(volumes["pred"]), "--ref", str(path)]) == 2
    assert "share one voxel grid" in capsys.readouterr().err


def test_range_note_names_the_cap_only_when_there_is_one(tmp_path):
    assert range_note({"ct_window": [-1000.0, 3500.0]}) == ""
    note = range_note({"ct_window": [-150.0, 350.0]})
    assert "[-150, 350] HU" in note and "below -150 HU" in note and "above 350 HU" in note
    assert "above" not in range_note({"ct_window": [-500.0, 3000.0]})
    assert range_note(read_metadata(tiny_model(tmp_path / "m.mrtoct.safetensors"))) == ""


def test_synthesize_prints_the_cap_of_a_narrow_window_model(tmp_path, capsys):
    from MRtoCTSynthesisLib.modelfile import load_model, save_model

    source = load_model(tiny_model(tmp_path / "tiny.mrtoct.safetensors", plane="axial"))
    metadata = {k: v for k, v in source.metadata.items() if k not in ("format", "format_version", "engine_version")}
    capped = save_model(tmp_path / "capped.mrtoct.safetensors", {**metadata, "ct_window": [-150.0, 350.0]},
                        source.state_dicts)
    mr = V.write_volume(make_phantom("head", 1, (24, 24, 16), (8.0, 8.0, 8.0)).mr, tmp_path / "mr.nii.gz")
    for model, expected in ((capped, True), (source.path, False)):
        assert main(["synthesize", str(mr), "--model", str(model), "--out", str(tmp_path / "out"),
                     "--device", "cpu"]) == 0
        printed = capsys.readouterr().out
        assert ("caps every sCT" in printed) == expected, printed
