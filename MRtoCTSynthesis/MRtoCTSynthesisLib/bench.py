"""Benchmarks that print a table and write CSV + JSON (never unit tests with time limits).

* ``speed`` (``speed_bench.py``): side by side in one run on this machine, with the CPU model and flags: synthesis slices/s of the path
  ``auto`` chooses against the reference configuration (eager float32, NCHW, batch 1: the official CycleGAN test
  setting) for the paper-size generator at 256x256 and 384x256, as a fraction of the machine's measured GEMM rate;
  training s/iteration of the chosen path against the float32 eager trainer for the five presets; the sCT
  difference (HU) of the chosen path and of bf16 against float32 (demo model, a phantom and a real MR); the peak
  memory of a 512x512x300 MR (``synthesis``). Benchmark networks get random weights at run time.
* ``train``: seconds per training iteration at 256x256, batch 1, paper-size networks (ngf 64, 9 blocks), for the
  cyclegan, yang2018 and hiasa2018 presets, and the share of the iteration spent in the MIND structure term and in
  the gradient-consistency term (each timed forward + backward on the iteration's own tensors).
* ``synthesis``: wall time and peak resident memory of synthesizing a 512x512x300 MR, each case in a fresh process.

``speed_bench.py`` and ``quality/`` (``mrtoct bench quality``) add their own arguments; the command line dispatches.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import losses as L
from .config import preset
from .modelfile import save_untrained_model
from .tables import write_table

BENCHMARKS = ("train", "synthesis")


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def bench_train(size: int = 256, repeats: int = 3, ngf: int = 64, n_blocks: int = 9) -> list[dict]:
    rows = []
    for name in ("cyclegan", "yang2018", "hiasa2018"):
        config = preset(name, image_size=(size, size), augment_pad=None, ngf=ngf, n_blocks=n_blocks, iterations=10)
        trainer = bare_trainer(config)
        mr, ct = torch.rand(1, 1, size, size) * 2 - 1, torch.rand(1, 1, size, size) * 2 - 1
        step = _time(lambda: trainer.train_step(mr, ct), repeats)
        fake = torch.rand(1, 1, size, size, requires_grad=True)

        def term(loss_fn):
            def run():
                fake.grad = None
                (loss_fn(mr, fake) + loss_fn(ct, fake)).backward()
            return run
        mind = _time(term(lambda a, b: L.structure_loss(a, b, config.mind_region, config.mind_patch,
                                                        config.mind_sigma)), repeats) if config.lambda_structure else 0
        gc = _time(term(L.gradient_consistency_loss), repeats) if config.lambda_gc else 0.0
        rows.append({"preset": name, "size": size, "ngf": ngf, "n_blocks": n_blocks,
                     "seconds_per_iteration": round(step, 3), "mind_seconds": round(mind, 4),
                     "mind_share_percent": round(100 * mind / step, 2), "gc_seconds": round(gc, 4),
                     "gc_share_percent": round(100 * gc / step, 2)})
        print(_format_row(rows[-1]), flush=True)
    return rows


def bare_trainer(config, device: torch.device = torch.device("cpu"), plan=None):
    """A CycleGANTrainer on a stand-in dataset (the benchmark feeds tensors to train_step directly); ``plan``
    (an ``acceleration.Plan``) overrides the one of ``config.precision``."""
    from .train import CycleGANTrainer

    class NoData:
        mr = ct = [np.zeros((1, 8, 8), np.float32)]
        paired = False
    return CycleGANTrainer(config, NoData(), Path(tempfile.gettempdir()) / "mrtoct-bench", device,
                           show_progress=False, plan=plan)


def write_test_mr(path: Path, shape: Sequence[int]) -> Path:
    """A head-sized ellipsoid with noise, (x, y, z) voxels at 0.5 x 0.5 x 0.8 mm, written uncompressed."""
    import SimpleITK as sitk

    x, y, z = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    head = ((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.45 * y)) ** 2 + ((zz - z / 2) / (0.45 * z)) ** 2 < 1
    array = (head * np.float32(800)) + np.random.default_rng(0).normal(0, 20, size=(z, y, x)).astype(np.float32)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((0.5, 0.5, 0.8))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), False)
    return path


def bench_synthesis(model: str, mr_path: Path, label: str) -> dict:
    """One case, run in a fresh process: read the MR file and synthesize it, as a user would; time and peak RSS."""
    from .synthesis import synthesize
    from .volumes import read_volume

    before = _peak_rss_mb()
    began = time.perf_counter()
    image = read_volume(mr_path)
    result = synthesize(image, model, device="cpu")
    seconds = time.perf_counter() - began
    x, y, z = image.GetSize()
    return {"case": label, "shape": f"{x}x{y}x{z}", "seconds": round(seconds, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 0), "rss_at_start_mb": round(before, 0),
            "input_float32_mb": round(4 * x * y * z / 2**20, 0), "threads": torch.get_num_threads(),
            "precision": result.precision, "backend": result.backend}


def _peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, which starts anew at exec (ru_maxrss keeps the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other systems: kilobytes on Linux, bytes on macOS


def _format_row(row: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in row.items())


def add_bench_arguments(parser: argparse.ArgumentParser, more: Sequence[str] = ()) -> None:
    """The bench command's arguments; ``more``: further benchmark names the caller dispatches itself."""
    parser.add_argument("what", choices=[*BENCHMARKS, *more])
    parser.add_argument("--out", help="folder for the CSV and JSON (default benchmarks/results; quality: "
                                      "benchmarks/quality, with runs, figures and RESULTS.md)")
    parser.add_argument("--size", type=int, default=256, help="train: image size (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), help="synthesis: MR size x y z")
    parser.add_argument("--paper-size", action="store_true",
                        help="synthesis: also time a paper-size generator (ngf 64, 9 blocks, 384x256; ~10 min on 1 CPU)")
    parser.add_argument("--case", nargs=3, metavar=("MODEL", "LABEL", "MR"), help=argparse.SUPPRESS)  # child process


def run_bench(args: argparse.Namespace) -> int:
    out = Path(args.out or "benchmarks/results")
    if args.what == "train":
        write_table(bench_train(args.size, args.repeats), out, "train_seconds_per_iteration")
        return 0
    if args.case:
        print(json.dumps(bench_synthesis(args.case[0], Path(args.case[2]), args.case[1])))
        return 0
    with tempfile.TemporaryDirectory(prefix="mrtoct-bench-") as scratch:
        mr_path = write_test_mr(Path(scratch) / "bench_mr.mha", args.shape)
        cases = [("phantom-head-demo", "demo model (ngf 24, 6 blocks, 3 mm)")]
        if args.paper_size:
            paper = save_untrained_model(Path(scratch) / "paper-size-random.mrtoct.safetensors", "paper-size-random",
                                         64, 9, image_size=(384, 256), generators=("G_CT",))
            cases.append((str(paper), "paper size (ngf 64, 9 blocks, 384x256)"))
        rows = [synthesis_case(model, label, mr_path) for model, label in cases]
    write_table(rows, out, "synthesis_memory_time")
    return 0


def synthesis_case(model: str, label: str, mr_path: Path) -> dict:
    """``bench_synthesis`` in a fresh process (its peak memory is then the synthesis's own)."""
    command = [sys.executable, "-m", "MRtoCTSynthesisLib.cli", "bench", "synthesis", "--case", model, label,
               str(mr_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(_format_row(row), flush=True)
    return row
