"""One place that decides how the networks run on a device, and applies it: precision, memory layout, compilation,
batch size. Every choice falls back to a slower path that works, with a one-line note, never an error.

``resolve_plan(device, precision, purpose, work_gflop)`` -> ``Plan``; ``prepare(module, plan)`` -> ``Runner``, a
callable taking and returning float32 NCHW tensors, whose ``backend`` says what actually ran.

Rules (measured on the project's machines; see docs/BENCHMARKS.md):

* ``auto`` on a CPU picks bfloat16 only where the CPU computes it natively (AMX-BF16 or AVX512-BF16, with oneDNN's
  bf16 kernels); elsewhere bf16 is emulated (on the AVX2 machine its GEMM ran at under 1 % of the float32 rate and
  the generator 5-30x slower than in float32), so ``auto`` is float32 there.
  An explicit ``bfloat16`` is honoured anyway (with a note); ``float16`` on a CPU without native fp16 runs float32.
* On CUDA ``auto`` is bfloat16 where the GPU supports it (compute capability >= 8), else float16 (>= 7), else float32;
  channels-last; batch 8.
* Reduced precision runs under ``torch.autocast`` (weights stay float32; instance norm and the output stay float32).
* ``torch.compile`` (inductor, with weight freezing for inference) is used where it pays: it needs a C++ compiler on
  CPUs (Slicer on Windows has none) or Triton on GPUs, and a job large enough to repay the compilation (20-40 s for
  a paper-size generator on 2 idle cores, several minutes on a loaded machine; inductor caches it on disk). On AMX
  it halved the bf16 time (issue 11); in float32 on AVX2 it ranged from 0.71x to 1.33x of eager in four runs, so
  on CPUs ``auto`` compiles only with native bf16 (``compile=True`` forces it). If compiling fails at the first
  call the runner goes on eagerly.
* CPU batch size 1 for paper-size networks (8 for small ones such as the demo model, where per-call overheads
  dominate): larger batches were slower per slice in bf16 on AMX (issue 11) and, on an idle AVX2 machine,
  in float32 (batch 4: 2.3x the time per slice; each 256x256 slice's ngf-64 activations are 16 MB, larger batches
  leave the caches). ``mrtoct bench speed`` reports the sweep on the machine at hand.

Command-line contract (the Slicer panel calls exactly this in a child process; keep it stable)::

    python -m MRtoCTSynthesisLib.acceleration --json [--device auto|cpu|cuda:N]

prints one JSON object and exits 0 (or exits 2 with a one-line message on stderr for a ``--device`` torch cannot
use)::

    {"cpu": {"model": str, "flags": [str], "capability": str, "native_bf16": bool, "native_fp16": bool,
             "threads": int, "logical_cpus": int, "cpp_compiler": str or null},
     "gpus": [{"device": "cuda:0", "name": str, "capability": "8.0", "bf16": bool}],
     "devices": ["cpu", "cuda:0", ...],
     "precisions": ["auto", "bfloat16", "float16", "float32"],
     "auto": {"<device>": {"precision": str, "backend": str, "reason": str, "batch_size": int,
                           "channels_last": bool, "compile": bool}}}

``devices`` lists what torch can use here; ``auto`` has one entry per listed device (only the named one with
``--device``), describing what ``precision="auto"`` chooses for a synthesis large enough to compile.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import platform
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .config import PRECISIONS

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PURPOSES = ("inference", "training")
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                  "amx_tile", "amx_bf16", "amx_fp16", "asimd", "sve", "bf16")
COMPILE_MIN_GFLOP = {"cpu": 20_000.0, "cuda": 2_000.0}   # work below this would not repay the compilation
CPU_BATCH_SIZE, SMALL_CPU_BATCH_SIZE, GPU_BATCH_SIZE = 1, 8, 8
COMPILE_ENV = "MRTOCT_COMPILE"   # "0"/"1": compilation off/on where a caller leaves it to the plan (e.g. many runs
                                 # compiling at once on one machine would spend their time budget compiling)
SMALL_SLICE_GFLOP = 10.0     # below this per slice (e.g. the demo model: 0.6), per-call overheads favour batches


# ------------------------------------------------------------------------------------------- what the machine has

@functools.lru_cache(maxsize=None)
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), plus those torch's cpuinfo reports (every system)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "amx_tile": "_is_amx_tile_supported", "amx_fp16": "_is_amx_fp16_supported", "avx512_vnni": "_is_vnni_supported"}
    for flag, probe in probes.items():
        try:
            if getattr(torch.cpu, probe)():
                flags.add(flag)
        except Exception:  # a private probe missing in this torch: /proc/cpuinfo (if any) decides
            pass
    return tuple(sorted(flags))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mkldnn(check: str) -> bool:
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except Exception:
        return False


def cpu_native_bf16() -> bool:
    """bf16 matrix units (AMX-BF16) or bf16 dot products (AVX512-BF16), and oneDNN's bf16 kernels to use them."""
    flags = set(cpu_flags())
    return bool(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}) and _mkldnn("_is_mkldnn_bf16_supported")


def cpu_native_fp16() -> bool:
    flags = set(cpu_flags())
    return bool(flags & {"amx_fp16", "avx512_fp16"}) and _mkldnn("_is_mkldnn_fp16_supported")


@functools.lru_cache(maxsize=None)
def cpp_compiler() -> Optional[str]:
    """The C++ compiler inductor would use on a CPU ($CXX, else the platform's usual names), or None (then
    torch.compile cannot run on the CPU). Found on PATH only: importing inductor to ask it costs ~60 MB."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    names += ["cl"] if sys.platform == "win32" else ["g++", "c++", "clang++"]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def triton_available() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:
        return False


def cpu_description() -> dict:
    flags = cpu_flags()
    return {"model": cpu_model(), "flags": [f for f in RELEVANT_FLAGS if f in flags],
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_native_bf16(),
            "native_fp16": cpu_native_fp16(), "threads": torch.get_num_threads(), "logical_cpus": os.cpu_count(),
            "cpp_compiler": cpp_compiler()}


def gpu_descriptions() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        out.append({"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index),
                    "capability": f"{major}.{minor}", "bf16": major >= 8})
    return out


def available_devices() -> list[str]:
    devices = ["cpu"] + [g["device"] for g in gpu_descriptions()]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU; otherwise the named device (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


# ------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Plan:
    """How to run a network: resolved precision, layout, compilation and batch size, and why."""

    device: str
    precision: str          # bfloat16 | float16 | float32 (never auto)
    channels_last: bool
    compile: bool
    batch_size: int
    reason: str
    notes: tuple = ()       # one line per fallback taken

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def backend(self) -> str:
        return describe_backend(self.compile, self.channels_last)

    def to_dict(self) -> dict:
        return {**asdict(self), "notes": list(self.notes), "backend": self.backend}


def describe_backend(compiled: bool, channels_last: bool) -> str:
    return f"torch {'compiled (inductor)' if compiled else 'eager'}, {'channels-last' if channels_last else 'NCHW'}"


def _precision_for(device: torch.device, requested: str) -> tuple[str, str, list]:
    """(precision, reason, notes) for a device and a requested precision."""
    notes: list[str] = []
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        if requested == "auto":
            if major >= 8:
                return "bfloat16", f"GPU compute capability {major}.x runs bf16 natively", notes
            if major >= 7:
                return "float16", f"GPU compute capability {major}.x has fp16 tensor cores but no bf16", notes
            return "float32", f"GPU compute capability {major}.x has no fast reduced precision", notes
        if requested == "bfloat16" and major < 8:
            notes.append(f"bfloat16 on a compute capability {major}.x GPU is emulated and slow")
        return requested, f"{requested} as requested", notes
    if device.type != "cpu":  # MPS and others: float32, as tested
        if requested not in ("auto", "float32"):
            notes.append(f"{requested} is not supported by this engine on {device.type}; using float32")
        return "float32", f"float32 on {device.type}", notes
    if requested == "auto":
        if cpu_native_bf16():
            return "bfloat16", "the CPU computes bf16 natively (AMX/AVX512-BF16)", notes
        return "float32", "the CPU has no native bf16 (emulated it is 5-30x slower than float32)", notes
    if requested == "bfloat16" and not cpu_native_bf16():
        notes.append("bfloat16 on this CPU is emulated (no AMX/AVX512-BF16): correct but much slower than float32")
    if requested == "float16" and not cpu_native_fp16():
        notes.append("float16 on this CPU is not native (no AMX-FP16/AVX512-FP16); using float32")
        return "float32", "float32 (float16 requested, not native here)", notes
    return requested, f"{requested} as requested", notes


def resolve_plan(device: str | torch.device = "auto", precision: str = "auto", purpose: str = "inference",
                 work_gflop: Optional[float] = None, compile: Optional[bool] = None,
                 batch_size: Optional[int] = None, slice_gflop: Optional[float] = None) -> Plan:
    """The plan for ``device`` and a requested ``precision`` (one of PRECISIONS).

    ``work_gflop`` is the job's network work (None: large); compilation is chosen only where it is available and
    the work repays it, unless ``compile`` forces it on or off. ``batch_size`` None: the device's rule (on CPUs
    1, or 8 for networks under SMALL_SLICE_GFLOP per slice, ``slice_gflop``).
    On CPUs only native bf16 is compiled (float32 on AVX2 gained nothing reliable); training likewise.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    torch_device = device if isinstance(device, torch.device) else pick_device(device)
    resolved, reason, notes = _precision_for(torch_device, precision)
    if purpose == "training" and resolved == "float16":  # fp16 gradients underflow without loss scaling
        notes.append("float16 training would need loss scaling; training in float32")
        resolved, reason = "float32", "float32 (this engine trains in bf16 or float32 only)"
    kind = torch_device.type
    reduced = resolved != "float32"
    channels_last = kind == "cuda" or (kind == "cpu" and reduced)  # oneDNN's bf16 kernels are NHWC; fp32 AVX2: NCHW
    if compile is None and os.environ.get(COMPILE_ENV) in ("0", "1"):
        compile = os.environ[COMPILE_ENV] == "1"
        notes.append(f"{COMPILE_ENV}={os.environ[COMPILE_ENV]}: compilation {'on' if compile else 'off'}")
    if compile is None:
        wanted = kind in COMPILE_MIN_GFLOP
        if kind == "cpu":  # measured gains only with native bf16; in float32 on AVX2 0.7-1.3x (docs/BENCHMARKS.md)
            wanted = wanted and reduced and cpu_native_bf16()
        if purpose == "inference" and work_gflop is not None:
            wanted = wanted and work_gflop >= COMPILE_MIN_GFLOP[kind]
        use_compile = wanted and _compile_available(kind)[0]
    else:
        can_compile, why_not = _compile_available(kind)
        use_compile = compile and can_compile
        if compile and not can_compile:
            notes.append(f"torch.compile unavailable ({why_not}); running eagerly")
    small = slice_gflop is not None and slice_gflop < SMALL_SLICE_GFLOP
    size = batch_size or (GPU_BATCH_SIZE if kind != "cpu" else SMALL_CPU_BATCH_SIZE if small else CPU_BATCH_SIZE)
    return Plan(str(torch_device), resolved, channels_last, use_compile, size, reason, tuple(notes))


def _compile_available(kind: str) -> tuple[bool, str]:
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if kind == "cpu":
        return (True, "") if cpp_compiler() else (False, "no C++ compiler found")
    if kind == "cuda":
        return (True, "") if triton_available() else (False, "Triton is not installed")
    return False, f"not used on {kind}"


def network_gflop(module: nn.Module, shape: Sequence[int], probe: int = 32) -> float:
    """GFLOP of one forward pass of a fully convolutional ``module`` on an input of ``shape`` (N, C, H, W):
    2 x the multiply-adds of its convolutions and transposed convolutions, counted on one ``probe`` x ``probe``
    input and scaled by N H W / probe^2 (exact for the ResNet generator at multiples of 4). A real pass on a small
    input, because running it on the meta device (or under FlopCounterMode) imports ~75 MB of torch modules."""
    total = 0

    def count(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += 2 * output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        elif isinstance(layer, nn.ConvTranspose2d):
            total += 2 * inputs[0].numel() * layer.out_channels // layer.groups * math.prod(layer.kernel_size)

    handles = [layer.register_forward_hook(count) for layer in module.modules()]
    try:
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            module(torch.zeros(1, shape[1], probe, probe, device=device))
    except Exception:  # a module that cannot run on the probe: treat the job as small (no compilation)
        return 0.0
    finally:
        for handle in handles:
            handle.remove()
    return total * shape[0] * shape[2] * shape[3] / probe ** 2 / 1e9


# ------------------------------------------------------------------------------------------- applying the plan

def autocast(plan: Plan):
    """The autocast context of the plan (a no-op for float32)."""
    if plan.precision == "float32":
        return nullcontext()
    return torch.autocast(torch.device(plan.device).type, dtype=plan.dtype)


def to_layout(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if plan.channels_last and x.dim() == 4 else x


class Runner:
    """``runner(x)``: the module on float32 NCHW input under the plan; returns float32 NCHW (contiguous).

    Compiled runners pad a short last batch to the plan's batch size (static shapes: no recompilation; instance
    norm keeps the samples independent) and fall back to eager mode, once and for good, if compilation fails.
    """

    def __init__(self, module: nn.Module, plan: Plan) -> None:
        self.plan = plan
        self.module = module.to(memory_format=torch.channels_last) if plan.channels_last else module
        self.compiled: Optional[Callable] = None
        self.notes = list(plan.notes)
        if plan.compile:
            self.compiled = torch.compile(self.module, options={"freezing": True} if plan.device == "cpu" else None)

    @property
    def backend(self) -> str:
        return describe_backend(self.compiled is not None, self.plan.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        count = len(x)
        if self.compiled is not None and count < self.plan.batch_size:
            x = torch.cat([x, x[-1:].expand(self.plan.batch_size - count, *x.shape[1:])])
        x = to_layout(x, self.plan)
        with autocast(self.plan):
            if self.compiled is not None:
                try:
                    return self.compiled(x)[:count].float().contiguous()
                except Exception as error:
                    note = f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:160]}); " \
                           "running eagerly"
                    log.warning(note)
                    self.notes.append(note)
                    self.compiled = None
            return self.module(x)[:count].float().contiguous()


def prepare(module: nn.Module, plan: Plan) -> Runner:
    """An inference runner for ``module`` (put in eval mode) under ``plan``."""
    return Runner(module.eval(), plan)


# ------------------------------------------------------------------------------------------- command line

def summary(device: str = "auto") -> dict:
    """The JSON object of the command-line contract (see the module docstring)."""
    devices = available_devices()
    wanted = devices if device == "auto" else [str(pick_device(device))]
    auto = {}
    for name in wanted:
        plan = resolve_plan(name, "auto")
        auto[name] = {"precision": plan.precision, "backend": plan.backend, "reason": plan.reason,
                      "batch_size": plan.batch_size, "channels_last": plan.channels_last, "compile": plan.compile}
    return {"cpu": cpu_description(), "gpus": gpu_descriptions(), "devices": devices, "precisions": list(PRECISIONS),
            "auto": auto}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MRtoCTSynthesisLib.acceleration",
                                     description="what this machine offers and what precision 'auto' chooses")
    parser.add_argument("--json", action="store_true", help="print the JSON object (the Slicer panel reads it)")
    parser.add_argument("--device", default="auto", help="auto (every device), cpu, cuda:N")
    args = parser.parse_args(argv)
    try:
        info = summary(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        cpu = info["cpu"]
        print(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical, torch {cpu['capability']}, flags "
              f"{' '.join(cpu['flags'])}; C++ compiler {cpu['cpp_compiler'] or 'none'})")
        for gpu in info["gpus"]:
            print(f"GPU {gpu['device']}: {gpu['name']} (compute capability {gpu['capability']})")
        for name, choice in info["auto"].items():
            print(f"auto on {name}: {choice['precision']}, {choice['backend']}, batch {choice['batch_size']}: "
                  f"{choice['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
