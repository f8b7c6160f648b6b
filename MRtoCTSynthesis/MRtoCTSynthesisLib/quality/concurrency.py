"""Seconds per training iteration of the benchmark's runs when they train at the same time on one device.

The quality benchmark trains its runs as separate processes (one per job); on a GPU each small run is bound by its
own kernel launches, so several runs at once share the GPU well, but how well is a property of the machine. This
starts one process per job, lets each warm up on random slices (the cost of a step does not depend on the content),
then times all of them over the same wall-clock window. The result fixes the iterations that fit a time budget:

    python -m MRtoCTSynthesisLib.quality.concurrency --variants yang2018 supervised --seeds 0 1 --device cuda \
        --seconds 20 --json timing.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Optional, Sequence

from .settings import NETWORKS, SETTINGS, VARIANTS, training_config

WARM_UP_STEPS = 3


def _time_job(variant: str, seed: int, scale: str, anatomy: str, device: str, seconds: float, barrier, results,
              recipe: str = "paper") -> None:
    """One process: a trainer of ``variant`` on random slices, warmed up, then steps counted in a common window."""
    import numpy as np
    import torch

    from ..dataset import SliceDataset
    from ..train import CycleGANTrainer

    setting, net = SETTINGS[scale][anatomy], NETWORKS[scale]
    config = training_config(variant, setting, net, 100, seed, recipe)
    rng = np.random.default_rng(seed)
    volumes = [rng.uniform(-1, 1, (12, *config.augment_pad)).astype(np.float32) for _ in range(2)]
    data = SliceDataset(volumes, volumes, config.sampling, config.image_size, config.pbs_max_shift)
    trainer = CycleGANTrainer(config, data, Path("/nonexistent"), torch.device(device), show_progress=False)

    def step() -> None:
        batch = data.batch(trainer.rng, config.batch_size)
        trainer.train_step(batch.mr, batch.ct)

    for _ in range(WARM_UP_STEPS):
        step()
    barrier.wait()
    began, steps = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        step()
        steps += 1
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    results.put({"variant": variant, "seed": seed, "steps": steps,
                 "seconds_per_iteration": (time.perf_counter() - began) / max(steps, 1), "plan": trainer.plan.backend})


def concurrent_step_seconds(variants: Sequence[str], seeds: Sequence[int], device: str, seconds: float,
                            scale: str = "default", anatomy: str = "head", recipe: str = "paper") -> dict:
    """Seconds per iteration of every (variant, seed) job while all of them train at once (one process each)."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    jobs = [(v, s) for v in variants for s in seeds]
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [context.Process(target=_time_job, args=(v, s, scale, anatomy, device, seconds, barrier, results,
                                                                   recipe))
                 for v, s in jobs]
    for process in processes:
        process.start()
    rows = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} timing processes failed (exit codes {failed})")
    rows.sort(key=lambda r: (VARIANTS.index(r["variant"]), r["seed"]))
    slowest = max(r["seconds_per_iteration"] for r in rows)
    return {"processes": len(jobs), "device": device, "scale": scale, "anatomy": anatomy, "recipe": recipe,
            "window_seconds": seconds,
            "jobs": rows, "slowest_seconds_per_iteration": slowest,
            "iterations_per_second_all_runs": sum(1 / r["seconds_per_iteration"] for r in rows)}


def iterations_for(budget_seconds: float, timing: dict, margin: float = 0.85) -> int:
    """Iterations every run can finish in ``budget_seconds`` at the slowest job's shared rate (``margin`` for
    validation, previews and checkpoints), rounded down to 50 (10 below 500), at least 10."""
    iterations = int(budget_seconds * margin / timing["slowest_seconds_per_iteration"])
    step = 50 if iterations >= 500 else 10
    return max(10, iterations // step * step)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed window (after each job's warm-up)")
    parser.add_argument("--scale", default="default", choices=sorted(SETTINGS))
    parser.add_argument("--anatomy", default="head", choices=["head", "pelvis"])
    parser.add_argument("--recipe", default="paper", choices=["paper", "fast"], help="config.RECIPES")
    parser.add_argument("--budget-seconds", type=float, help="also print the iterations that fit this budget")
    parser.add_argument("--json", help="write the timing here")
    args = parser.parse_args(argv)
    timing = concurrent_step_seconds(args.variants, args.seeds, args.device, args.seconds, args.scale, args.anatomy,
                                     args.recipe)
    if args.budget_seconds:
        timing["budget_seconds"] = args.budget_seconds
        timing["iterations"] = iterations_for(args.budget_seconds, timing)
    text = json.dumps(timing, indent=2)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
