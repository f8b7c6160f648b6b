"""``mrtoct bench speed``: the acceleration plan against the reference configuration, side by side in one run.

Sections (each printed as it finishes, all written to ``<out>/speed.json`` and ``<out>/speed.md``):

* machine: CPU model and the flags that matter (AVX2/AVX512/AMX/bf16), torch's capability, GPUs, load average;
* GEMM: the machine's own dense matrix-product rate (torch.matmul, GFLOP/s = 2 n^3 / s) in float32 and bfloat16,
  and again within every synthesis round for the precisions being compared;
* synthesis: the paper-size generator (ngf 64, 9 blocks, random weights) at 256x256 and 384x256, seconds per slice
  of the reference configuration (eager float32, NCHW, batch 1) and of the path ``auto`` chooses for a 270-slice
  volume, timed alternately; GFLOP/s (FLOPs counted by torch's FlopCounterMode) and the fraction of the GEMM rate of
  the chosen precision; plus, timed once, the old engine setting (batch 8) and bf16 where it is not native;
* batch: seconds per slice of the chosen path's layout and precision at batch 1, 2 and 4 (the batch-size rule);
* sCT difference: |sCT(path) - sCT(float32)| inside the MR's body mask (mean, 99th percentile, max, HU) with the
  demo model on a phantom head and a real MR, for ``auto`` and for ``bfloat16``;
* training: seconds per iteration of the trainer ``auto`` chooses against the float32 eager trainer, alternately,
  for every preset (paper size unless ``--quick`` or the ``--train-*`` options say otherwise);
* memory: peak RSS of synthesizing a 512x512x300 float32 MR in a fresh process (``bench synthesis``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .acceleration import (DTYPES, Plan, Runner, cpu_description, cpu_native_bf16, cpu_native_fp16, gpu_descriptions,
                           network_gflop, pick_device, resolve_plan)
from .bench import bare_trainer, synthesis_case, write_test_mr
from .config import PRESET_NAMES, preset
from .networks import ResnetGenerator
from .tables import format_table, markdown_table

SYNTHESIS_SIZES = ((256, 256), (384, 256))
VOLUME_SLICES = 270          # a head volume (the 39 TFLOP case): what the chosen plan is resolved for
DEMO_MODEL = "phantom-head-demo"
DEFAULT_REAL_MR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "head_t1_rire001.mha"
SECTIONS = ("gemm", "synthesis", "batch", "difference", "training", "memory")


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speed (mrtoct bench speed; --repeats: timed rounds, default 3)")
    group.add_argument("--quick", action="store_true",
                       help="speed: training at ngf 32, 6 blocks, 128x128 and 2 rounds (synthesis stays paper size)")
    group.add_argument("--train-size", type=int, help="speed: training image size (default 256, --quick 128)")
    group.add_argument("--train-ngf", type=int, help="speed: training network width (default 64, --quick 32)")
    group.add_argument("--train-blocks", type=int, help="speed: residual blocks (default 9, --quick 6)")
    group.add_argument("--presets", nargs="+", choices=PRESET_NAMES, default=list(PRESET_NAMES),
                       help="speed: training presets (default all five)")
    group.add_argument("--real-mr", default=str(DEFAULT_REAL_MR),
                       help="speed: a real MR for the sCT difference (skipped with a note when missing)")
    group.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="speed: sections to leave out")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_description(), "gpus": gpu_descriptions(), "device": str(device), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "command": "mrtoct bench speed " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "speed"] else [])}
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------------------- GEMM

def gemm_size(device: torch.device, dtype: torch.dtype) -> int:
    """n for the GEMM rate: 8192 on GPUs, 2048 on CPUs (near the peak rate), 512 where the CPU only emulates the
    precision (a 2048 product would take minutes there)."""
    if device.type == "cuda":
        return 8192
    emulated = (dtype == torch.bfloat16 and not cpu_native_bf16()) or (dtype == torch.float16 and not cpu_native_fp16())
    return 512 if emulated else 2048


def _gemm_seconds(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return _seconds(lambda: a @ b, device)


def gemm_rate(device: torch.device, dtype: torch.dtype, repeats: int = 3, n: Optional[int] = None) -> dict:
    """Dense n x n matrix product, best of ``repeats``: GFLOP/s = 2 n^3 / s."""
    n = n or gemm_size(device, dtype)
    best = min(_gemm_seconds(device, dtype, n) for _ in range(repeats))
    return {"precision": str(dtype).replace("torch.", ""), "n": n, "gflop_per_s": round(2 * n ** 3 / best / 1e9, 1)}


# ------------------------------------------------------------------------------------------- synthesis

def generator(ngf: int = 64, n_blocks: int = 9, seed: int = 0) -> torch.nn.Module:
    """A generator with random weights (a paper-size one costs the same trained or not)."""
    torch.manual_seed(seed)
    return ResnetGenerator(ngf=ngf, n_blocks=n_blocks).eval()


def _runner(net: torch.nn.Module, plan: Plan, device: torch.device) -> Runner:
    return Runner(copy.deepcopy(net).to(device).eval(), plan)


def reference_plan(device: torch.device) -> Plan:
    return Plan(str(device), "float32", False, False, 1, "reference: eager float32, NCHW, batch 1")


def synthesis_speed(device: torch.device, repeats: int, gemm: dict, net: torch.nn.Module,
                    sizes=SYNTHESIS_SIZES) -> list[dict]:
    """Seconds per slice of the reference and the chosen path, timed alternately, with a GEMM of each path's
    precision in every round (so the fraction of the GEMM rate compares rates measured under the same load);
    one-shot rows for the old engine setting (batch 8) and for bf16 where it is not native (why ``auto`` avoids it).
    """
    rows = []
    for height, width in sizes:
        gflop = network_gflop(net, (1, 1, height, width))
        chosen = resolve_plan(device, "auto", "inference", work_gflop=VOLUME_SLICES * gflop)
        paths = {"reference": reference_plan(device), "chosen (auto)": chosen}
        runners = {name: _runner(net, plan, device) for name, plan in paths.items()}
        unit = max(plan.batch_size for plan in paths.values())   # slices per timed round, for both paths
        x = torch.rand(unit, 1, height, width, device=device) * 2 - 1
        warm = {}

        def run(name: str) -> None:
            step = paths[name].batch_size
            for start in range(0, unit, step):
                runners[name](x[start:start + step])

        precisions = {plan.precision: DTYPES[plan.precision] for plan in paths.values()}
        with torch.no_grad():
            for name in paths:  # the first call compiles where the plan says so
                warm[name] = _seconds(lambda: run(name), device)
            times = {name: [] for name in paths}
            gemms = {p: [] for p in precisions}
            for _ in range(repeats):
                for name in paths:
                    times[name].append(_seconds(lambda: run(name), device) / unit)
                for p, dtype in precisions.items():
                    gemms[p].append(gemm_rate(device, dtype, 1, gemm.get(p, {}).get("n"))["gflop_per_s"])
        same_load = {p: {"gflop_per_s": float(np.median(v))} for p, v in gemms.items()}
        reference = float(np.median(times["reference"]))
        for name, plan in paths.items():
            per_slice = float(np.median(times[name]))
            rows.append(_synthesis_row(f"{height}x{width}", name, plan, runners[name].backend, per_slice, gflop,
                                       reference, same_load, warm[name], repeats))
        if (height, width) == sizes[0]:
            rows += _one_shot_rows(net, device, gflop, height, width, reference, gemm, chosen)
    return rows


def _one_shot_rows(net, device, gflop, height, width, reference, gemm, chosen) -> list[dict]:
    extra = [("old engine setting (batch 8)", Plan(str(device), "float32", False, False, 8, "before issue 11"))]
    if chosen.precision != "bfloat16":
        extra.append(("bfloat16 (not native here)", resolve_plan(device, "bfloat16", compile=False)))
    rows = []
    for name, plan in extra:
        runner = _runner(net, plan, device)
        x = torch.rand(plan.batch_size, 1, height, width, device=device) * 2 - 1
        with torch.no_grad():
            runner(x[:1])  # warm-up on one slice
            per_slice = _seconds(lambda: runner(x), device) / plan.batch_size
        rows.append(_synthesis_row(f"{height}x{width}", name, plan, runner.backend, per_slice, gflop, reference, gemm,
                                   None, 1))
    return rows


def _synthesis_row(size, name, plan, backend, per_slice, gflop, reference, gemm, warm, rounds) -> dict:
    rate = gflop / per_slice
    gemm_rate_of = gemm.get(plan.precision, {}).get("gflop_per_s")
    return {"size": size, "path": name, "precision": plan.precision, "backend": backend, "batch": plan.batch_size,
            "s_per_slice": round(per_slice, 4), "slices_per_s": round(1 / per_slice, 3),
            f"s_per_{VOLUME_SLICES}_slices": round(per_slice * VOLUME_SLICES, 2),
            "gflop_per_s": round(rate, 1), "x_reference": round(reference / per_slice, 2),
            "gemm_gflop_per_s": round(gemm_rate_of, 1) if gemm_rate_of else "-",
            "percent_of_gemm": round(100 * rate / gemm_rate_of, 1) if gemm_rate_of else "-",
            "first_call_s": round(warm, 1) if warm is not None else "-", "rounds": rounds}


def batch_sweep(device: torch.device, repeats: int, net: torch.nn.Module, size=SYNTHESIS_SIZES[0],
                batches=(1, 2, 4)) -> list[dict]:
    """Seconds per slice of the chosen precision and layout, eager, at several batch sizes, alternately."""
    chosen = resolve_plan(device, "auto", compile=False)
    runners = {b: _runner(net, Plan(str(device), chosen.precision, chosen.channels_last, False, b, "sweep"), device)
               for b in batches}
    x = torch.rand(max(batches), 1, *size, device=device) * 2 - 1
    times = {b: [] for b in batches}
    with torch.no_grad():
        for b in batches:
            runners[b](x[:b])
        for _ in range(repeats):
            for b in batches:
                times[b].append(_seconds(lambda: runners[b](x[:b]), device) / b)
    return [{"size": f"{size[0]}x{size[1]}", "precision": chosen.precision, "backend": runners[b].backend, "batch": b,
             "s_per_slice": round(float(np.median(times[b])), 4), "rounds": repeats} for b in batches]


# ------------------------------------------------------------------------------------------- sCT difference

def sct_difference(device: torch.device, real_mr: Optional[Path]) -> tuple[list[dict], list[str]]:
    """|sCT(auto) - sCT(float32)| and |sCT(bfloat16) - sCT(float32)| inside the body, demo model."""
    from .phantom import make_phantom, subject_seeds
    from .synthesis import synthesize
    from .volumes import array_of, body_mask, read_volume

    cases, notes = [("phantom head (seed 0, 64x64x48, 3 mm)", make_phantom("head", subject_seeds(0, 1)[0]).mr)], []
    if real_mr is not None and real_mr.is_file():
        cases.append((f"real MR {real_mr.name}", read_volume(real_mr)))
    else:
        notes.append(f"real MR not found at {real_mr}: only the phantom was compared")
    rows = []
    for label, mr in cases:
        body = array_of(body_mask(mr)) > 0
        reference = array_of(synthesize(mr, DEMO_MODEL, device=str(device), precision="float32").sct)
        for precision in ("auto", "bfloat16"):
            began = time.perf_counter()
            result = synthesize(mr, DEMO_MODEL, device=str(device), precision=precision)
            seconds = time.perf_counter() - began
            difference = np.abs(array_of(result.sct) - reference)[body]
            rows.append({"case": label, "requested": precision, "precision": result.precision,
                         "backend": result.backend, "voxels_in_body": int(body.sum()),
                         "mean_abs_hu": round(float(difference.mean()), 3),
                         "p99_abs_hu": round(float(np.percentile(difference, 99)), 2),
                         "max_abs_hu": round(float(difference.max()), 1), "seconds": round(seconds, 1)})
    return rows, notes


# ------------------------------------------------------------------------------------------- training

def training_speed(device: torch.device, presets, size: int, ngf: int, n_blocks: int, repeats: int) -> list[dict]:
    """Seconds per iteration (G step with the preset's terms, then D step), float32 eager trainer vs ``auto``."""
    rows = []
    for name in presets:
        config = preset(name, image_size=(size, size), augment_pad=None, ngf=ngf, ndf=ngf, n_blocks=n_blocks,
                        iterations=10)
        trainers = {"float32 eager": bare_trainer(config, device, reference_plan(device)),
                    "chosen (auto)": bare_trainer(config, device)}
        mr, ct = (torch.rand(1, 1, size, size) * 2 - 1 for _ in range(2))
        warm = {label: _seconds(lambda: t.train_step(mr, ct), device) for label, t in trainers.items()}
        times = {label: [] for label in trainers}
        for _ in range(repeats):
            for label, trainer in trainers.items():
                times[label].append(_seconds(lambda: trainer.train_step(mr, ct), device))
        reference, fast = (float(np.median(times[label])) for label in trainers)
        plan = trainers["chosen (auto)"].plan
        rows.append({"preset": name, "size": f"{size}x{size}", "ngf": ngf, "n_blocks": n_blocks,
                     "float32_eager_s_per_it": round(reference, 3), "chosen_s_per_it": round(fast, 3),
                     "x_float32_eager": round(reference / fast, 2), "chosen_precision": plan.precision,
                     "chosen_backend": plan.backend, "first_step_s": round(warm["chosen (auto)"], 1),
                     "rounds": repeats})
        print(f"training {name}: float32 eager {reference:.2f} s/it, chosen {fast:.2f} s/it", flush=True)
    return rows


# ------------------------------------------------------------------------------------------- the run

def run_speed(args: argparse.Namespace, out: Optional[Path] = None) -> int:
    out = Path(out or args.out or "benchmarks/results")
    device = pick_device(getattr(args, "device", "auto") or "auto")
    repeats = 2 if args.quick and args.repeats == 3 else args.repeats
    size = args.train_size or (128 if args.quick else 256)
    ngf = args.train_ngf or (32 if args.quick else 64)
    n_blocks = args.train_blocks or (6 if args.quick else 9)
    tiny = getattr(args, "tiny", False)  # smoke tests: tiny networks everywhere (numbers meaningless)
    net, sizes = (generator(4, 1), ((32, 32), (48, 32))) if tiny else (generator(), SYNTHESIS_SIZES)
    report = {"machine": machine(device), "settings": {"repeats": repeats, "train_size": size, "train_ngf": ngf,
                                                         "train_blocks": n_blocks, "presets": args.presets,
                                                         "synthesis_network": "tiny (smoke test)" if tiny else
                                                         "paper size: ngf 64, 9 blocks, random weights"},
              "notes": []}
    _show("machine", [{"cpu": report["machine"]["cpu"]["model"], "flags": " ".join(report["machine"]["cpu"]["flags"]),
                       "native bf16": report["machine"]["cpu"]["native_bf16"], "device": str(device),
                       "threads": report["machine"]["cpu"]["threads"],
                       "load": report["machine"].get("load_average_at_start", "-")}])
    skip = set(args.skip)
    gemm = {}
    if "gemm" not in skip:
        for dtype in (torch.float32, torch.bfloat16) + ((torch.float16,) if device.type == "cuda" else ()):
            row = gemm_rate(device, dtype)
            gemm[row["precision"]] = row
        report["gemm"] = list(gemm.values())
        _show("GEMM (torch.matmul)", report["gemm"], report, out)
    if "synthesis" not in skip:
        report["synthesis"] = synthesis_speed(device, repeats, gemm, net, sizes)
        _show(f"synthesis ({report['settings']['synthesis_network']})", report["synthesis"], report, out)
    if "batch" not in skip:
        report["batch"] = batch_sweep(device, repeats, net, sizes[0])
        _show("batch size (chosen precision and layout, eager)", report["batch"], report, out)
    if "difference" not in skip:
        report["difference"], notes = sct_difference(device, Path(args.real_mr) if args.real_mr else None)
        report["notes"] += notes
        _show(f"sCT difference against float32 ({DEMO_MODEL}, inside the body)", report["difference"], report, out)
    if "training" not in skip:
        report["training"] = training_speed(device, args.presets, size, ngf, n_blocks, repeats)
        _show(f"training s/iteration ({size}x{size}, ngf {ngf}, {n_blocks} blocks, batch 1)", report["training"],
              report, out)
    if "memory" not in skip:
        with tempfile.TemporaryDirectory(prefix="mrtoct-speed-") as scratch:
            mr_path = write_test_mr(Path(scratch) / "mr.mha", (512, 512, 300))
            report["memory"] = [synthesis_case(DEMO_MODEL, "demo model, 512x512x300 float32 MR", mr_path)]
        _show("peak memory of a synthesis", report["memory"], report, out)
    try:
        report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    _write(report, out)
    print(f"\nwritten: {out / 'speed.json'}, {out / 'speed.md'}")
    return 0


def _show(title: str, rows: list[dict], report: Optional[dict] = None, out: Optional[Path] = None) -> None:
    """Print a section; with ``report`` and ``out``, also rewrite speed.json and speed.md with what is done so far
    (a run stopped part-way keeps its finished sections)."""
    print(f"\n== {title}\n{format_table(rows)}", flush=True)
    if report is not None and out is not None:
        _write(report, out)


def _write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "speed.md").write_text(speed_markdown(report), encoding="utf-8")


def speed_markdown(report: dict) -> str:
    """The report's tables in Markdown (docs/BENCHMARKS.md quotes them)."""
    m = report["machine"]
    lines = ["# mrtoct bench speed", "", f"Command: `{m['command'].strip()}`", "",
             f"CPU: {m['cpu']['model']}; flags: {' '.join(m['cpu']['flags'])}; torch capability "
             f"{m['cpu']['capability']}; native bf16: {m['cpu']['native_bf16']}; threads {m['cpu']['threads']}; "
             f"C++ compiler: {m['cpu']['cpp_compiler']}; device {m['device']}; torch {m['torch']}; "
             f"load average at start/end: {m.get('load_average_at_start')} / {m.get('load_average_at_end')}", ""]
    titles = {"gemm": "GEMM (torch.matmul)", "synthesis": "Synthesis, paper-size generator",
              "batch": "Batch size", "difference": "sCT difference against float32 (inside the body)",
              "training": "Training", "memory": "Peak memory"}
    for key, title in titles.items():
        if report.get(key):
            lines += [f"## {title}", "", markdown_table(report[key]), ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"
