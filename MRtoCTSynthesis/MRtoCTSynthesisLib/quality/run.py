"""The whole benchmark: data, plan, training, evaluation, tables, figures, real scans and report."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ..baselines import BASELINES, fit_baselines
from .claims import claimed, holder
from .convergence import convergence
from .data import data_subjects, for_each_in_processes, link_data, test_phantoms, write_data, written_subjects
from .evaluation import evaluate_baselines, evaluate_run, score_subject
from .output import _dump
from .plots import box_plots, representative_figure, validation_figure
from .formatting import _fmt
from .machine import machine_description
from .output import _say
from .plan import job_dir, job_status, make_plan, print_plan
from .real_scans import apply_to_real, real_scan_paths
from .report import write_report
from .settings import METRICS, VARIANTS, Options, Setting, training_config
from .statistics import summary_rows, ttest_rows


def run_quality(options: Options) -> dict:
    """The whole benchmark; returns paths and tables (also written to disk)."""
    import torch

    threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        return _run_quality(options)
    finally:
        torch.set_num_threads(threads)


def _run_quality(options: Options) -> dict:
    import torch

    began = time.time()
    if options.device == "auto":
        options.device = "cuda" if torch.cuda.is_available() else "cpu"
    options.out.mkdir(parents=True, exist_ok=True)
    unknown = [v for v in options.variants if v not in VARIANTS]
    if unknown or not options.variants:
        raise ValueError(f"unknown variants {unknown}; choose from {VARIANTS}")
    if len(set(options.seeds)) != len(options.seeds):
        raise ValueError("--seeds must be distinct")
    machine_start = machine_description(options.device)
    _say(f"out: {options.out}; anatomies {', '.join(options.anatomies)}; variants {', '.join(options.variants)}; "
         f"seeds {list(options.seeds)}; scale {options.scale}; machine {machine_start['cpu']}, "
         f"{machine_start['torch_threads']} torch threads, load {machine_start.get('load_average_1_5_15min')}")
    load = machine_start.get("load_average_1_5_15min", [0.0])[0]
    if options.device == "cpu" and torch.get_num_threads() > 1 and load >= (os.cpu_count() or 1):
        _say(f"warning: load average {load} with {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs: "
             "other jobs share the machine, and busy OpenMP threads can make each step many times slower; "
             "--threads 1 is steadier on a shared machine (timings then differ from an idle machine's)")
    with claimed(options.out, "setup", wait=True):  # one invocation writes the data, the others reuse it
        data_roots, split = prepare_data(options)
    test_subjects, train_subjects = load_subjects(options, data_roots, split)  # every invocation at once
    with claimed(options.out, "plan", wait=True, poll_seconds=1.0):  # one measures and stores the plan
        plan = make_plan(options, data_roots, began, test_subjects)
    iterations = plan["iterations"]
    print_plan(plan, options)
    if options.plan_only:
        _say("--plan-only: stopping before training (the plan was not stored)")
        return {"plan": plan}
    if iterations < 1000 and options.scale != "tiny":
        _say(f"note: {iterations} iterations is far below the papers' 2e5; unpaired variants may stay saturated "
             "at -1000 HU at this budget (seen before with yang2018 at a small CPU budget)")

    # ---------------------------------------------------------------- training
    stop_at = None if options.stop_after_minutes is None else began + 60 * options.stop_after_minutes
    trained_here, elsewhere = [], []
    for index, job in enumerate(plan["jobs"]):
        label = f"{job['anatomy']}/{job['variant']} seed {job['seed']} ({index + 1}/{len(plan['jobs'])})"
        name = f"train-{job['anatomy']}-{job['variant']}-seed{job['seed']}"
        with claimed(options.out, name) as mine:
            if mine:
                if _train_job(options, job, label, iterations, data_roots, stop_at):
                    trained_here.append(label)
                    _evaluate_job(options, job, test_subjects)
                continue
        elsewhere.append(f"{label} by {holder(options.out, name) or 'a process that just finished'}")
        _say(f"skip {label}: another process is training it ({elsewhere[-1]})")
    if trained_here:
        _say(f"training done ({len(trained_here)} of the {len(plan['jobs'])} runs in this invocation)")
    unfinished = [j for j in plan["jobs"] if job_status(options, j) != "trained"]
    if unfinished:
        _say(f"{len(unfinished)} runs are still training in other processes ({'; '.join(elsewhere)}): the last "
             "invocation to finish evaluates and writes the report (run this command again if they were killed)")
        return {"plan": plan, "training_elsewhere": elsewhere}
    with claimed(options.out, "evaluation") as mine:
        if not mine:
            _say(f"{holder(options.out, 'evaluation')} is evaluating this benchmark already")
            return {"plan": plan, "evaluating_elsewhere": True}
        return _evaluate(options, plan, test_subjects, train_subjects, machine_start, began)


def _train_job(options: Options, job: dict, label: str, iterations: int, data_roots: dict,
               stop_at: Optional[float] = None) -> bool:
    """Train one run of the plan (or resume it from its checkpoint) until its iterations or ``stop_at`` (time.time());
    False (nothing done) when its model exists."""
    from ..train import MODEL, build_trainer

    setting = next(s for s in options.settings() if s.anatomy == job["anatomy"])
    config = training_config(job["variant"], setting, options.net(), iterations, job["seed"], options.recipe)
    folder = job_dir(options, job["anatomy"], job["variant"], job["seed"])
    status = job_status(options, job)
    recorded = folder / "config.json"
    if recorded.exists() and json.loads(recorded.read_text(encoding="utf-8")) != config.to_dict():
        raise ValueError(f"{folder} holds a run with another configuration; remove it or choose another --out")
    if status == "trained":
        _say(f"skip {label}: model exists ({folder / MODEL})")
        return False
    if status == "to train" and folder.exists():
        shutil.rmtree(folder)  # a run killed before its first checkpoint: start it again
    _say(f"train {label}: {iterations} iterations, about "
         f"{job['seconds_per_iteration'] * iterations * 1.05 / 60:.1f} min"
         + (" (resuming from its checkpoint)" if status == "resume" else ""))
    root = data_roots[job["anatomy"]]
    trainer = build_trainer(config, root / "train" / "mr", root / "train" / "ct", folder, options.device,
                            cache_dir=options.out / "cache" / job["anatomy"], resume=status == "resume",
                            show_progress=options.progress)
    trainer.run(stop_at)
    return True


def _evaluate_job(options: Options, job: dict, test_subjects: dict) -> None:
    """Score a run this invocation trained on the test subjects now (cached beside its model), so that invocations
    sharing the runs also share the evaluation; the report later reads the cache."""
    from ..train import MODEL

    setting = next(s for s in options.settings() if s.anatomy == job["anatomy"])
    model = job_dir(options, job["anatomy"], job["variant"], job["seed"]) / MODEL
    _say(f"evaluate {job['anatomy']}/{job['variant']} seed {job['seed']} on {len(test_subjects[job['anatomy']])} "
         "test subjects")
    evaluate_run(model, setting, test_subjects[job["anatomy"]], options.device)


def _evaluate(options: Options, plan: dict, test_subjects: dict, train_subjects, machine_start: dict,
              began: float) -> dict:
    """Baselines, every trained run on the test subjects, tables, figures, real scans and the report."""
    from ..tables import write_table
    from ..modelfile import read_metadata
    from ..preprocessing import Normalization
    from ..train import MODEL

    iterations = plan["iterations"]
    # ---------------------------------------------------------------- evaluation
    per_subject, train_seconds, figures, all_tests, all_summary = [], {}, {}, [], []
    converged, baselines_fitted = [], {}
    for setting in options.settings():
        a = setting.anatomy
        norm = Normalization.from_config(training_config(options.variants[0], setting, options.net(), iterations, 0,
                                                         options.recipe))
        baselines_fitted[a] = fit_baselines(train_subjects(a), norm)  # the MR steps every variant shares
        _dump(options.out / "tables" / f"baselines_{a}.json", baselines_fitted[a].to_json())
        _say(f"baselines ({a}): constant {baselines_fitted[a].constant_hu:.1f} HU, MR lookup and class-mean floor "
             f"on {len(test_subjects[a])} test subjects")
        for name, rows in evaluate_baselines(baselines_fitted[a], test_subjects[a]).items():
            per_subject += [{"anatomy": a, "variant": name, "seed": -1, **row} for row in rows]
        for variant in options.variants:
            for seed in options.seeds:
                model = job_dir(options, setting.anatomy, variant, seed) / MODEL
                meta = read_metadata(model)
                train_seconds[(setting.anatomy, variant, seed)] = float(meta["training"].get("seconds", 0.0))
                _say(f"evaluate {setting.anatomy}/{variant} seed {seed} on {len(test_subjects[a])} test subjects")
                for row in evaluate_run(model, setting, test_subjects[a], options.device):
                    per_subject.append({"anatomy": setting.anatomy, "variant": variant, "seed": seed, **row})
                done = int(meta["training"].get("iterations", iterations))  # fewer where a time budget stopped it
                if done < iterations:
                    _say(f"note: {a}/{variant} seed {seed} stopped at its time budget after {done} of {iterations} "
                         "iterations")
                converged.append({"anatomy": a, "variant": variant, "seed": seed, "iterations_done": done,
                                  **convergence(model.parent, done)})
        tests = ttest_rows(per_subject, setting.anatomy, options.variants)
        present = [b for b in BASELINES if any(r["variant"] == b and r["anatomy"] == a for r in per_subject)]
        summary = summary_rows(per_subject, setting.anatomy, options.variants, options.seeds, train_seconds,
                               baselines=present)
        all_tests += tests
        all_summary += summary
        figures[setting.anatomy] = {
            "boxplots": box_plots(per_subject, setting.anatomy, options.variants, tests,
                                  options.out / "figures" / f"boxplots_{setting.anatomy}.png",
                                  f"{setting.anatomy} {'subjects' if options.data else 'phantoms'}, "
                                  f"{setting.paper} setting, {iterations} iterations, "
                                  f"n = {len(test_subjects[a])} test subjects"),
            "slices": _representative(options, setting, test_subjects[a][0], per_subject),
            "validation": validation_figure([job_dir(options, a, v, s) for v in options.variants
                                             for s in options.seeds],
                                            options.out / "figures" / f"validation_{a}.png",
                                            f"{a}: validation during training"),
        }
    tables = options.out / "tables"
    for rows, name in ((per_subject, "quality_per_subject"), (all_summary, "quality_summary"),
                       (all_tests, "quality_ttests"), (converged, "quality_convergence")):
        if rows:  # one variant has no t-tests
            write_table(rows, tables, name, echo=False)
    _print_summary(all_summary)

    # ---------------------------------------------------------------- real scans
    scans, real_message = real_scan_paths(options)
    _say(real_message)
    real_rows, real_figure = [], None
    if "head" in options.anatomies:
        seed = options.seeds[0]
        models = {v: (seed, job_dir(options, "head", v, seed) / MODEL) for v in options.variants}
        real_rows, real_figure = apply_to_real(options, models, scans)
        if real_rows:
            write_table(real_rows, tables, "quality_real_scans", echo=False)
    else:
        real_message += " (no head anatomy in this run: the real scans are head MR)"

    machine_end = machine_description(options.device)
    report = write_report(options, plan, per_subject, all_summary, all_tests, figures, real_rows, real_figure,
                          real_message, train_seconds, machine_start, machine_end, time.time() - began, converged,
                          {a: b.constant_hu for a, b in baselines_fitted.items()})
    _say(f"report: {report}")
    return {"report": report, "summary": all_summary, "ttests": all_tests, "per_subject": per_subject,
            "convergence": converged,
            "real": real_rows, "figures": figures, "real_figure": real_figure, "plan": plan, "tables": tables}


def prepare_data(options: Options) -> tuple[dict, dict]:
    """Training folders per anatomy, ready to train from: phantoms written under <out>/data with their training
    volumes prepared in the cache, or the --data folder's subjects (linked, never copied) with their
    (training, test) subject names."""
    roots, split = {}, {}
    for setting in options.settings():
        a = setting.anatomy
        if options.data is None:
            roots[a] = write_data(options.out, setting)
            warm_cache(options, setting, roots[a])
        else:
            roots[a], train, test = link_data(options.out, a, options.data, options.test_fraction)
            split[a] = (train, test)
            _say(f"--data {options.data}: {len(train)} training subjects (the trainer holds out "
                 f"{setting.validation_fraction:g} of them for validation), {len(test)} test subjects: "
                 + ", ".join(test))
    return roots, split


def load_subjects(options: Options, roots: dict, split: dict) -> tuple[dict, object]:
    """Test subjects per anatomy, and a function giving the training subjects (for the baselines)."""
    tests = {s.anatomy: (test_phantoms(s, roots[s.anatomy]) if options.data is None
                         else data_subjects(options.data, split[s.anatomy][1])) for s in options.settings()}

    def train_subjects(anatomy: str) -> list:
        if options.data is None:
            return written_subjects(roots[anatomy] / "train")
        return data_subjects(options.data, split[anatomy][0])

    return tests, train_subjects


def warm_cache(options: Options, setting: Setting, root: Path) -> None:
    """Prepare (N4, normalise, fit to the canvas) every training volume once, in one process per CPU, into the cache
    that every run of the anatomy shares; the runs then only read it (sequentially this is minutes of N4)."""
    from ..dataset import SliceCache, find_volumes
    from ..preprocessing import Normalization

    cache_dir = options.out / "cache" / setting.anatomy
    caches = {}
    for variant in options.variants:
        config = training_config(variant, setting, options.net(), 10, options.seeds[0], options.recipe)
        norm = Normalization.from_config(config)
        caches[json.dumps(norm.to_json(), sort_keys=True)] = (norm, config.augment_pad or config.image_size)
    began = time.time()
    jobs = [(cache_dir, norm, canvas, path, modality) for norm, canvas in caches.values()
            for modality, folder in (("mr", "MR"), ("ct", "CT"))
            for path in find_volumes(root / "train" / modality, folder)
            if not SliceCache(cache_dir, norm, canvas).target(path, modality).exists()]
    if jobs:
        for_each_in_processes(_cache_slices, jobs)
        _say(f"prepared {len(jobs)} training volumes in {time.time() - began:.0f} s ({cache_dir})")


def _cache_slices(cache_dir: Path, norm, canvas, path: Path, modality: str) -> None:
    from ..dataset import SliceCache

    SliceCache(cache_dir, norm, canvas).slices(path, modality)


def _representative(options: Options, setting: Setting, phantom, per_subject: list[dict]) -> Path:
    from ..modelfile import load_model
    from ..train import MODEL

    seed = options.seeds[0]
    scts, metrics = {}, {}
    for variant in options.variants:
        bundle = load_model(job_dir(options, setting.anatomy, variant, seed) / MODEL)
        metrics[variant], scts[variant] = score_subject(bundle, phantom, options.device)
    return representative_figure(phantom, scts, metrics, setting,
                                 options.out / "figures" / f"slices_{setting.anatomy}.png", 0)


def _print_summary(summary: list[dict]) -> None:
    from ..tables import format_table

    rows = [{"anatomy": r["anatomy"], "variant": r["variant"],
             **{label: f"{_fmt(r[f'{k}_mean'], d)} ± {_fmt(r[f'{k}_sd'], d)}" for k, label, _, d in METRICS},
             "sat. %": _fmt(r["saturated_pct_mean"], 1)} for r in summary]
    print("\n" + format_table(rows) + "\n", flush=True)
