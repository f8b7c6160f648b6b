"""SIGTERM at every phase of a run (issue 20): start `mrtoct synthesize` (sCT, quality map, DICOM series, PNG) on a
real MR, send SIGTERM after a sweep of delays, and record for each: the exit code, the seconds from the signal to the
exit, the last progress message (the phase it was in) and what was left in the output folders.

Pass: every run ends within a second or two of the signal, with 143 (or 0 if it had already finished, or -15 while
the interpreter was still starting, before any output exists), and leaves either nothing or a complete sCT set.

    python benchmarks/sigterm_sweep.py --out benchmarks/sigterm [--mr FILE] [--delays 0.5 1 2 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MR = REPO / "MRtoCTSynthesis" / "Resources" / "SampleData" / "head_t1_mprage_2mm.nii.gz"
DEFAULT_DELAYS = (0.3, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 19.0, 20.0, 20.5, 21.0, 21.5, 22.0, 22.5, 23.0, 24.0, 30.0)


def one_run(mr: Path, delay: float, work: Path) -> dict:
    out, dicom = work / f"out_{delay}", work / f"dicom_{delay}"
    command = [sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", str(mr), "--out", str(out),
               "--dicom-out", str(dicom), "--quality-map", "--png", "--progress-json", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate()
    latency = time.time() - sent
    progress = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    phase = next((p.get("message") for p in reversed(progress) if "message" in p), "(before the first progress line)")
    files = sorted(str(p.relative_to(work)) for folder in (out, dicom) if folder.exists() for p in folder.iterdir())
    dicom_slices = [len(list(p.iterdir())) for p in dicom.iterdir()] if dicom.exists() else []
    return {"delay_s": delay, "exit_code": process.returncode, "seconds_to_exit": round(latency, 2),
            "phase": phase, "left": files, "dicom_slices": dicom_slices,
            "message": stderr.strip().splitlines()[-1] if stderr.strip() else ""}


def verdict(row: dict) -> str:
    """ok: exited promptly and left nothing, or a complete set (sCT + map + DICOM, the PNG optional)."""
    prompt = row["seconds_to_exit"] < 3.0
    names = {Path(f).name for f in row["left"]}
    nothing = not row["left"]
    complete = any(n.endswith("_sct.nii.gz") for n in names) and row["dicom_slices"] and min(row["dicom_slices"]) > 0
    return "ok" if prompt and row["exit_code"] in (0, 143, -15) and (nothing or complete) else "FAIL"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mr", type=Path, default=DEFAULT_MR)
    parser.add_argument("--delays", type=float, nargs="+", default=DEFAULT_DELAYS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mrtoct-sigterm-") as temp:
        for delay in args.delays:
            row = one_run(args.mr, delay, Path(temp))
            row["verdict"] = verdict(row)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
               "python": platform.python_version(), "platform": platform.platform()}
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "mr": args.mr.name, "runs": rows},
                                                      indent=1) + "\n", encoding="utf-8")
    lines = ["| SIGTERM after (s) | phase | exit | s to exit | left behind | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        left = ", ".join(Path(f).name for f in r["left"]) or "nothing"
        lines.append(f"| {r['delay_s']:g} | {r['phase']} | {r['exit_code']} | {r['seconds_to_exit']} | {left} | "
                     f"{r['verdict']} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
