"""Timing and plan: seconds per iteration measured before training, the iterations that fit the budget, the
stored plan, and the status of each run (job)."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .evaluation import score_subject
from .machine import machine_description
from .output import _dump, _jsonable, _say
from .real_scans import real_scan_paths
from .settings import PAPER_ITERATIONS, PLAN, Options, Setting, training_config


def measure(options: Options, setting: Setting, data_root: Path, variants: Sequence[str],
            subject, scans: list[Path]) -> dict:
    """Seconds per iteration per variant (median of timed steps after warm-up) and seconds to evaluate a subject."""
    from ..modelfile import load_model
    from ..synthesis import synthesize
    from ..train import build_trainer

    warm, timed = options.timing_steps
    net = options.net()
    result = {"seconds_per_iteration": {}, "eval_seconds_per_subject": 0.0, "real_seconds_per_scan": 0.0}
    scratch = options.out / "_timing"
    for variant in variants:
        folder = scratch / f"{setting.anatomy}-{variant}"
        shutil.rmtree(folder, ignore_errors=True)
        config = training_config(variant, setting, net, 10, options.seeds[0], options.recipe)
        trainer = build_trainer(config, data_root / "train" / "mr", data_root / "train" / "ct", folder, options.device,
                                cache_dir=options.out / "cache" / setting.anatomy, show_progress=False)
        result["seconds_per_iteration"][variant] = step_seconds(trainer, warm, timed)
        _say(f"  {setting.anatomy}/{variant}: {result['seconds_per_iteration'][variant]:.3f} s/iteration (median of "
             f"{timed} after {warm} warm-up)")
        if variant == variants[-1]:
            model = trainer.finish(0.0)
            bundle = load_model(model)
            began = time.perf_counter()
            score_subject(bundle, subject, options.device)
            result["eval_seconds_per_subject"] = time.perf_counter() - began
            if scans:
                from .. import volumes as V
                image = V.read_volume(scans[0])
                began = time.perf_counter()
                synthesize(image, bundle, device=options.device, batch_size=16)
                result["real_seconds_per_scan"] = 2 * (time.perf_counter() - began)  # + reading, MI, figure
        del trainer
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def step_seconds(trainer, warm: int, timed: int) -> float:
    """Median seconds per training iteration of ``trainer`` over ``timed`` steps after ``warm`` warm-up steps, batches
    drawn as in training (the trainer's state moves on: use a trainer made for timing)."""
    import torch

    times = []
    for step in range(warm + timed):
        batch = trainer.data.batch(trainer.rng, trainer.config.batch_size)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        trainer.train_step(batch.mr, batch.ct)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warm:
            times.append(time.perf_counter() - began)
    return float(np.median(times))


def choose_iterations(budget_s: float, elapsed_s: float, per_iteration_total: float, fixed_s: float) -> int:
    """Iterations per run so that elapsed + fixed + iterations * sum(s/it) * 1.05 (validation, previews) fits."""
    left = budget_s - elapsed_s - fixed_s
    iterations = int(left / (per_iteration_total * 1.05)) if per_iteration_total > 0 else 0
    step = 50 if iterations >= 500 else 10
    return max(10, iterations // step * step)


def plan_key(options: Options) -> dict:
    return _jsonable({"anatomies": options.anatomies, "variants": options.variants, "seeds": options.seeds,
                      "recipe": options.recipe,
                      "scale": options.scale, "network": asdict(options.net()),
                      "settings": [asdict(s) for s in options.settings()],
                      **({"data": str(Path(options.data).resolve()), "test_fraction": options.test_fraction}
                         if options.data is not None else {})})


def print_plan(plan: dict, options: Options) -> None:
    from ..tables import format_table

    rows = []
    total = 0.0
    for job in plan["jobs"]:
        minutes = job["seconds_per_iteration"] * plan["iterations"] * 1.05 / 60
        status = job_status(options, job)
        if status != "trained":
            done = 0 if status == "to train" else _done_iterations(options, job)
            total += minutes * (1 - done / plan["iterations"])
        rows.append({"anatomy": job["anatomy"], "variant": job["variant"], "seed": job["seed"],
                     "s/iteration": round(job["seconds_per_iteration"], 3), "iterations": plan["iterations"],
                     "est. minutes": round(minutes, 1), "status": status})
    evaluation = plan["eval_seconds"] / 60
    print("\n" + format_table(rows))
    print(f"\nplanned: {plan['iterations']} iterations per run for {len(plan['jobs'])} runs; training left about "
          f"{total:.1f} min, evaluation and figures about {evaluation:.1f} min "
          f"(budget {plan['budget_minutes']:g} min for the whole first invocation, including "
          f"{plan['setup_seconds'] / 60:.1f} min of data writing and timing already spent).")
    print(f"estimated time from now: about {total + evaluation:.1f} min\n", flush=True)


def job_dir(options: Options, anatomy: str, variant: str, seed: int) -> Path:
    return options.out / "runs" / anatomy / f"{variant}-seed{seed}"


def job_status(options: Options, job: dict) -> str:
    from ..train import CHECKPOINT, MODEL

    folder = job_dir(options, job["anatomy"], job["variant"], job["seed"])
    if (folder / MODEL).exists():
        return "trained"
    if (folder / CHECKPOINT).exists():
        return "resume"
    return "to train"


def _done_iterations(options: Options, job: dict) -> int:
    """Iteration of the last checkpoint of a run (from its events), 0 when unknown."""
    from ..events import EVENTS_FILE, iter_events

    path = job_dir(options, job["anatomy"], job["variant"], job["seed"]) / EVENTS_FILE
    done = 0
    try:
        for event in iter_events(path):
            if event.get("event") == "checkpoint":
                done = int(event.get("iteration", done))
    except (OSError, ValueError):
        return 0
    return done


def make_plan(options: Options, data_roots: dict, setup_began: float, test_subjects: dict) -> dict:
    """Measure, then fix the iterations (explicit, paper scale, or from the budget); reuse a stored plan.

    ``test_subjects``: anatomy -> its test subjects (the first is synthesized to time the evaluation)."""
    stored_path = options.out / PLAN
    key = plan_key(options)
    if stored_path.exists():
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
        if stored["key"] != key:
            raise ValueError(f"{options.out} holds a quality benchmark with other settings ({stored_path}); choose "
                             "another --out, or the same options as before to continue it")
        if options.iterations is not None and options.iterations != stored["iterations"]:
            raise ValueError(f"{options.out} was planned with {stored['iterations']} iterations per run; pass the same "
                             "--iterations (or none) to continue it, or choose another --out")
        _say(f"continuing the benchmark planned in {stored_path} ({stored['iterations']} iterations per run)")
        return stored
    scans, _ = real_scan_paths(options)
    _say("measuring seconds per iteration (a few warm-up steps, then timed steps) ...")
    measured, eval_seconds = {}, 0.0
    for setting in options.settings():
        subjects = test_subjects[setting.anatomy]
        m = measure(options, setting, data_roots[setting.anatomy], options.variants, subjects[0],
                    scans if setting.anatomy == "head" else [])
        measured[setting.anatomy] = m
        runs = len(options.variants) * len(options.seeds)
        eval_seconds += m["eval_seconds_per_subject"] * (len(subjects) * runs + len(options.variants))
        eval_seconds += m["real_seconds_per_scan"] * len(scans) * len(options.variants)
    eval_seconds += 20.0 * len(options.settings())  # figures, tables, report
    jobs = [{"anatomy": s.anatomy, "variant": v, "seed": seed,
             "seconds_per_iteration": measured[s.anatomy]["seconds_per_iteration"][v]}
            for s in options.settings() for v in options.variants for seed in options.seeds]
    per_iteration = sum(j["seconds_per_iteration"] for j in jobs)
    elapsed = time.time() - setup_began
    if options.iterations is not None:
        iterations, how = options.iterations, "--iterations"
    elif options.scale == "paper":
        iterations, how = PAPER_ITERATIONS, "--paper-scale (the papers' 2e5 iterations)"
    else:
        iterations = choose_iterations(options.budget_minutes * 60, elapsed, per_iteration, eval_seconds)
        how = f"budget of {options.budget_minutes:g} min"
    plan = {"key": key, "iterations": int(iterations), "iterations_from": how, "jobs": jobs,
            "eval_seconds": eval_seconds, "measurements": measured, "budget_minutes": options.budget_minutes,
            "setup_seconds": elapsed, "estimated_total_minutes": (elapsed + eval_seconds
                                                                  + per_iteration * 1.05 * iterations) / 60,
            "machine_at_planning": machine_description(options.device), "command": options.command,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not options.plan_only:
        _dump(stored_path, plan)
    return plan
