"""The arguments of ``mrtoct bench quality`` and the options they make."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..config import RECIPES
from .run import run_quality
from .settings import ANATOMIES, DEFAULT_REAL_DATA, NETWORKS, REAL_SCANS, VARIANTS, Network, Options


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mrtoct bench quality`` (added to the bench parser; --out is the bench's)."""
    group = parser.add_argument_group("quality (mrtoct bench quality)")
    group.add_argument("--budget-minutes", type=float, default=60.0,
                       help="quality: total time budget of the first invocation; iterations are chosen to fit it "
                            "(default 60)")
    group.add_argument("--iterations", type=int, help="quality: iterations per run (overrides the budget)")
    group.add_argument("--seeds", type=int, nargs="+", default=[0], help="quality: training seeds (default 0)")
    group.add_argument("--anatomy", choices=["head", "pelvis", "both"], default="head",
                       help="quality: head (Yang's sagittal setting), pelvis (Hiasa's coronal setting) or both")
    group.add_argument("--paper-scale", action="store_true",
                       help="quality: the papers' sizes (384x256 head canvas at 1 mm, ngf 64, 9 blocks, 2e5 "
                            "iterations) for a GPU")
    group.add_argument("--small", action="store_true",
                       help="quality: the small CPU check (4 mm head, 64x64 canvas, ngf 16): degenerate for a GAN, "
                            "for quick checks of the data path only")
    group.add_argument("--data", help="quality: real paired data instead of phantoms: a folder with one folder per "
                                      "subject holding mr.<ext> and ct.<ext> (registered, same grid) and optionally "
                                      "mask.<ext> (SynthRAD layout); read only")
    group.add_argument("--test-fraction", type=float, default=1 / 3,
                       help="quality: share of the --data subjects held out for testing (default 1/3)")
    group.add_argument("--real-data", default=str(DEFAULT_REAL_DATA),
                       help="quality: folder of real head MR scans (read only; 'none' to skip)")
    group.add_argument("--real-scans", nargs="+", default=list(REAL_SCANS),
                       help="quality: file names in --real-data to synthesize")
    group.add_argument("--report", help="quality: Markdown report path (default <out>/RESULTS.md)")
    group.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                       help="quality: variants to compare (default all five)")
    group.add_argument("--train-subjects", type=int, help="quality: training phantoms (default 30)")
    group.add_argument("--test-subjects", type=int, help="quality: test phantoms (default 15)")
    group.add_argument("--ngf", type=int, help="quality: generator width (default 32; paper 64)")
    group.add_argument("--ndf", type=int, help="quality: discriminator width (default 64; paper 64)")
    group.add_argument("--n-blocks", type=int, help="quality: residual blocks (default 6; paper 9)")
    group.add_argument("--device", default="auto", help="quality: auto (CUDA, then CPU), cpu, cuda")
    group.add_argument("--threads", type=int,
                       help="quality: torch CPU threads (default: torch's choice, one per core). On a machine shared "
                            "with other jobs, 1 can be much faster: busy OpenMP threads wait for each other")
    group.add_argument("--stop-after-minutes", type=float,
                       help="quality: a time budget for this invocation: a run still training that many minutes after "
                            "it started stops there and keeps its model (the report gives the iterations done); for "
                            "leased machines")
    group.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                       help="quality: paper (the presets' networks and optimiser; default) or fast (config.RECIPES: a "
                            "small U-Net, batch 4, Adam 1e-3; --ngf and --n-blocks then do not apply)")
    group.add_argument("--no-progress", action="store_true", help="quality: no progress bars")
    group.add_argument("--plan-only", action="store_true",
                       help="quality: write the data, measure and print the plan with its estimated time, then stop")
    group.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests only


def options_from_args(args: argparse.Namespace) -> Options:
    if sum((args.paper_scale, args.tiny, args.small)) > 1:
        raise ValueError("--paper-scale, --small and --tiny exclude each other")
    scale = "paper" if args.paper_scale else ("tiny" if args.tiny else ("small" if args.small else "default"))
    data = Path(args.data) if args.data else None
    if data is not None and args.anatomy == "both":
        raise ValueError("--data holds one anatomy: choose --anatomy head or pelvis (its slicing setting)")
    if data is not None and not data.is_dir():
        raise ValueError(f"--data {data} is not a folder (one folder per subject with mr and ct files)")
    base = NETWORKS[scale]
    network = Network(args.ngf or base.ngf, args.ndf or base.ndf, args.n_blocks or base.n_blocks)
    if args.iterations is not None and args.iterations < 1:
        raise ValueError("--iterations must be >= 1")
    for name in ("train_subjects", "test_subjects"):
        value = getattr(args, name)
        if value is not None and value < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2")
    real = None if str(args.real_data).lower() == "none" else Path(args.real_data)
    if data is not None and args.out and Path(args.out).resolve().is_relative_to(data.resolve()):
        raise ValueError("--out must not be inside --data (the data folder is never written)")
    if real is not None and args.out and Path(args.out).resolve().is_relative_to(real.resolve()):
        raise ValueError("--out must not be inside --real-data (the real-data folder is never written)")
    out = Path(args.out or "benchmarks/quality")
    command = ["mrtoct", "bench", "quality", "--out", str(out)]
    if args.iterations is not None:
        command += ["--iterations", str(args.iterations)]
    else:
        command += ["--budget-minutes", f"{args.budget_minutes:g}"]
    command += ["--anatomy", args.anatomy, "--seeds", *map(str, args.seeds)]
    if args.paper_scale:
        command.append("--paper-scale")
    if args.tiny:
        command.append("--tiny")
    if args.small:
        command.append("--small")
    if data is not None:
        command += ["--data", str(data), "--test-fraction", f"{args.test_fraction:g}"]
    if list(args.variants) != list(VARIANTS):
        command += ["--variants", *args.variants]
    for flag in ("train_subjects", "test_subjects", "ngf", "ndf", "n_blocks"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--real-data", str(args.real_data)]
    if list(args.real_scans) != list(REAL_SCANS):
        command += ["--real-scans", *args.real_scans]
    if args.report:
        command += ["--report", args.report]
    if args.device != "auto":
        command += ["--device", args.device]
    if args.stop_after_minutes is not None:
        if args.stop_after_minutes <= 0:
            raise ValueError("--stop-after-minutes must be > 0")
        command += ["--stop-after-minutes", f"{args.stop_after_minutes:g}"]
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        command += ["--threads", str(args.threads)]
    if args.recipe != "paper":
        command += ["--recipe", args.recipe]
    return Options(out=out, budget_minutes=args.budget_minutes, iterations=args.iterations, seeds=tuple(args.seeds),
                   anatomies=ANATOMIES if args.anatomy == "both" else (args.anatomy,),
                   variants=tuple(v for v in VARIANTS if v in args.variants), scale=scale, network=network,
                   train_subjects=args.train_subjects, test_subjects=args.test_subjects, real_data=real,
                   real_scans=tuple(args.real_scans), report=Path(args.report) if args.report else None,
                   device=args.device, progress=not args.no_progress, command=shlex.join(command),
                   timing_steps=(1, 2) if args.tiny else (3, 5), plan_only=args.plan_only, threads=args.threads,
                   data=data, test_fraction=args.test_fraction, stop_after_minutes=args.stop_after_minutes,
                   recipe=args.recipe)


def run_quality_from_args(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    run_quality(options)
    return 0
