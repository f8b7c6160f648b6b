"""The trainer: learning, presets recorded, exact resume after SIGKILL, DDP under torchrun, early data checks."""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
import pytest
import torch

from helpers import TINY_TRAIN_ARGS
from MRtoCTSynthesisLib.config import PRESETS, preset
from MRtoCTSynthesisLib.dataset import DatasetError
from MRtoCTSynthesisLib.events import iter_events
from MRtoCTSynthesisLib.modelfile import load_model
from MRtoCTSynthesisLib.train import CHECKPOINT, MODEL, linear_decay
from MRtoCTSynthesisLib.train import main as train_main


def train(phantoms, out, *extra, cache=None):
    args = ["--mr", str(phantoms / "mr"), "--ct", str(phantoms / "ct"), "--out", str(out), *TINY_TRAIN_ARGS, *extra]
    if cache is not None:
        args += ["--cache", str(cache)]
    assert train_main(args) == 0
    return out


def read_losses(run):
    with open(run / "losses.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cycle_loss_falls(phantoms, cache, tmp_path):
    run = train(phantoms, tmp_path / "run", "--preset", "cyclegan", "--iterations", "40", "--lr", "0.002",
                "--seed", "1", cache=cache)
    cycle = [float(r["cycle"]) for r in read_losses(run)]
    assert len(cycle) == 40
    assert np.mean(cycle[-8:]) < 0.6 * np.mean(cycle[:8]), cycle


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_and_records_its_settings(phantoms, cache, tmp_path, name):
    run = train(phantoms, tmp_path / name, "--preset", name, "--iterations", "3", "--lambda-identity", "0.5",
                cache=cache)
    recorded = json.loads((run / "config.json").read_text(encoding="utf-8"))
    expected = preset(name, lambda_identity=0.5, image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1,
                      ndf=4, log_every=1, preview_every=1000, validate_every=1000, iterations=3)
    assert recorded == expected.to_dict()
    assert recorded["lambda_identity"] == 0.5  # a CLI override is recorded
    meta = load_model(run / MODEL).metadata
    assert meta["preset"] == name
    assert meta["loss_weights"]["lambda_cycle"] == PRESETS[name]["lambda_cycle"]
    assert meta["ct_window"] == list(PRESETS[name].get("ct_window", (-1000.0, 3500.0)))
    assert meta["plane"] == PRESETS[name].get("plane", "sagittal")
    columns = read_losses(run)[0].keys()
    assert ("structure" in columns) == (name == "yang2018")
    assert ("gc" in columns) == (name == "hiasa2018")
    kinds = [e["event"] for e in iter_events(run / "events.jsonl")]
    assert kinds[0] == "start" and kinds[-1] == "finished" and "checkpoint" in kinds and "preview" in kinds


def test_paper_values_of_presets():
    yang, hiasa = preset("yang2018"), preset("hiasa2018")
    assert (yang.lambda_cycle, yang.lambda_structure, yang.sampling) == (10, 5, "pbs")
    assert (yang.mind_region, yang.mind_patch, yang.mind_sigma) == (9, 7, 2.0)
    assert yang.image_size == (384, 256) and yang.augment_pad == (400, 284)
    assert yang.ct_window == (-1000, 3500) and yang.mr_window == (0, 3500)
    assert (hiasa.lambda_cycle, hiasa.lambda_gc) == (3, 0.3)
    assert hiasa.ct_window == (-150, 350) and hiasa.mr_window == (0, 100)
    assert (hiasa.lr, hiasa.beta1, hiasa.iterations, hiasa.lr_decay_start) == (2e-4, 0.5, 200_000, 100_000)
    assert preset("paired").sampling == "paired" and preset("paired").lambda_supervised == 0
    with pytest.raises(ValueError, match="paired"):
        preset("cyclegan", lambda_supervised=1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("pix2pix")


def test_fast_recipe_changes_only_the_network_and_optimiser():
    from MRtoCTSynthesisLib.config import RECIPES
    from MRtoCTSynthesisLib.train import add_train_arguments, config_from_args

    paper, fast = preset("yang2018"), preset("yang2018", recipe="fast")
    changed = {k for k, v in vars(fast).items() if vars(paper)[k] != v}
    assert changed == {"recipe", *RECIPES["fast"]}
    assert (fast.generator, fast.ngf, fast.batch_size, fast.lr, fast.beta1) == ("unet", 16, 4, 1e-3, 0.9)
    assert (fast.lambda_cycle, fast.lambda_structure, fast.sampling) == (10, 5, "pbs")   # the paper's losses stay
    assert preset("yang2018", recipe="fast", lr=5e-4).lr == 5e-4                         # explicit overrides win
    with pytest.raises(ValueError, match="unknown recipe"):
        preset("yang2018", recipe="slow")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--mr", "m", "--ct", "c", "--out", "o", "--preset", "hiasa2018", "--recipe", "fast"])
    assert config_from_args(args) == preset("hiasa2018", recipe="fast")


def test_time_budget_stops_training_and_keeps_the_model(phantoms, cache, tmp_path):
    from MRtoCTSynthesisLib.config import preset as make_preset
    from MRtoCTSynthesisLib.train import build_trainer

    config = make_preset("cyclegan", image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1, ndf=4,
                         iterations=50, log_every=1, preview_every=1000, validate_every=1000)
    trainer = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "run", "cpu", cache,
                            show_progress=False)
    model = trainer.run(stop_at=time.time())            # already due: stops after the first iteration
    assert load_model(model).metadata["training"]["iterations"] == 1
    kinds = [e["event"] for e in iter_events(tmp_path / "run" / "events.jsonl")]
    assert kinds.index("stopped") < kinds.index("finished") and "validation" in kinds
    assert (tmp_path / "run" / CHECKPOINT).exists()     # resumable to the full count
    resumed = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "run", "cpu", cache, resume=True,
                            show_progress=False)
    assert resumed.iteration == 1


def test_warm_start_begins_from_the_model_file_and_refuses_another_network(phantoms, cache, tmp_path):
    from MRtoCTSynthesisLib.modelfile import sha256_of
    from MRtoCTSynthesisLib.train import build_trainer

    donor = train(phantoms, tmp_path / "donor", "--preset", "paired", "--iterations", "2", "--seed", "5",
                  cache=cache) / MODEL
    config = preset("yang2018", image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1, ndf=4, iterations=2,
                    preview_every=1000, validate_every=1000, seed=6, init_from=str(donor))
    trainer = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "warm", "cpu", cache,
                            show_progress=False)
    given = load_model(donor).state_dicts
    for name in ("G_CT", "G_MR"):
        for key, value in getattr(trainer.generators, name).state_dict().items():
            torch.testing.assert_close(value, given[name][key], atol=0, rtol=0)
    model = trainer.run()
    assert load_model(model).metadata["training"]["warm_start"]["networks"] == ["G_CT", "G_MR"]
    resumed = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "warm", "cpu", cache, resume=True,
                            show_progress=False, resume_overrides={"iterations": 3})
    recorded = load_model(resumed.run()).metadata["training"]
    assert recorded["iterations"] == 3 and recorded["warm_start"]["sha256"] == sha256_of(donor)   # kept on resume
    wider = config.with_overrides(ngf=8)
    with pytest.raises(ValueError, match=r"cannot start this run.*network G_CT"):
        build_trainer(wider, phantoms / "mr", phantoms / "ct", tmp_path / "wider", "cpu", cache, show_progress=False)
    other_window = config.with_overrides(ct_window=(-1000.0, 2000.0))
    with pytest.raises(ValueError, match="ct_window"):
        build_trainer(other_window, phantoms / "mr", phantoms / "ct", tmp_path / "window", "cpu", cache,
                      show_progress=False)


def test_supervised_both_trains_the_two_generators_for_a_warm_start(phantoms, cache, tmp_path):
    from MRtoCTSynthesisLib.train import build_trainer

    config = preset("paired", image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1, ndf=4, iterations=3,
                    lambda_adversarial=0, lambda_cycle=0, lambda_supervised=1, supervised_both=True,
                    preview_every=1000, validate_every=1000)
    trainer = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "run", "cpu", cache,
                            show_progress=False)
    before = {k: v.clone() for k, v in trainer.generators.G_MR.state_dict().items()}
    trainer.run()
    after = trainer.generators.G_MR.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)          # G_MR learned too
    assert {"supervised", "supervised_mr"} <= set(read_losses(tmp_path / "run")[0])
    with pytest.raises(ValueError, match="supervised_both applies to supervised-only"):
        preset("yang2018", supervised_both=True)


def test_linear_decay_schedule():
    factor = linear_decay(200_000, 100_000)
    assert factor(0) == 1 and factor(99_999) == 1 and factor(150_000) == 0.5 and factor(200_000) == 0


def final_state(run):
    return torch.load(run / CHECKPOINT, weights_only=True)


def test_sigkill_then_resume_equals_uninterrupted_run(phantoms, cache, tmp_path):
    common = ["--preset", "yang2018", "--iterations", "24", "--checkpoint-every", "4", "--seed", "3"]
    reference = train(phantoms, tmp_path / "reference", *common, cache=cache)
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "MRtoCTSynthesisLib.train", "--mr", str(phantoms / "mr"), "--ct",
               str(phantoms / "ct"), "--out", str(run), "--cache", str(cache), *TINY_TRAIN_ARGS, *common]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        checkpoints = [e for e in iter_events(run / "events.jsonl") if e["event"] == "checkpoint"] \
            if (run / "events.jsonl").exists() else []
        if checkpoints and checkpoints[-1]["iteration"] >= 8:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = final_state(run)["iteration"]
    assert 8 <= killed_at < 24, "the run must be killed mid-way"
    assert not (run / MODEL).exists()
    train(phantoms, run, *common, "--resume", cache=cache)
    a, b = final_state(reference), final_state(run)
    assert a["iteration"] == b["iteration"] == 24
    for part in ("generators", "discriminators"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], atol=1e-6, rtol=0)
    assert not list(run.glob(".*.part")), "no partial file is left"
    load_model(run / MODEL)  # the final model is complete and valid
    iterations = [int(r["iteration"]) for r in read_losses(run)]
    assert iterations == list(range(1, 25)), "the loss log has each iteration once"


def test_resume_needs_a_checkpoint_and_a_finished_run_is_not_overwritten(phantoms, cache, tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(phantoms, tmp_path / "empty", "--iterations", "2", "--resume", cache=cache)
    run = train(phantoms, tmp_path / "done", "--preset", "cyclegan", "--iterations", "1", cache=cache)
    with pytest.raises(ValueError, match="already holds a run"):
        train(phantoms, run, "--preset", "cyclegan", "--iterations", "1", cache=cache)


def test_torchrun_two_gloo_processes_stay_in_sync(phantoms, cache, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "MRtoCTSynthesisLib.train", "--mr", str(phantoms / "mr"), "--ct", str(phantoms / "ct"),
               "--out", str(run), "--cache", str(cache), *TINY_TRAIN_ARGS, "--preset", "hiasa2018",
               "--iterations", "4", "--device", "cpu", "--trace-ranks"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    traces = [[json.loads(line) for line in open(run / f"trace_rank{r}.jsonl", encoding="utf-8")] for r in (0, 1)]
    assert [t["iteration"] for t in traces[0]] == [t["iteration"] for t in traces[1]] == [1, 2, 3, 4]
    for step0, step1 in zip(*traces):
        assert step0["checksum"] == pytest.approx(step1["checksum"], rel=1e-9, abs=1e-9)
    assert [t["pairs"] for t in traces[0]] != [t["pairs"] for t in traces[1]], "ranks draw different slices"
    assert (run / MODEL).exists()
    starts = [e for e in iter_events(run / "events.jsonl") if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2, "only rank 0 writes events"


def test_bad_folders_fail_before_anything_starts(phantoms, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no volumes"):
        train_main(["--mr", str(empty), "--ct", str(phantoms / "ct"), "--out", str(tmp_path / "r2")])
    with pytest.raises(DatasetError, match="in the MR folder"):
        train_main(["--mr", str(phantoms / "ct"), "--ct", str(phantoms / "ct"), "--out", str(tmp_path / "r3")])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unreadable MR"):
        train_main(["--mr", str(broken), "--ct", str(phantoms / "ct"), "--out", str(tmp_path / "r4")])
    assert not any((tmp_path / f"r{i}").exists() for i in (2, 3, 4)), "nothing was created"


def _tiny(name, **overrides):
    return preset(name, image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1, ndf=4, preview_every=1000,
                  validate_every=1000, **overrides)


def test_extra_planes_train_on_every_plane_and_synthesis_averages_the_passes(phantoms, cache, tmp_path):
    import copy

    from MRtoCTSynthesisLib import volumes as V
    from MRtoCTSynthesisLib.preprocessing import normalization_from_metadata
    from MRtoCTSynthesisLib.synthesis import synthesize
    from MRtoCTSynthesisLib.train import build_trainer

    one = build_trainer(_tiny("paired", iterations=2), phantoms / "mr", phantoms / "ct", tmp_path / "one", "cpu",
                        cache, show_progress=False)
    three = build_trainer(_tiny("paired", iterations=2, extra_planes=("coronal", "axial")), phantoms / "mr",
                          phantoms / "ct", tmp_path / "three", "cpu", cache, show_progress=False)
    assert len(three.data.mr) == len(three.data.ct) == 3 * len(one.data.mr)          # every volume along 3 planes
    assert [s.shape[0] for s in three.data.mr[:len(one.data.mr)]] == [s.shape[0] for s in one.data.mr]
    assert len(three.validation.mr) == len(one.validation.mr)                         # validation: the primary plane
    bundle = load_model(three.run())
    assert bundle.metadata["plane"] == "sagittal" and bundle.metadata["extra_planes"] == ["coronal", "axial"]
    mr = V.read_volume(sorted((phantoms / "mr").iterdir())[0])
    fused = V.array_of(synthesize(mr, bundle, device="cpu", mask_background=False).sct)
    passes = []
    for plane in ("sagittal", "coronal", "axial"):
        single = copy.copy(bundle)
        single.metadata = {**bundle.metadata, "plane": plane, "extra_planes": []}
        passes.append(V.array_of(synthesize(mr, single, device="cpu", mask_background=False).sct))
    np.testing.assert_allclose(fused, np.mean(passes, axis=0), atol=1e-3)
    assert np.abs(passes[0] - passes[1]).max() > 1.0                                   # the planes do differ
    # thick slices: a plane whose pixels are > 2x longer one way than the other is left out (the primary stays)
    norm = normalization_from_metadata(bundle.metadata)
    assert norm.planes_for((1.0, 1.0, 1.0)) == ("sagittal", "coronal", "axial")
    assert norm.planes_for((0.9, 0.9, 5.5)) == ("sagittal", "axial")                    # a 5.5 mm axial series
    assert norm.planes_for((2.0, 1.0, 1.0)) == ("sagittal", "coronal", "axial")         # 2x: still sharp
    assert mr.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    thick = sitk.Image(mr)
    thick.SetSpacing((mr.GetSpacing()[0], 5 * mr.GetSpacing()[1], mr.GetSpacing()[2]))  # thick along P
    result = synthesize(thick, bundle, device="cpu", mask_background=False)
    assert result.planes == ("sagittal", "coronal")
    kept = []
    for plane in ("sagittal", "coronal"):
        single = copy.copy(bundle)
        single.metadata = {**bundle.metadata, "plane": plane, "extra_planes": []}
        kept.append(V.array_of(synthesize(thick, single, device="cpu", mask_background=False).sct))
    np.testing.assert_allclose(V.array_of(result.sct), np.mean(kept, axis=0), atol=1e-3)
    with pytest.raises(ValueError, match="extra_planes"):
        _tiny("paired", extra_planes=("sagittal",))                                     # the primary plane again
    with pytest.raises(ValueError, match="position-based"):
        _tiny("yang2018", extra_planes=("axial",))


def test_discriminator_warmup_freezes_the_generators_first(phantoms, cache, tmp_path):
    from MRtoCTSynthesisLib.train import build_trainer

    trainer = build_trainer(_tiny("cyclegan", iterations=4, d_warmup=2, log_every=1), phantoms / "mr",
                            phantoms / "ct", tmp_path / "run", "cpu", cache, show_progress=False)
    snapshot = lambda module: {k: v.clone() for k, v in module.state_dict().items()}  # noqa: E731
    g0, d0 = snapshot(trainer.generators), snapshot(trainer.discriminators)
    for _ in range(2):
        batch = trainer.data.batch(trainer.rng, 1)
        assert set(trainer.train_step(batch.mr, batch.ct)) == {"D_ct", "D_mr"}
        trainer.iteration += 1
    assert all(torch.equal(g0[k], v) for k, v in trainer.generators.state_dict().items())
    assert any(not torch.equal(d0[k], v) for k, v in trainer.discriminators.state_dict().items())
    batch = trainer.data.batch(trainer.rng, 1)
    assert "G_total" in trainer.train_step(batch.mr, batch.ct)
    assert any(not torch.equal(g0[k], v) for k, v in trainer.generators.state_dict().items())
    run = build_trainer(_tiny("cyclegan", iterations=3, d_warmup=1, log_every=1), phantoms / "mr", phantoms / "ct",
                        tmp_path / "logged", "cpu", cache, show_progress=False)
    run.run()
    rows = read_losses(tmp_path / "logged")
    assert rows[0]["G_total"] == "" and rows[0]["D_ct"] != "" and rows[-1]["G_total"] != ""   # widened header
    with pytest.raises(ValueError, match="d_warmup"):
        _tiny("cyclegan", iterations=3, d_warmup=3)


def test_validation_pairs_give_an_unpaired_run_a_validation_mae(phantoms, cache, tmp_path):
    from MRtoCTSynthesisLib.train import build_trainer

    config = _tiny("cyclegan", iterations=1, validation_pairs=True, validation_fraction=0.34)
    trainer = build_trainer(config, phantoms / "mr", phantoms / "ct", tmp_path / "run", "cpu", cache,
                            show_progress=False)
    assert trainer.validation.paired and not trainer.data.paired            # unpaired training, paired scoring
    assert len(trainer.data.ct) == len(trainer.data.mr)                # the held-out subjects left both domains
    assert "mae_body_hu" in trainer.validate()
    plain = build_trainer(config.with_overrides(validation_pairs=False), phantoms / "mr", phantoms / "ct",
                          tmp_path / "plain", "cpu", cache, show_progress=False)
    assert "mae_body_hu" not in plain.validate()
