"""Segmentation: G_MR(CT) and label maps on exactly the input grid, the trainer (loss falls, resume), model files,
outputs named and coloured by the label table, the CLI."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from helpers import PERMUTED_FLIPPED, assert_same_geometry, make_volume, tiny_model, tiny_phantom_dataset
from MRtoCTSegmentLib import segment as S
from MRtoCTSegmentLib.evaluation import evaluate_labels, mean_surface_distance
from MRtoCTSegmentLib.labels import LabelTable, load_label_table
from MRtoCTSegmentLib.modelfile import (METADATA_KEY, SegModelFileError, channel_names, load_seg_model,
                                        save_seg_model)
from MRtoCTSegmentLib.train import SegTrainConfig, build_seg_trainer
from MRtoCTSegmentLib.translate import synthesize_mr
from MRtoCTSegmentLib.unet import UNet2D
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.modelfile import load_model
from MRtoCTSynthesisLib.preprocessing import Normalization

DIRECTIONS = {"oblique": None, "permuted_flipped": PERMUTED_FLIPPED, "lps": np.eye(3)}
TINY = dict(image_size=(32, 32), augment_pad=(48, 48), base=4, batch_size=4, log_every=1, validate_every=1000,
            preview_every=1000, checkpoint_every=1000, validation_fraction=0.34)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three tiny pelvis phantoms, a random synthesis model (coronal), a shared cache and one trained U-Net."""
    root = tmp_path_factory.mktemp("seg")
    tiny_phantom_dataset(root / "ph", "pelvis", n=3)
    synthesis = tiny_model(root / "synth.mrtoct.safetensors", "coronal", (32, 32))
    config = SegTrainConfig(channels="mr+sct", iterations=40, lr=3e-3, **{**TINY, "validate_every": 20})
    trainer = build_seg_trainer(config, root / "ph" / "ct", root / "ph" / "labels", synthesis, root / "run", "cpu",
                                cache_dir=root / "cache", show_progress=False)
    model = trainer.run()
    return {"root": root, "synthesis": synthesis, "model": model, "cache": root / "cache", "trainer": trainer}


def _losses(run):
    with open(run / "losses.csv", encoding="utf-8") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------------- training

def test_tiny_training_run_lowers_the_loss_and_reports_events(world):
    losses = _losses(world["root"] / "run")
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    events = [json.loads(line) for line in (world["root"] / "run" / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished" and "checkpoint" in kinds and "preview" in kinds
    validation = [e for e in events if e["event"] == "validation"][-1]["metrics"]
    assert set(validation) == {f"dice_{n}" for n in load_label_table("pelvis").names} | {"mean_dice"}
    model = load_seg_model(world["model"])
    assert model.metadata["channels"] == "mr+sct" and model.table.name == "pelvis"
    assert model.metadata["synthesis_model"]["name"] == "tiny-test"
    assert model.metadata["network"]["kwargs"] == {"in_channels": 2, "n_classes": 13, "base": 4, "norm": "batch",
                                                   "dropout": 0.0}
    assert model.normalization.mr_window == (0.0, 3500.0) and model.normalization.plane == "coronal"


def test_killed_run_resumes_exactly(world, tmp_path):
    root = world["root"]
    args = (root / "ph" / "ct", root / "ph" / "labels", world["synthesis"])
    config = SegTrainConfig(channels="sct", iterations=6, **{**TINY, "checkpoint_every": 3})
    straight = build_seg_trainer(config, *args, tmp_path / "a", "cpu", cache_dir=world["cache"], show_progress=False)
    straight.run()
    broken = build_seg_trainer(config, *args, tmp_path / "b", "cpu", cache_dir=world["cache"], show_progress=False)
    step = broken.train_step

    def dies_after_three(*batch):
        if broken.iteration == 3:
            raise RuntimeError("killed")
        return step(*batch)
    broken.train_step = dies_after_three
    with pytest.raises(RuntimeError, match="killed"):
        broken.run()
    assert json.loads((tmp_path / "b" / "events.jsonl").read_text(encoding="utf-8").splitlines()[-1])["event"] == "error"
    with pytest.raises(ValueError, match="already holds a run"):
        build_seg_trainer(config, *args, tmp_path / "b", "cpu", cache_dir=world["cache"], show_progress=False)
    resumed = build_seg_trainer(config, *args, tmp_path / "b", "cpu", cache_dir=world["cache"], resume=True,
                                show_progress=False)
    assert resumed.iteration == 3
    resumed.run()
    for key, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_channels_that_need_g_mr_refuse_to_start_without_a_synthesis_model(world, tmp_path):
    root = world["root"]
    with pytest.raises(ValueError, match="synthesis model"):
        build_seg_trainer(SegTrainConfig(channels="mr", **TINY), root / "ph" / "ct", root / "ph" / "labels", None,
                          tmp_path / "r", "cpu")
    with pytest.raises(ValueError, match="multiples of 16"):
        SegTrainConfig(image_size=(40, 32))


# ------------------------------------------------------------------------------------------- G_MR(CT)

class IdentityBundle:
    def __init__(self, bundle):
        self.metadata, self.path = bundle.metadata, None

    def build(self, name="G_CT", device="cpu"):
        return torch.nn.Identity()


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_synthetic_mr_is_on_the_ct_grid(world, direction):
    ct = make_volume(size=(22, 18, 9), direction=DIRECTIONS[direction], low=-1000, high=2000)
    smr = synthesize_mr(ct, world["synthesis"], device="cpu", batch_size=4)
    assert_same_geometry(smr, ct)
    values = sitk.GetArrayFromImage(smr)
    assert smr.GetPixelID() == sitk.sitkFloat32 and values.min() >= 0 and values.max() <= 3500 + 1e-3


def test_synthetic_mr_undoes_every_step_exactly(tmp_path):
    """Identity G_MR and the model's pixel spacing equal to the CT's: the output is the CT window mapped to MR units."""
    ct = make_volume(size=(20, 16, 12), spacing=(2.0, 2.0, 2.0), direction=PERMUTED_FLIPPED, low=-1200, high=3000)
    bundle = load_model(tiny_model(tmp_path / "m.mrtoct.safetensors", "coronal", (32, 32), [2.0, 2.0]))
    smr = V.array_of(synthesize_mr(ct, IdentityBundle(bundle), device="cpu", batch_size=5))
    ct_window, mr_window = V.IntensityWindow(-1000, 3500), V.IntensityWindow(0, 3500)
    np.testing.assert_allclose(smr, mr_window.from_network(ct_window.to_network(V.array_of(ct))), atol=1e-2)


# ------------------------------------------------------------------------------------------- inference geometry

@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_label_map_has_exactly_the_mr_grid(world, direction):
    mr = make_volume(size=(22, 18, 9), direction=DIRECTIONS[direction])
    before = sitk.GetArrayFromImage(mr).copy()
    result = S.segment(mr, world["model"], world["synthesis"], device="cpu", batch_size=4, probabilities=True)
    assert_same_geometry(result.labels, mr)
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayFromImage(result.labels).max() < result.table.n_classes
    assert set(result.probabilities) == {"background", *result.table.names}
    total = sum(sitk.GetArrayFromImage(p).astype(np.float64) for p in result.probabilities.values())
    assert_same_geometry(result.probabilities["femur"], mr)
    inside = total > 0.5  # oblique: voxels outside the resampled canonical box have no prediction
    np.testing.assert_allclose(total[inside], 1.0, atol=2e-2)
    assert inside.mean() > 0.5
    assert_same_geometry(result.sct, mr)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mr), before)  # input untouched


class ThresholdNet(torch.nn.Module):
    """Class 1 where the sCT channel is above -0.5 (in the network's [-1, 1] units)."""

    def forward(self, x):
        logit = 20 * (x[:, 1:2] + 0.5)
        return torch.cat([-logit, logit], dim=1)


def _one_structure_model(path, spacing):
    record = load_label_table("pelvis").to_json()
    record.update(name="bone-only", source_mapping=None)
    record["structures"] = record["structures"][:1]
    table = LabelTable.from_json({k: v for k, v in record.items() if v is not None})
    norm = Normalization("axial", (32, 32), (-1000.0, 3500.0), (0.0, 3500.0), pixel_spacing_mm=spacing)
    metadata = {"name": "threshold", "network": {"architecture": "unet2d", "kwargs": {
        "in_channels": 2, "n_classes": 2, "base": 2, "norm": "batch", "dropout": 0.0}},
        "channels": "mr+sct", "label_table": table.to_json(), "normalization": norm.to_json()}
    return save_seg_model(path, metadata, UNet2D(2, 2, 2))


def test_labels_land_on_exactly_the_voxels_that_produced_them(tmp_path, monkeypatch):
    """A known decision (sCT > threshold) must come back voxel for voxel on an axis-aligned, permuted MR grid."""
    mr = make_volume(size=(20, 16, 12), spacing=(2.0, 2.0, 3.0), direction=PERMUTED_FLIPPED, low=100, high=1000)
    pattern = (np.random.default_rng(1).random(sitk.GetArrayFromImage(mr).shape) > 0.6)
    sct = V.image_like(np.where(pattern, 1000.0, -1000.0).astype(np.float32), mr)
    model = load_seg_model(_one_structure_model(tmp_path / "t.mrtoct-seg.safetensors", [2.0, 2.0]))
    monkeypatch.setattr(type(model), "build", lambda self, device="cpu": ThresholdNet())
    result = S.segment(mr, model, sct=sct, device="cpu", batch_size=3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), pattern.astype(np.uint8))
    oblique = make_volume(size=(20, 16, 12), spacing=(2.0, 2.0, 3.0), low=100, high=1000)
    blocks = np.kron(np.random.default_rng(2).random((3, 4, 5)) > 0.5, np.ones((4, 4, 4)))[:12, :16, :20]
    sct = V.image_like(np.where(blocks, 1000.0, -1000.0).astype(np.float32), oblique)
    result = S.segment(oblique, model, sct=sct, device="cpu")
    assert_same_geometry(result.labels, oblique)
    agreement = (sitk.GetArrayFromImage(result.labels) == blocks)[2:-2, 2:-2, 2:-2].mean()
    assert agreement > 0.9


def test_cancel_and_missing_sct(world, tmp_path):
    mr = make_volume(size=(22, 18, 9))
    with pytest.raises(S.SegmentationCancelled):
        S.segment(mr, world["model"], world["synthesis"], device="cpu", cancel=lambda: True)
    with pytest.raises(S.SynthesisCancelled):  # the synthesis engine's own cancel type catches it too
        S.segment(mr, world["model"], world["synthesis"], device="cpu", cancel=lambda: True)
    model = load_seg_model(world["model"])
    model.metadata["synthesis_model"] = None
    with pytest.raises(ValueError, match="synthesis model"):
        S.segment(mr, model, device="cpu")


def test_a_second_segmentation_run_into_the_same_folder_is_refused(world, tmp_path):
    from MRtoCTSynthesisLib.claim import OutputInUseError, claimed

    mr = world["root"] / "ph" / "mr" / "pelvis_000.nii.gz"
    with claimed([tmp_path / "out"]):                    # the state of another run writing there
        with pytest.raises(OutputInUseError, match="being written"):
            S.segment_files([mr], tmp_path / "out", world["model"], world["synthesis"], device="cpu")
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.nii.gz"))
    results = S.segment_files([mr], tmp_path / "out", world["model"], world["synthesis"], device="cpu")
    assert results[0].error is None and results[0].outputs


# ------------------------------------------------------------------------------------------- outputs, names, colours

def test_outputs_take_names_colours_and_codes_from_the_label_table(world, tmp_path):
    mr = sitk.ReadImage(str(world["root"] / "ph" / "mr" / "pelvis_000.nii.gz"))
    result = S.segment(mr, world["model"], world["synthesis"], device="cpu")
    table = load_label_table("pelvis")
    assert result.table.names == table.names
    S.write_outputs(result, tmp_path, "p0")
    seg = sitk.ReadImage(str(tmp_path / "p0.seg.nrrd"))
    assert_same_geometry(seg, mr)
    for index, structure in enumerate(table.structures):
        key = f"Segment{index}_"
        assert seg.GetMetaData(key + "Name") == structure.display_name
        assert seg.GetMetaData(key + "ID") == structure.name
        assert seg.GetMetaData(key + "LabelValue") == str(structure.value)
        color = [float(c) for c in seg.GetMetaData(key + "Color").split()]
        np.testing.assert_allclose(color, structure.color_float, atol=1e-5)
        assert f"SCT^{structure.type.value}^{structure.type.meaning}" in seg.GetMetaData(key + "Tags")
        assert (tmp_path / f"p0_{structure.name}.nii.gz").exists()
    with open(tmp_path / "p0_volumes.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == table.names
    labels = sitk.GetArrayFromImage(result.labels)
    femur = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p0_femur.nii.gz")))
    np.testing.assert_array_equal(femur, labels == table.by_name("femur").value)


# ------------------------------------------------------------------------------------------- model files

def test_model_file_refuses_pickle_unknown_architecture_and_mismatches(world, tmp_path):
    pickled = tmp_path / "pickled.mrtoct-seg.safetensors"
    torch.save(UNet2D(2, 13, 4).state_dict(), pickled)
    with pytest.raises(SegModelFileError, match="pickle"):
        load_seg_model(pickled)
    model = load_seg_model(world["model"])
    metadata = json.loads(json.dumps(model.metadata))
    metadata["network"]["architecture"] = "vnet3d"
    unknown = tmp_path / "unknown.mrtoct-seg.safetensors"
    save_file(dict(model.state_dict), str(unknown), metadata={METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(SegModelFileError, match="unknown architecture 'vnet3d'"):
        load_seg_model(unknown)
    metadata = json.loads(json.dumps(model.metadata))
    metadata["network"]["kwargs"]["base"] = 8
    with pytest.raises(SegModelFileError, match="shape mismatch"):
        save_seg_model(tmp_path / "x.mrtoct-seg.safetensors", metadata, model.state_dict)
    metadata = json.loads(json.dumps(model.metadata))
    metadata["channels"] = "sct"
    with pytest.raises(SegModelFileError, match="in_channels 1"):
        save_seg_model(tmp_path / "x.mrtoct-seg.safetensors", metadata, model.state_dict)
    with pytest.raises(SegModelFileError, match="not a segmentation model"):
        load_seg_model(world["synthesis"])
    assert channel_names("mr+sct") == ("mr", "sct")


def test_surface_distance_by_hand():
    ref = np.zeros((1, 1, 10), bool)
    ref[0, 0, 2:5] = True
    pred = np.roll(ref, 2, axis=2)  # voxels 4-6 vs 2-4 (1.5 mm apart); every voxel is on the surface
    # pred -> ref: 0, 1, 2 voxels; ref -> pred: 2, 1, 0 voxels; mean 1 voxel = 1.5 mm, HD95 2 voxels = 3 mm
    assert mean_surface_distance(pred, ref, (1, 1, 1.5)) == pytest.approx(1.5)
    result = evaluate_labels(pred.astype(int), ref.astype(int), (1, 1, 1.5))
    assert result["1"]["dice"] == pytest.approx(2 / 6) and result["1"]["hd95_mm"] == pytest.approx(3.0)
    assert mean_surface_distance(pred, np.zeros_like(ref), (1, 1, 1)) == float("inf")


# ------------------------------------------------------------------------------------------- command line

def test_cli_train_segment_evaluate(world, tmp_path, capsys):
    root = world["root"]
    code = cli_main(["train-seg", "--ct", str(root / "ph" / "ct"), "--labels", str(root / "ph" / "labels"),
                     "--synthesis-model", str(world["synthesis"]), "--out", str(tmp_path / "run"), "--channels", "sct",
                     "--image-size", "32", "32", "--augment-pad", "48", "48", "--base", "2", "--iterations", "2",
                     "--batch-size", "2", "--cache", str(world["cache"]), "--no-progress", "--device", "cpu",
                     "--threads", "1"])
    assert code == 0 and (tmp_path / "run" / "model.mrtoct-seg.safetensors").exists()
    mr = root / "ph" / "mr" / "pelvis_001.nii.gz"
    code = cli_main(["segment", str(mr), "--model", str(world["model"]), "--synthesis-model", str(world["synthesis"]),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--save-sct"])
    assert code == 0
    assert {"pelvis_001_seg.nii.gz", "pelvis_001.seg.nrrd", "pelvis_001_sct.nii.gz", "pelvis.ctbl",
            "pelvis_001_femur.nii.gz"} <= {p.name for p in (tmp_path / "out").iterdir()}
    capsys.readouterr()
    code = cli_main(["evaluate-seg", "--pred", str(tmp_path / "out" / "pelvis_001_seg.nii.gz"),
                     "--ref", str(root / "ph" / "labels" / "pelvis_001.nii.gz"), "--labels", "pelvis",
                     "--ref-names", str(root / "ph" / "labels.json"), "--json", str(tmp_path / "e.json")])
    printed = capsys.readouterr().out
    assert code == 0 and "femur" in printed and "MSD (mm)" in printed
    scores = json.loads((tmp_path / "e.json").read_text(encoding="utf-8"))
    assert set(scores) == set(load_label_table("pelvis").names)
    assert all(s["dice"] is None or 0 <= s["dice"] <= 1 for s in scores.values())
    bad = cli_main(["segment", str(mr), "--model", str(world["synthesis"]), "--out", str(tmp_path / "x")])
    assert bad == 2  # a synthesis model is not a segmentation model: clear error, exit code 2


def test_experiment_runs_end_to_end_at_toy_size(world, tmp_path):
    from MRtoCTSegmentLib.experiment import parse_args, run_experiment

    out = tmp_path / "exp"
    args = parse_args(["--out", str(out), "--synthesis-model", str(world["synthesis"]), "--modes", "sct", "mr",
                       "--train-subjects", "2", "--test-subjects", "1", "--shape", "32", "28", "24",
                       "--spacing", "12", "12", "10", "--pixel-spacing", "12", "12", "--image-size", "32", "32",
                       "--iterations", "2", "--base", "2", "--batch-size", "2", "--no-progress"])
    result = run_experiment(args)
    assert [(s["mode"], s["test_input"]) for s in result["summary"]] == [
        ("sct", "sCT"), ("mr", "MR"), ("sct", "real CT (no synthesis error)")]  # the one-channel mode sees a CT only
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "| channels | test input | pelvis | femur | gluteus_medius | gluteus_minimus |" in text
    with open(out / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and "femur" in rows[0] and (out / "figure.png").exists()
