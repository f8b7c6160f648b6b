"""A fresh hostile battery (issue 20): cases beyond the test suite's, each a real `mrtoct synthesize` run in a child
process, classified by what a user would suffer.

    python benchmarks/hostile_battery.py --out benchmarks/hostile_battery

Classes: "refused clearly" (non-zero exit, a one-line message, nothing written for the input), "ok" (exit 0 and a
valid sCT where an sCT is right), "silently wrong" (exit 0 where the input should have been refused), "traceback"
(a Python traceback or a raw library error on stderr), "data loss" (an earlier result replaced or removed),
"unclear" (refused, but the message does not say what is wrong). ``expect`` says what each case should get.
Writes results.json and results.md (counts by class and every case).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import SimpleITK as sitk

from MRtoCTSynthesisLib.modelfile import save_untrained_model
from MRtoCTSynthesisLib.phantom import make_phantom

RAW_ERRORS = ("Traceback", "std::bad_alloc", "enforce fail", "Segmentation fault", "core dumped")


class Case(NamedTuple):
    name: str
    make: Callable[[Path], Path]       # writes the input, returns its path
    expect: str                        # "ok" or "refuse"
    clue: str = ""                     # a word the refusal must contain to be clear


def image(array, spacing=(2.0, 2.0, 2.0), direction=None, origin=(0.0, 0.0, 0.0)):
    result = sitk.GetImageFromArray(np.ascontiguousarray(array))
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    if direction is not None:
        result.SetDirection(direction)
    return result


PHANTOM = make_phantom("head", 5, (40, 48, 40), (5.0, 5.0, 5.0))
MR, CT, LABELS = (sitk.GetArrayFromImage(i) for i in (PHANTOM.mr, PHANTOM.ct, PHANTOM.labels))


def writes(name: str, array_or_image, **kwargs) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        item = array_or_image() if callable(array_or_image) else array_or_image
        picture = item if isinstance(item, sitk.Image) else image(item, **kwargs)
        path = folder / name
        sitk.WriteImage(picture, str(path))
        return path
    return make


def raw_bytes(name: str, payload: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(payload)
        return folder / name
    return make


def truncated(name: str, keep: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        sitk.WriteImage(image(MR), str(path))
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
        return path
    return make


def dicom_series(damage: Callable[[list], None] = lambda files: None) -> Callable[[Path], Path]:
    """The phantom MR written as a DICOM series (int16), then ``damage(files)``; returns the folder."""
    def make(folder: Path) -> Path:
        from MRtoCTSynthesisLib.dicom_export import write_ct_series

        files = sorted(write_ct_series(image(MR.astype(np.float32)), folder / "series"))
        damage(files)
        return folder / "series"
    return make


def cut_file(index: int, keep_bytes: int) -> Callable[[list], None]:
    return lambda files: files[index].write_bytes(files[index].read_bytes()[:keep_bytes])


ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
CASES = [
    Case("phantom MR float32 .nii.gz", writes("mr.nii.gz", MR), "ok"),
    Case("phantom MR as uint8 (rescaled)", writes("mr.nii.gz", (MR / MR.max() * 255).astype(np.uint8)), "ok"),
    Case("phantom MR as int16 .nrrd", writes("mr.nrrd", MR.astype(np.int16)), "ok"),
    Case("phantom MR as float64 .mha", writes("mr.mha", MR.astype(np.float64)), "ok"),
    Case("phantom MR, rotated direction", writes("mr.nii.gz", MR, direction=ROT), "ok"),
    Case("phantom MR, origin 1e6 mm away", writes("mr.nii.gz", MR, origin=(1e6, -1e6, 1e6)), "ok"),
    Case("phantom MR, anisotropic 0.5 x 0.5 x 6 mm", writes("mr.nii.gz", MR, spacing=(0.5, 0.5, 6.0)), "ok"),
    Case("phantom MR times 1e6", writes("mr.nii.gz", MR * 1e6), "ok"),
    Case("phantom MR times 1e-6", writes("mr.nii.gz", MR * 1e-6), "ok"),
    Case("phantom MR plus 5000 offset", writes("mr.nii.gz", MR + 5000), "ok"),
    Case("a 4-slice slab", writes("mr.nii.gz", MR[18:22]), "ok"),
    Case("constant volume", writes("mr.nii.gz", np.full(MR.shape, 300, np.float32)), "refuse", "constant"),
    Case("all zeros", writes("mr.nii.gz", np.zeros(MR.shape, np.float32)), "refuse", "constant"),
    Case("one bright voxel in zeros", writes("mr.nii.gz", np.pad(np.ones((1, 1, 1), np.float32),
                                                                  ((20, 19), (24, 23), (20, 19)))), "refuse", ""),
    Case("CT in HU", writes("ct.nii.gz", CT), "refuse", "CT"),
    Case("CT + 1024 (no rescale), int16", writes("ct.nii.gz", np.rint(CT + 1024).astype(np.int16)), "refuse",
         "rescale"),
    Case("CT + 1024, uint16", writes("ct.nii.gz", np.rint(CT + 1024).astype(np.uint16)), "refuse", "rescale"),
    Case("CT + 1000 (another offset)", writes("ct.nii.gz", np.rint(CT + 1000).astype(np.int16)), "refuse",
         "rescale"),
    Case("CT + 32768 (unsigned storage)", writes("ct.nii.gz", np.rint(CT + 32768).astype(np.uint16)), "refuse",
         "rescale"),
    Case("label map, uint8", writes("labels.nii.gz", LABELS), "refuse", "label"),
    Case("label map as float32", writes("labels.nii.gz", LABELS.astype(np.float32)), "refuse", "label"),
    Case("binary mask 0/255", writes("mask.nii.gz", (LABELS > 0).astype(np.uint8) * 255), "refuse", "mask"),
    Case("label map renumbered (values up to 39)", writes("labels.nii.gz", (LABELS.astype(np.int32) * 37) % 40),
         "refuse", "label"),
    Case("probability map in [0, 1]", writes("prob.nii.gz", (MR / MR.max()).astype(np.float32)), "ok"),
    Case("NaN in one voxel", writes("mr.nii.gz", np.where(np.arange(MR.size).reshape(MR.shape) == 7, np.nan, MR)
                                    .astype(np.float32)), "refuse", "NaN"),
    Case("negative MR values (-50 .. )", writes("mr.nii.gz", MR - 50), "ok"),
    Case("2D image", writes("mr.nii.gz", lambda: sitk.GetImageFromArray(MR[20])), "refuse", "2D"),
    Case("4D volume", writes("mr.nii.gz", lambda: sitk.JoinSeries([image(MR), image(MR)])), "refuse", "4D"),
    Case("RGB volume", writes("mr.nrrd", lambda: sitk.Compose(image(MR), image(MR), image(MR))), "refuse",
         "components"),
    Case("voxels 0.005 mm", writes("mr.nii.gz", MR, spacing=(0.005,) * 3), "refuse", "voxel size"),
    Case("voxels 80 mm", writes("mr.nii.gz", MR, spacing=(80.0,) * 3), "refuse", "voxel size"),
    Case("text file named .nii.gz", raw_bytes("mr.nii.gz", b"this is not a volume\n" * 50), "refuse", ""),
    Case("PNG bytes named .nii", raw_bytes("mr.nii", b"\x89PNG\r\n\x1a\n" + b"\0" * 500), "refuse", ""),
    Case("empty .mha", raw_bytes("mr.mha", b""), "refuse", "empty"),
    Case(".nii.gz cut at 30 %", truncated("mr.nii.gz", 0.3), "refuse", "truncated"),
    Case(".nrrd cut at 60 %", truncated("mr.nrrd", 0.6), "refuse", "read"),
    Case(".mha cut at 90 %", truncated("mr.mha", 0.9), "refuse", "truncated"),
    Case("unknown suffix .vol", raw_bytes("mr.vol", b"\0" * 100), "refuse", "supported"),
    Case("unicode file name", writes("Kopf_T1_ü_日本.nii.gz", MR), "ok"),
    Case("name with spaces and quotes", writes("my \"head\" 'T1'.nii.gz", MR), "ok"),
    Case("a folder with no DICOM", lambda folder: (folder / "empty_dir").mkdir() or folder / "empty_dir",
         "refuse", "DICOM"),
    Case("DICOM series of the phantom MR", dicom_series(), "ok"),
    Case("DICOM series with a README.txt beside the slices",
         dicom_series(lambda files: (files[0].parent / "README.txt").write_text("notes\n")), "ok"),
    Case("DICOM series, slice 10 cut to 64 bytes (inside the preamble)", dicom_series(cut_file(10, 64)), "refuse",
         "damaged"),
    Case("DICOM series, slice 10 cut to 400 bytes (inside its header)", dicom_series(cut_file(10, 400)), "refuse",
         "damaged"),
    Case("DICOM series, the last slice cut to 1500 bytes", dicom_series(cut_file(-1, 1500)), "refuse", "damaged"),
    Case("DICOM series, slice 10 cut inside its pixel data", dicom_series(lambda files: files[10].write_bytes(
        files[10].read_bytes()[:-500])), "refuse", "truncated"),
]


def run_case(case: Case, root: Path, model: Path, cli: list) -> dict:
    folder = root / f"case{CASES.index(case):02d}"
    folder.mkdir(parents=True)
    source = case.make(folder)
    out = folder / "out"
    began = time.time()
    done = subprocess.run([*cli, "synthesize", str(source), "--model", str(model), "--out", str(out), "--device",
                           "cpu"], capture_output=True, text=True, timeout=600)
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    stderr = done.stderr + done.stdout
    if any(marker in stderr for marker in RAW_ERRORS):
        outcome = "traceback"
    elif done.returncode == 0:
        outcome = "ok" if case.expect == "ok" else "silently wrong"
    elif case.expect == "ok":
        outcome = "refused an MR"
    elif written:
        outcome = "partial output"
    else:
        outcome = "refused clearly" if case.clue.lower() in stderr.lower() else "unclear"
    message = next((line for line in stderr.splitlines() if line.startswith("FAILED") or "error:" in line), "")
    return {"case": case.name, "expect": case.expect, "exit": done.returncode, "outcome": outcome,
            "written": written, "message": message.replace(str(folder), "<case>")[:300],
            "seconds": round(time.time() - began, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/hostile_battery"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/mrtoct-hostile"))
    args = parser.parse_args(argv)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model = save_untrained_model(args.work / "tiny.mrtoct.safetensors", "tiny", 4, 1, "axial", (32, 32), (5.0, 5.0))
    cli = [sys.executable, "-m", "MRtoCTSynthesisLib.cli"]
    rows = []
    for case in CASES:
        rows.append(run_case(case, args.work, model, cli))
        print(f"{rows[-1]['outcome']:<16} {case.name}", flush=True)
    counts = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"counts": counts, "cases": rows}, indent=1) + "\n",
                                           encoding="utf-8")
    lines = ["# Hostile battery (issue 20)", "", f"`python benchmarks/hostile_battery.py`: {len(rows)} cases, each a "
             "real `mrtoct synthesize` run (tiny untrained model; what is judged is the handling, not the sCT).", "",
             "| outcome | cases |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(counts.items())], "",
             "| case | expected | exit | outcome | message |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['expect']} | {r['exit']} | {r['outcome']} | {r['message'].replace('|', '/')} |"
              for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
