"""Tables and figures of a GPU session's quality comparison from what the session brought back (each run's test
metrics, events and losses, in quality.tar.gz), with the baselines computed here on the same test subjects and masks.

The session packs results before its lease ends; when its final report did not finish in time, this rebuilds the
comparison from the per-run metrics that every training invocation wrote as soon as its run ended. The baselines need
the benchmark's phantoms, which are deterministic: ``mrtoct bench quality --plan-only --out DATA_OUT`` writes the same
ones (default setting, head).

    python benchmarks/gpu_session/assemble.py RETURNED_FOLDER DATA_OUT OUT_FOLDER
"""
import json
import sys
import tarfile
from pathlib import Path

from MRtoCTSynthesisLib.preprocessing import Normalization
from MRtoCTSynthesisLib.quality import SETTINGS, NETWORKS, VARIANTS, training_config
from MRtoCTSynthesisLib.baselines import fit_baselines
from MRtoCTSynthesisLib.quality.convergence import convergence
from MRtoCTSynthesisLib.quality.data import test_phantoms, written_subjects
from MRtoCTSynthesisLib.quality.evaluation import evaluate_baselines
from MRtoCTSynthesisLib.quality.plots import box_plots, validation_figure
from MRtoCTSynthesisLib.quality.statistics import summary_rows, ttest_rows
from MRtoCTSynthesisLib.tables import format_table, write_table

returned, data_out, out = (Path(a) for a in sys.argv[1:4])
runs = out / "runs"
with tarfile.open(returned / "quality.tar.gz") as packed:
    packed.extractall(out, filter="data")
plan = json.loads((out / "plan.json").read_text())
setting, net = SETTINGS["default"]["head"], NETWORKS["default"]
variants = [v for v in VARIANTS if v in plan["key"]["variants"]]
seeds = plan["key"]["seeds"]

per_subject, train_seconds, converged = [], {}, []
for variant in variants:
    for seed in seeds:
        run = runs / "head" / f"{variant}-seed{seed}"
        events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
        finished = next(e for e in events if e["event"] == "finished")
        train_seconds[("head", variant, seed)] = float(finished["seconds"])
        for row in json.loads((run / "test_metrics.json").read_text())["rows"]:
            per_subject.append({"anatomy": "head", "variant": variant, "seed": seed, **row})
        converged.append({"variant": variant, "seed": seed, "iterations_done": finished["iteration"],
                          "gpu_seconds": round(float(finished["seconds"]), 1),
                          **convergence(run, int(finished["iteration"]))})

root = data_out / "data" / "head"
tests = test_phantoms(setting, root)
assert [t.name for t in tests] == sorted({r["subject_name"] for r in per_subject}), "not the session's test subjects"
norm = Normalization.from_config(training_config(variants[0], setting, net, 10, 0))
baselines = fit_baselines(written_subjects(root / "train"), norm)
for name, rows in evaluate_baselines(baselines, tests).items():
    per_subject += [{"anatomy": "head", "variant": name, "seed": -1, **row} for row in rows]

present = [b for b in ("constant", "mr-lookup", "class-mean floor") if any(r["variant"] == b for r in per_subject)]
summary = summary_rows(per_subject, "head", variants, seeds, train_seconds, baselines=present)
ttests = ttest_rows(per_subject, "head", variants)
tables = out / "tables"
for rows, name in ((per_subject, "quality_per_subject"), (summary, "quality_summary"), (ttests, "quality_ttests"),
                   (converged, "quality_convergence")):
    write_table(rows, tables, name, echo=False)
box_plots(per_subject, "head", variants, ttests, out / "figures" / "boxplots_head.png",
          f"head phantoms, 2 mm, {plan['iterations']} iterations on one H200 (14 runs at once), "
          f"n = {len(tests)} test subjects")
validation_figure([runs / "head" / f"{v}-seed{s}" for v in variants for s in seeds],
                  out / "figures" / "validation_head.png", "head: validation during GPU training")
print(format_table([{"variant": r["variant"], "MAE (HU)": f"{r['mae_mean']:.1f} ± {r['mae_sd']:.1f}",
                     "MAE / constant": f"{r['mae_vs_constant']:.2f}", "seed SD": f"{r['mae_seed_sd']:.1f}",
                     "SSIM": f"{r['ssim_mean']:.3f}", "MAE bone": f"{r['mae_bone_mean']:.0f}",
                     "MI(MR,sCT)": f"{r['mi_mr_sct_mean']:.3f}", "GPU min": r["train_minutes"]} for r in summary]))
print(format_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ttests
                    if r.get("metric") == "mae"] or ttests[:10]))
