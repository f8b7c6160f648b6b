"""Smoke test of ``mrtoct bench quality``: two variants, three iterations, tiny phantoms and networks; the same on a
phantom-made folder in the paired (SynthRAD) layout with ``--data``.

Checks the plumbing, not the science: the command writes its tables, figures, runs and report; the summary has a row
per baseline and variant and the expected columns; paired t-tests against cyclegan are computed; a second invocation
in the same folder skips the trained variants (resumable); the real-data and --data folders are only read. The
baselines are checked against their definitions.
"""
import csv
import json
import math

import numpy as np
import pytest

from MRtoCTSynthesisLib import quality as Q
from MRtoCTSynthesisLib.cli import main as cli_main

VARIANTS = ["cyclegan", "yang2018"]
BASELINES = ["constant", "mr-lookup", "class-mean floor"]


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    """A stand-in 'real' head MR (a phantom MR with anisotropic voxels) in its own folder."""
    import SimpleITK as sitk

    from MRtoCTSynthesisLib.phantom import make_phantom

    folder = tmp_path_factory.mktemp("real")
    sitk.WriteImage(make_phantom("head", 123, (30, 36, 12), (6.0, 6.0, 12.0)).mr, str(folder / "fake_t1.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, real_folder):
    out = tmp_path_factory.mktemp("quality")
    args = ["bench", "quality", "--out", str(out), "--tiny", "--iterations", "3", "--variants", *VARIANTS,
            "--real-data", str(real_folder), "--real-scans", "fake_t1.nii.gz", "absent.mha", "--no-progress",
            "--threads", "1"]  # one thread: fast and steady on a shared machine
    before = {p.name: p.stat().st_mtime_ns for p in real_folder.iterdir()}
    assert cli_main(args) == 0
    return out, args, before


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_outputs_exist(benchmark):
    out, _, _ = benchmark
    for name in ("RESULTS.md", "plan.json", "figures/boxplots_head.png", "figures/slices_head.png",
                 "figures/real_scans_head.png", "figures/validation_head.png", "tables/quality_convergence.csv",
                 "tables/baselines_head.json", "tables/quality_summary.csv", "tables/quality_summary.json",
                 "tables/quality_per_subject.csv", "tables/quality_ttests.csv", "tables/quality_real_scans.csv"):
        assert (out / name).is_file(), name
    for variant in VARIANTS:
        run = out / "runs" / "head" / f"{variant}-seed0"
        assert (run / "model.mrtoct.safetensors").is_file()
        assert (run / "losses.csv").is_file() and (run / "config.json").is_file()
        assert json.loads((run / "config.json").read_text(encoding="utf-8"))["iterations"] == 3
    assert not (out / "_timing").exists()  # the timing runs are cleaned up


def test_summary_table_has_a_row_per_variant_and_the_metric_columns(benchmark):
    out, _, _ = benchmark
    rows = read_csv(out / "tables" / "quality_summary.csv")
    assert [r["variant"] for r in rows] == BASELINES + VARIANTS
    assert float(rows[0]["mae_vs_constant"]) == 1.0
    for key in ("mae", "psnr", "ssim", "ssim_hg", "mae_bone", "mi_mr_sct", "saturated_pct"):
        for stat in ("mean", "sd"):
            assert f"{key}_{stat}" in rows[0]
    assert all(int(r["n_subjects"]) == 3 for r in rows)
    assert all(math.isfinite(float(r["mae_mean"])) for r in rows)
    per_subject = read_csv(out / "tables" / "quality_per_subject.csv")
    assert len(per_subject) == (len(BASELINES) + len(VARIANTS)) * 3
    train_seeds, test_seeds = Q.subject_seeds_of(Q.SETTINGS["tiny"]["head"])
    assert {int(r["subject_seed"]) for r in per_subject} == set(test_seeds)
    assert not set(train_seeds) & set(test_seeds)  # held-out subjects


def test_paired_ttests_against_cyclegan_are_computed(benchmark):
    out, _, _ = benchmark
    tests = read_csv(out / "tables" / "quality_ttests.csv")
    assert {(t["variant"], t["reference"]) for t in tests} == {("yang2018", "cyclegan")}
    assert {t["metric"] for t in tests} == {m[0] for m in Q.METRICS}
    assert all(int(t["n"]) == 3 for t in tests)
    assert sum(math.isfinite(float(t["p"])) for t in tests) >= 4  # different models give different subjects' values
    from scipy.stats import ttest_rel

    per_subject = read_csv(out / "tables" / "quality_per_subject.csv")
    mae = {v: [float(r["mae"]) for r in sorted(per_subject, key=lambda r: int(r["subject"])) if r["variant"] == v]
           for v in VARIANTS}
    expected = ttest_rel(mae["yang2018"], mae["cyclegan"]).pvalue
    recorded = next(float(t["p"]) for t in tests if t["metric"] == "mae")
    assert recorded == pytest.approx(expected)


def test_report_is_generated_from_the_run(benchmark):
    out, _, _ = benchmark
    text = (out / "RESULTS.md").read_text(encoding="utf-8")
    for part in ("mrtoct bench quality", "## Machine", "torch", "## Budget and plan", "figures/boxplots_head.png",
                 "figures/slices_head.png", "figures/real_scans_head.png", "Reading (generated from the numbers)",
                 "Interpretation (written by a person after the run)", "Yang's main claim", "absent.mha",
                 "Against the baselines", "MAE / constant", "class-mean floor (baseline)", "Convergence"):
        assert part in text, part


def test_rerun_skips_trained_variants_and_never_writes_real_data(benchmark, capsys):
    out, args, before = benchmark
    model = out / "runs" / "head" / "cyclegan-seed0" / "model.mrtoct.safetensors"
    stamp = model.stat().st_mtime_ns
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("skip head/") == 2 and "continuing the benchmark" in printed
    assert model.stat().st_mtime_ns == stamp
    real = args[args.index("--real-data") + 1]
    from pathlib import Path
    assert {p.name: p.stat().st_mtime_ns for p in Path(real).iterdir()} == before


def test_a_different_plan_in_the_same_folder_is_refused(benchmark):
    out, args, _ = benchmark
    changed = list(args)
    changed[changed.index("--iterations") + 1] = "5"
    assert cli_main(changed) == 2  # ValueError -> exit code 2 with a message


def test_iterations_fit_the_budget():
    # 60 min budget, 2 min spent, 3 min of evaluation, 5 runs at 0.4 s/it in total 2 s per iteration of all runs
    iterations = Q.choose_iterations(3600, 120, 2.0, 180)
    assert 120 + 180 + iterations * 2.0 * 1.05 <= 3600
    assert iterations % 50 == 0 and iterations > 1400


def test_paired_ttest_handles_identical_and_missing_values():
    same = Q.paired_ttest(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert same["n"] == 3 and math.isnan(same["p"]) and same["mean_difference"] == 0
    gaps = Q.paired_ttest(np.array([1.0, np.nan, 3.0, 4.0]), np.array([1.5, 2.0, 3.2, 4.9]))
    assert gaps["n"] == 3 and 0 < gaps["p"] < 1


def test_reading_flags_saturated_variants_and_reports_p_values(tmp_path):
    """The generated reading says when variants are saturated at -1000 HU and quotes each claim with its p-value."""
    rng = np.random.default_rng(0)
    rows = []
    for variant, mae, saturated in (("cyclegan", 900.0, 97.0), ("paired", 120.0, 1.0), ("yang2018", 905.0, 96.0)):
        for subject in range(6):
            values = {key: float(rng.normal(1.0, 0.1)) for key, *_ in Q.METRICS}
            values.update(mae=mae + rng.normal(0, 5), saturated_pct=saturated, ct_air_pct=2.0, mi_mr_ct=0.9,
                          mae_air=0.0, mae_soft_tissue=0.0)
            rows.append({"anatomy": "head", "variant": variant, "seed": 0, "subject": subject, **values})
    variants = ("cyclegan", "paired", "yang2018")
    options = Q.Options(out=tmp_path, variants=variants, scale="tiny", test_subjects=6)
    tests = Q.ttest_rows(rows, "head", variants)
    summary = Q.summary_rows(rows, "head", variants, (0,), {})
    text = "\n".join(Q.reading(options, {"iterations": 100}, summary, tests, []))
    assert "Saturation: cyclegan, yang2018 output" in text
    assert "does not reproduce" in text and "p = " in text
    assert "yang2018 vs paired" in text or "yang2018 1.0" in text or "vs paired" in text


# ----------------------------------------------------------------------------------------------- baselines

def _subject(seed, shape=(24, 32, 32), spacing=(8.0, 8.0, 8.0)):
    from MRtoCTSynthesisLib.phantom import make_phantom

    return Q.Subject.of_phantom(make_phantom("head", seed, shape, spacing), f"s{seed}")


def test_baselines_follow_their_definitions():
    from MRtoCTSynthesisLib import volumes as V

    from MRtoCTSynthesisLib.config import preset
    from MRtoCTSynthesisLib.preprocessing import Normalization, prepare_volume

    train, test = [_subject(s) for s in (1, 2, 3)], _subject(9)
    norm = Normalization.from_config(preset("yang2018"))  # N4, then Yang's white-matter peak
    fitted = Q.fit_baselines(train, norm)
    # the lookup bins the MR exactly as the networks receive it (the phantoms are on an LPS grid already)
    networks_input = prepare_volume(test.mr, "mr", norm).slices
    assert np.allclose(V.volume_to_slices(fitted.normalised_mr(test.mr), norm.plane), networks_input, atol=1e-5)
    inside = np.concatenate([V.array_of(s.ct)[Q.evaluation_mask(s)] for s in train])
    assert fitted.constant_hu == pytest.approx(float(np.median(inside)))
    mask = Q.evaluation_mask(test)
    constant = fitted.predict("constant", test)
    assert np.all(constant[mask] == pytest.approx(fitted.constant_hu)) and np.all(constant[~mask] == -1000.0)
    floor = fitted.predict("class-mean floor", test)
    labels, ct = V.array_of(test.labels, np.int32), V.array_of(test.ct)
    some = int(labels[mask][0])
    assert floor[mask & (labels == some)] == pytest.approx(ct[mask & (labels == some)].mean(), rel=1e-5)
    # the lookup tells tissues apart by MR intensity alone: better than the constant, worse than perfect labels
    scores = {name: Q.score_prediction(fitted.predict(name, test), test)["mae"] for name in Q.BASELINES}
    assert scores["class-mean floor"] < scores["mr-lookup"] < scores["constant"]
    assert fitted.predict("class-mean floor", Q.Subject("x", test.mr, test.ct)) is None  # no labels: no floor


def test_the_reference_ct_scores_perfectly():
    """Oracle: the reference CT through the evaluation gives MAE 0 (masks, grids and HU units agree)."""
    from MRtoCTSynthesisLib import volumes as V

    subject = _subject(4)
    metrics = Q.score_prediction(V.array_of(subject.ct), subject)
    assert metrics["mae"] == 0.0 and metrics["mae_bone"] == 0.0 and metrics["ssim"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- --data

@pytest.fixture(scope="module")
def paired_folder(tmp_path_factory):
    """Five phantom subjects in the SynthRAD layout: <subject>/mr.nii.gz, ct.nii.gz, and a mask for some."""
    import SimpleITK as sitk

    from MRtoCTSynthesisLib import volumes as V
    from MRtoCTSynthesisLib.phantom import make_phantom

    folder = tmp_path_factory.mktemp("synthrad")
    for index in range(5):
        phantom = make_phantom("head", 500 + index, (24, 32, 32), (8.0, 8.0, 8.0))
        sub = folder / f"1HA{index:03d}"
        sub.mkdir()
        sitk.WriteImage(phantom.mr, str(sub / "mr.nii.gz"))
        sitk.WriteImage(phantom.ct, str(sub / "ct.nii.gz"))
        if index % 2 == 0:
            sitk.WriteImage(V.body_mask(phantom.ct, threshold=-500.0), str(sub / "mask.nii.gz"))
    return folder


def test_bench_quality_reads_a_paired_folder(paired_folder, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in paired_folder.rglob("*")}
    out = tmp_path / "q"
    args = ["bench", "quality", "--out", str(out), "--tiny", "--iterations", "2", "--variants", "supervised",
            "--data", str(paired_folder), "--test-fraction", "0.4", "--real-data", "none", "--no-progress",
            "--threads", "1"]
    assert cli_main(args) == 0
    rows = read_csv(out / "tables" / "quality_summary.csv")
    assert [r["variant"] for r in rows] == ["constant", "mr-lookup", "supervised"]  # no labels: no floor
    per_subject = read_csv(out / "tables" / "quality_per_subject.csv")
    tested = {r["subject_name"] for r in per_subject}
    trained = {p.name.split(".")[0] for p in (out / "data" / "head" / "train" / "mr").iterdir()}
    assert len(tested) == 2 and not tested & trained  # 2 of 5 held out, never trained on
    assert tested | trained == {f"1HA{i:03d}" for i in range(5)}
    assert tested == set(Q.split_subjects([f"1HA{i:03d}" for i in range(5)], 0.4)[1])
    assert "paired subjects of" in (out / "RESULTS.md").read_text(encoding="utf-8")
    assert {p: p.stat().st_mtime_ns for p in paired_folder.rglob("*")} == before  # read only


def test_a_paired_folder_without_ct_is_refused(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mr.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="lacks ct"):
        Q.paired_files(tmp_path)


def test_pbs_shift_matches_yang_in_millimetres():
    assert Q.SETTINGS["default"]["head"].pbs_max_shift == 2      # +-4 mm at 2 mm slices (Yang: +-5 x ~1 mm)
    assert Q.SETTINGS["small"]["head"].pbs_max_shift == 1
    assert Q.SETTINGS["paper"]["head"].pbs_max_shift == 5
    config = Q.training_config("yang2018", Q.SETTINGS["default"]["head"], Q.NETWORKS["default"], 100, 0)
    assert config.pbs_max_shift == 2 and config.lambda_structure == 5.0


def test_control_variants_change_one_thing():
    setting, net = Q.SETTINGS["tiny"]["head"], Q.NETWORKS["tiny"]
    control = Q.training_config("cyclegan-cycle3", setting, net, 10, 0).to_dict()
    hiasa = Q.training_config("hiasa2018", setting, net, 10, 0).to_dict()
    assert {k for k in control if control[k] != hiasa[k]} == {"preset", "description", "lambda_gc"}
    supervised = Q.training_config("supervised", setting, net, 10, 0)
    assert supervised.supervised_only and supervised.sampling == "paired" and supervised.lambda_supervised == 1.0


def test_recipe_arms_share_one_time_budget_and_are_scored_beside_the_baselines(tmp_path):
    from MRtoCTSynthesisLib.cli import main as cli_main
    from MRtoCTSynthesisLib.quality.recipe import curve

    out = tmp_path / "recipe"
    assert cli_main(["bench", "recipe", "--out", str(out), "--tiny", "--arm-seconds", "2", "--threads", "1",
                     "--real-data", "none", "--no-progress", "--arms", "resnet32 b1 lr2e-4 (benchmark)",
                     "unet16 b4 lr1e-3 b0.9"]) == 0
    report = json.loads((out / "recipe_supervised.json").read_text(encoding="utf-8"))
    arms = {row["arm"]: row for row in report["summary"]}
    assert {"resnet32 b1 lr2e-4 (benchmark)", "unet16 b4 lr1e-3 b0.9", "constant (baseline)",
            "mr-lookup (baseline)"} <= set(arms)
    assert arms["constant (baseline)"]["mae_vs_constant"] == 1.0
    for name in ("resnet32 b1 lr2e-4 (benchmark)", "unet16 b4 lr1e-3 b0.9"):
        assert arms[name]["train_seconds"] < 2 + 1.5       # the budget holds (one step may end after it)
    config = json.loads((out / "arms" / "unet16_b4_lr1e-3_b0.9-seed0" / "config.json").read_text(encoding="utf-8"))
    assert (config["generator"], config["batch_size"], config["lr"], config["beta1"]) == ("unet", 4, 1e-3, 0.9)
    seconds, values = curve(out / "arms" / "unet16_b4_lr1e-3_b0.9-seed0")
    assert len(values) >= 2 and (np.diff(seconds) > 0).all()   # a learning curve over seconds, in-body MAE
    assert (out / "figures" / "recipe_supervised_curves.png").stat().st_size > 0


def test_a_warm_started_arm_starts_from_the_supervised_arm_within_the_same_budget(tmp_path):
    from MRtoCTSynthesisLib.cli import main as cli_main
    from MRtoCTSynthesisLib.modelfile import read_metadata
    from MRtoCTSynthesisLib.quality.recipe import _slug

    out, warm = tmp_path / "recipe", "yang2018 unet16 b4 lr1e-3 b0.9, warm start (180 s supervised + 240 s)"
    assert cli_main(["bench", "recipe", "--out", str(out), "--tiny", "--arm-seconds", "3.5", "--threads", "1",
                     "--real-data", "none", "--no-progress", "--arm-set", "unpaired", "--arms", warm]) == 0
    donor = out / "arms" / "unet16_b4_lr1e-3_b0.9-seed0" / "model.mrtoct.safetensors"
    training = read_metadata(out / "arms" / f"{_slug(warm)}-seed0" / "model.mrtoct.safetensors")["training"]
    assert training["warm_start"]["file"] == str(donor)
    assert read_metadata(donor)["training"]["seconds"] < 1.5 + 1.5 and training["seconds"] < 2.0 + 1.5


def test_the_papers_arm_set_warms_up_the_critics_draws_unpaired_curves_and_tests_effects(tmp_path):
    from MRtoCTSynthesisLib.cli import main as cli_main
    from MRtoCTSynthesisLib.quality.recipe import _slug, curve

    out, arms = tmp_path / "recipe", ["yang2018, both warm", "cyclegan-pbs, both warm"]
    assert cli_main(["bench", "recipe", "--out", str(out), "--tiny", "--arm-seconds", "3.5", "--threads", "1",
                     "--real-data", "none", "--no-progress", "--arm-set", "papers", "--arms", *arms]) == 0
    run = out / "arms" / f"{_slug(arms[0])}-seed0"
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["d_warmup"] >= 1 and config["validation_pairs"] and config["init_from"]
    seconds, values = curve(run)
    assert len(values) >= 2            # an unpaired run now has a validation MAE curve
    report = json.loads((out / "recipe_papers.json").read_text(encoding="utf-8"))
    mind = [t for t in report["ttests"] if (t["variant"], t["reference"], t["metric"]) ==
            ("yang2018", "cyclegan-pbs", "mae")]
    assert len(mind) == 1 and mind[0]["n"] >= 2 and np.isfinite(mind[0]["mean_difference"])


def test_the_comparison_runs_with_the_fast_recipe(tmp_path):
    setting, net = Q.SETTINGS["default"]["head"], Q.NETWORKS["default"]
    paper = Q.training_config("yang2018", setting, net, 10, 0)
    fast = Q.training_config("yang2018", setting, net, 10, 0, recipe="fast")
    assert (paper.generator, paper.ngf) == ("resnet", net.ngf)
    assert (fast.generator, fast.ngf, fast.batch_size, fast.ndf) == ("unet", 16, 4, net.ndf)
    assert (fast.lambda_structure, fast.sampling, fast.ct_window) == (paper.lambda_structure, paper.sampling,
                                                                     paper.ct_window)
    out = tmp_path / "fast"
    assert cli_main(["bench", "quality", "--out", str(out), "--tiny", "--iterations", "2", "--variants", "supervised",
                     "yang2018", "--recipe", "fast", "--real-data", "none", "--no-progress", "--threads", "1"]) == 0
    config = json.loads((out / "runs" / "head" / "yang2018-seed0" / "config.json").read_text(encoding="utf-8"))
    assert (config["recipe"], config["generator"], config["batch_size"]) == ("fast", "unet", 4)
    assert "--recipe fast" in (out / "RESULTS.md").read_text(encoding="utf-8")
