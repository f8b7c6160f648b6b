"""Smoke test of ``mrtoct bench quality``: two variants, three iterations, tiny phantoms and networks.

Checks the plumbing, not the science: the command writes its tables, figures, runs and report; the summary has a row
per variant and the expected columns; paired t-tests against cyclegan are computed; a second invocation in the same
folder skips the trained variants (resumable); the real-data folder is only read.
"""
import csv
import json
import math

import numpy as np
import pytest

from MRtoCTSynthesisLib import quality as Q
from MRtoCTSynthesisLib.cli import main as cli_main

VARIANTS = ["cyclegan", "yang2018"]


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
                 "figures/real_scans_head.png", "tables/quality_summary.csv", "tables/quality_summary.json",
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
    assert [r["variant"] for r in rows] == VARIANTS
    for key in ("mae", "psnr", "ssim", "ssim_hg", "mae_bone", "mi_mr_sct", "saturated_pct"):
        for stat in ("mean", "sd"):
            assert f"{key}_{stat}" in rows[0]
    assert all(int(r["n_subjects"]) == 3 for r in rows)
    assert all(math.isfinite(float(r["mae_mean"])) for r in rows)
    per_subject = read_csv(out / "tables" / "quality_per_subject.csv")
    assert len(per_subject) == 2 * 3
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
                 "Interpretation (written by a person after the run)", "Yang's main claim", "absent.mha"):
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
