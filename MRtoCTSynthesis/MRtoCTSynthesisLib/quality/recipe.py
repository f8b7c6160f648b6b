"""``mrtoct bench recipe``: training recipes compared under one fixed time budget per arm (issue 22).

Every arm trains on the quality benchmark's data (its phantoms, setting and cache) for the same wall-clock budget on
the same device and threads; its iterations are fitted to the budget from its own measured seconds per iteration, so
that the learning-rate schedule completes (a time stop guards the budget). Each arm is scored like the benchmark's
models (MAE inside the CT body mask of the held-out test phantoms, next to the constant, the MR lookup and the
class-mean floor) and its validation MAE inside the body is drawn against the seconds spent: the learning curves.

An arm is a benchmark variant (its preset's losses and sampling) plus overrides of the recipe: generator, width,
normalisation, batch, learning rate and betas, CT window. The papers' presets are never changed; the first arm of
each list is the variant at the benchmark's own recipe, the control. A warm-started arm (``WARM_START``: the name of
a supervised arm and its share of the budget) starts from that arm's model of the same seed, trained for that share
(or found in --out: 3/7 of 420 s is the supervised set's 180 s), and trains for the rest, so it costs the same time
in all as a cold arm.

    mrtoct bench recipe --out benchmarks/recipe --arm-seconds 180 --threads 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
import numpy as np

from .output import _dump, _say
from .plan import step_seconds
from .settings import VARIANTS, Options, training_config

# arm -> (variant, overrides of its training configuration)
SUPERVISED_ARMS = {
    "resnet32 b1 lr2e-4 (benchmark)": ("supervised", {}),
    "resnet32 b4 lr1e-3 b0.9": ("supervised", {"batch_size": 4, "lr": 1e-3, "beta1": 0.9}),
    "unet16 b1 lr2e-4": ("supervised", {"generator": "unet", "ngf": 16}),
    "unet16 b4 lr1e-3 b0.9": ("supervised", {"generator": "unet", "ngf": 16, "batch_size": 4, "lr": 1e-3,
                                             "beta1": 0.9}),
    "unet16 b4 lr1e-3 b0.9 window[-1000,2000]": ("supervised", {"generator": "unet", "ngf": 16, "batch_size": 4,
                                                                "lr": 1e-3, "beta1": 0.9,
                                                                "ct_window": (-1000.0, 2000.0)}),
    "unet16-batchnorm b4 lr1e-3 b0.9": ("supervised", {"generator": "unet", "ngf": 16, "generator_norm": "batch",
                                                       "batch_size": 4, "lr": 1e-3, "beta1": 0.9}),
    "unet32 b4 lr1e-3 b0.9": ("supervised", {"generator": "unet", "ngf": 32, "batch_size": 4, "lr": 1e-3,
                                             "beta1": 0.9}),
    "unet16 b4 lr1e-3 b0.9, both generators": ("supervised", {"generator": "unet", "ngf": 16, "batch_size": 4,
                                                              "lr": 1e-3, "beta1": 0.9, "supervised_both": True}),
}
_FAST = {"generator": "unet", "ngf": 16, "batch_size": 4, "lr": 1e-3, "beta1": 0.9}
UNPAIRED_ARMS = {
    "yang2018 resnet32 b1 lr2e-4 (benchmark)": ("yang2018", {}),
    "yang2018 unet16 b4 lr1e-3 b0.9": ("yang2018", _FAST),
    "yang2018 unet16 b4 lr1e-3 b0.9 ndf32": ("yang2018", {**_FAST, "ndf": 32}),
    "cyclegan-pbs unet16 b4 lr1e-3 b0.9": ("cyclegan-pbs", _FAST),
}
WARM_START = "warm_start_arm"   # overrides key: (supervised arm, its share of the budget) whose model starts this arm
_FROM_FAST = {WARM_START: ("unet16 b4 lr1e-3 b0.9", 3 / 7)}
_FROM_BOTH = {WARM_START: ("unet16 b4 lr1e-3 b0.9, both generators", 3 / 7)}
UNPAIRED_ARMS.update({
    "yang2018 unet16 b4 lr1e-3 b0.9, warm start (180 s supervised + 240 s)": ("yang2018", {**_FAST, **_FROM_FAST}),
    "yang2018 unet16 b4 lr2e-4 b0.5, warm start (180 s supervised + 240 s)": (
        "yang2018", {**_FAST, "lr": 2e-4, "beta1": 0.5, **_FROM_FAST}),
    "yang2018 unet16 b4 lr2e-4 b0.5, both generators warm (180 s supervised + 240 s)": (
        "yang2018", {**_FAST, "lr": 2e-4, "beta1": 0.5, **_FROM_BOTH}),
    "cyclegan-pbs unet16 b4 lr2e-4 b0.5, both generators warm (180 s supervised + 240 s)": (
        "cyclegan-pbs", {**_FAST, "lr": 2e-4, "beta1": 0.5, **_FROM_BOTH}),
})
D_WARMUP = "d_warmup_share"   # overrides key: share of the arm's iterations that train the discriminators alone
_BOTH_WARM = {**_FAST, "lr": 2e-4, "beta1": 0.5, **_FROM_BOTH, "validation_pairs": True}
UNPAIRED_ARMS.update({
    "yang2018 unet16 b4 lr2e-4 b0.5, both warm, D warm-up 25% (180 s supervised + 240 s)": (
        "yang2018", {**_BOTH_WARM, D_WARMUP: 0.25}),
    "yang2018 unet16 b4 lr5e-5 b0.5, both warm, D warm-up 25% (180 s supervised + 240 s)": (
        "yang2018", {**_BOTH_WARM, "lr": 5e-5, D_WARMUP: 0.25}),
})
# The papers' comparison (issue 22) at this study's recipe: every variant of the quality benchmark from the same start
# (both generators of the supervised donor), the same budget, optimiser and discriminator warm-up; two seeds.
PAPERS_LR = 5e-5
PAPERS_ARMS = {f"{variant}, both warm": (variant, {**_BOTH_WARM, "lr": PAPERS_LR,
                                                   **({} if variant == "supervised" else {D_WARMUP: 0.25})})
               for variant in VARIANTS}   # supervised has no discriminators to warm up
ARM_SETS = {"supervised": SUPERVISED_ARMS, "unpaired": UNPAIRED_ARMS, "papers": PAPERS_ARMS}
MARGIN = 0.9   # share of the budget planned for training steps (validation, previews and checkpoints take the rest)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe (mrtoct bench recipe; also --out, --device, --threads, --seeds, --tiny)")
    group.add_argument("--arm-seconds", type=float, default=180.0,
                       help="recipe: wall-clock training budget of every arm (default 180)")
    group.add_argument("--arm-set", choices=sorted(ARM_SETS), default="supervised", help="recipe: which arms")
    group.add_argument("--arms", nargs="+", help="recipe: only these arms of the set (names as listed)")


def arm_config(variant: str, overrides: dict, options: Options, iterations: int, seed: int):
    """The benchmark's configuration of ``variant`` in its head setting, with the arm's recipe overrides."""
    setting = options.settings()[0]
    base = training_config(variant, setting, options.net(), iterations, seed)
    every = max(1, iterations // 20)
    return base.with_overrides(**overrides, validate_every=every, preview_every=iterations,
                               checkpoint_every=iterations)


def train_arm(options: Options, name: str, variant: str, overrides: dict, seed: int, seconds: float,
              root: Path) -> Path:
    """Measure the arm's step, fit its iterations to ``seconds``, train it (stopping by the budget), return its run."""
    import shutil

    from ..train import MODEL, build_trainer

    folder = options.out / "arms" / f"{_slug(name)}-seed{seed}"
    if (folder / MODEL).exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    overrides = dict(overrides)
    if WARM_START in overrides:          # the donor arm's seconds count against this arm's budget
        donor, share = overrides.pop(WARM_START)
        donor_seconds = seconds * share
        donor_variant, donor_overrides = SUPERVISED_ARMS[donor]
        donor_overrides = {**donor_overrides, **{k: overrides[k] for k in ("ngf",) if k in overrides}}  # --tiny
        donor_run = train_arm(options, donor, donor_variant, donor_overrides, seed, donor_seconds, root)
        overrides["init_from"] = str(donor_run / MODEL)
        seconds -= donor_seconds
    warmup_share = overrides.pop(D_WARMUP, 0.0)
    cache = options.out / "cache" / "head"
    probe = build_trainer(arm_config(variant, overrides, options, 10, seed), root / "train" / "mr",
                          root / "train" / "ct", options.out / "_timing", options.device, cache_dir=cache,
                          show_progress=False)
    per_step = step_seconds(probe, 2, 3)
    shutil.rmtree(options.out / "_timing", ignore_errors=True)
    iterations = max(10, int(seconds * MARGIN / per_step))
    _say(f"arm {name} seed {seed}: {per_step:.3f} s/iteration -> {iterations} iterations in {seconds:g} s")
    overrides["d_warmup"] = int(iterations * warmup_share)     # its steps are cheaper: the budget has room
    trainer = build_trainer(arm_config(variant, overrides, options, iterations, seed), root / "train" / "mr",
                            root / "train" / "ct", folder, options.device, cache_dir=cache,
                            show_progress=options.progress)
    trainer.run(stop_at=time.time() + seconds)
    return folder


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the run started, validation MAE inside the body in HU) of a run's validation events; a
    warm-started run's seconds count from its donor's start (the donor's training seconds added), as its budget."""
    from ..events import EVENTS_FILE, iter_events
    from ..modelfile import read_metadata

    start, offset, seconds, values = None, 0.0, [], []
    for event in iter_events(run / EVENTS_FILE):
        if event["event"] == "start":
            start = event["time"]
        elif event["event"] == "warm_start":
            offset = float(read_metadata(event["file"])["training"]["seconds"])    # written before "start"
        elif event["event"] == "validation" and "mae_body_hu" in event.get("metrics", {}) and start is not None:
            seconds.append(event["time"] - start + offset)
            values.append(event["metrics"]["mae_body_hu"])
    return np.array(seconds), np.array(values)


def curves_figure(runs: dict, path: Path, title: str) -> Path:
    """Validation MAE inside the body against training seconds, one line per arm and seed (unpaired arms only with
    ``validation_pairs``: the earlier ones had no registered validation CT, so no line; their test MAE is in the
    table)."""
    from .. import figures  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for label, run in runs.items():
        seconds, values = curve(run)
        ax.plot(seconds, values, marker=".", label=label)
    ax.set_xlabel("training seconds (wall clock, this machine)")
    ax.set_ylabel("validation MAE inside the body (HU)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_recipe(options: Options, seconds: float, arms: dict, label: str = "supervised") -> dict:
    """Train every arm for ``seconds`` each, score all on the test phantoms beside the baselines, write the tables,
    the curves and ``recipe_<label>.json`` (arm sets of one --out share its data, cache and runs)."""
    import torch

    from ..modelfile import read_metadata
    from ..preprocessing import Normalization
    from ..tables import format_table, write_table
    from ..train import MODEL
    from ..baselines import fit_baselines
    from .evaluation import evaluate_baselines, evaluate_run
    from .machine import machine_description
    from .run import load_subjects, prepare_data

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    if options.device == "auto":
        options.device = "cuda" if torch.cuda.is_available() else "cpu"
    options.out.mkdir(parents=True, exist_ok=True)
    machine = machine_description(options.device)
    roots, split = prepare_data(options)
    tests, train_subjects = load_subjects(options, roots, split)
    setting = options.settings()[0]
    runs, rows = {}, []
    for name, (variant, overrides) in arms.items():
        for seed in options.seeds:
            run = train_arm(options, name, variant, overrides, seed, seconds, roots["head"])
            runs[f"{name} seed {seed}"] = run
            meta = read_metadata(run / MODEL)
            for row in evaluate_run(run / MODEL, setting, tests["head"], options.device):
                rows.append({"arm": name, "seed": seed, "iterations": meta["training"]["iterations"],
                             "train_seconds": meta["training"]["seconds"], **row})
    norm = Normalization.from_config(training_config("supervised", setting, options.net(), 10, 0))
    baselines = fit_baselines(train_subjects("head"), norm)
    for name, baseline_rows in evaluate_baselines(baselines, tests["head"]).items():
        rows += [{"arm": f"{name} (baseline)", "seed": -1, "iterations": 0, "train_seconds": 0.0, **r}
                 for r in baseline_rows]
    summary = summarise(rows)
    tables = options.out / "tables"
    write_table(rows, tables, f"recipe_{label}_per_subject", echo=False)
    write_table(summary, tables, f"recipe_{label}_summary", echo=False)
    figure = curves_figure(runs, options.out / "figures" / f"recipe_{label}_curves.png",
                           f"Validation MAE inside the body, {seconds:g} s per arm, {machine['cpu']}, "
                           f"{machine['torch_threads']} torch threads, device {options.device}")
    print("\n" + format_table(summary), flush=True)
    tests = effect_ttests(rows, arms)
    if tests:
        write_table(tests, tables, f"recipe_{label}_ttests", echo=False)
    report = {"command": options.command, "arm_seconds": seconds, "machine": machine,
              "machine_end": machine_description(options.device), "arms": {n: {"variant": v, "overrides": o}
                                                                          for n, (v, o) in arms.items()},
              "summary": summary, "ttests": tests, "figure": str(figure)}
    _dump(options.out / f"recipe_{label}.json", report)
    return report


def effect_ttests(rows: list[dict], arms: dict) -> list[dict]:
    """Paired t-tests over test subjects on seed means (``statistics.ttest_rows``): each variant against cyclegan and
    each isolated effect against its control, where an arm set holds one arm per variant (the papers' set)."""
    from .statistics import ttest_rows

    variants = [variant for variant, _ in arms.values()]
    if len(set(variants)) < len(variants) or len(variants) < 2:
        return []
    by_variant = [{**r, "anatomy": "head", "variant": arms[r["arm"]][0]} for r in rows if r["arm"] in arms]
    return ttest_rows(by_variant, "head", variants)


def summarise(rows: list[dict]) -> list[dict]:
    """Per arm: MAE inside the body (mean over subjects of the seed mean, SD over subjects), as a fraction of the
    constant's, and the iterations and seconds its runs got."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    constant = np.mean([r["mae"] for r in rows if r["arm"] == "constant (baseline)"]) if any(
        r["arm"] == "constant (baseline)" for r in rows) else float("nan")
    out = []
    for arm in arms:
        picked = [r for r in rows if r["arm"] == arm]
        subjects = sorted({r["subject"] for r in picked})
        per_subject = np.array([np.mean([r["mae"] for r in picked if r["subject"] == s]) for s in subjects])
        out.append({"arm": arm, "mae_hu": round(float(per_subject.mean()), 1),
                    "mae_sd_over_subjects": round(float(per_subject.std(ddof=1)), 1) if len(per_subject) > 1 else "-",
                    "mae_vs_constant": round(float(per_subject.mean() / constant), 3),
                    "mae_bone_hu": round(float(np.mean([r["mae_bone"] for r in picked])), 1),
                    "ssim": round(float(np.mean([r["ssim"] for r in picked])), 3),
                    "iterations": int(np.mean([r["iterations"] for r in picked])),
                    "train_seconds": round(float(np.mean([r["train_seconds"] for r in picked])), 1)})
    return out


def run_recipe_from_args(args: argparse.Namespace) -> int:
    from .command_line import options_from_args

    if args.arm_seconds <= 0:
        raise ValueError("--arm-seconds must be > 0")
    options = options_from_args(args)
    options.command = (f"mrtoct bench recipe --out {options.out} --arm-seconds {args.arm_seconds:g} --arm-set "
                       f"{args.arm_set}" + (" --tiny" if args.tiny else "")
                       + (f" --threads {args.threads}" if args.threads else "")
                       + f" --seeds {' '.join(map(str, options.seeds))}")
    arms = ARM_SETS[args.arm_set]
    if args.arms:
        unknown = [a for a in args.arms if a not in arms]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; the {args.arm_set} set has {list(arms)}")
        arms = {a: arms[a] for a in args.arms}
    if args.tiny:  # smoke tests: tiny networks in every arm
        arms = {name: (variant, {**overrides, "ngf": 4}) for name, (variant, overrides) in arms.items()}
    run_recipe(options, args.arm_seconds, arms, args.arm_set)
    return 0
