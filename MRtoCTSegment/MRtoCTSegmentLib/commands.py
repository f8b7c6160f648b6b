"""The segmentation subcommands of ``mrtoct`` (registered in MRtoCTSynthesisLib.cli): arguments and runs.

    mrtoct train-seg --ct DIR --labels DIR --synthesis-model M --out RUN [--channels mr+sct|sct|mr] [...]
    mrtoct segment MR [MR ...] --model S [--synthesis-model M] [--sct SCT ...] --out DIR
    mrtoct evaluate-seg --pred LABELS --ref LABELS [--labels TABLE] [--ref-names labels.json] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


# ------------------------------------------------------------------------------------------- train-seg

def add_train_seg(p: argparse.ArgumentParser) -> None:
    from .train import add_train_arguments
    add_train_arguments(p)


def run_train_seg(args: argparse.Namespace) -> int:
    from .train import run_from_args
    return run_from_args(args)


# ------------------------------------------------------------------------------------------- segment

def add_segment(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="MR volume files or DICOM series folders")
    p.add_argument("--model", required=True, help="segmentation model file (*.mrtoct-seg.safetensors)")
    p.add_argument("--synthesis-model", help="synthesis model (file, catalog or local name) whose G_CT makes the sCT "
                                             "channel (default: the one recorded in the segmentation model)")
    p.add_argument("--sct", nargs="+", help="existing sCT volumes, one per MR, instead of synthesizing them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--probabilities", action="store_true", help="also write a probability map per structure")
    p.add_argument("--no-masks", action="store_true", help="do not write one binary mask per structure")
    p.add_argument("--save-sct", action="store_true", help="also write the sCT used as <name>_sct.nii.gz")
    p.add_argument("--progress-json", action="store_true", help="progress and results as JSON lines on stdout")


def run_segment(args: argparse.Namespace) -> int:
    import torch
    from MRtoCTSynthesisLib.progress import BatchProgress

    from .segment import segment_files

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = BatchProgress(args.progress_json)
    results = segment_files(args.inputs, args.out, args.model, args.synthesis_model, args.sct, args.device,
                            args.batch_size, args.probabilities, not args.no_masks, args.save_sct, progress)
    progress.close()
    records = [{"input": str(r.input), "outputs": [str(p) for p in r.outputs], "error": r.error,
                "seconds": round(r.seconds, 2)} for r in results]
    if args.progress_json:
        print(json.dumps({"result": records}), flush=True)
    else:
        for r in results:
            first = r.outputs[0] if r.outputs else r.error
            print(f"{'ok    ' if r.error is None else 'FAILED'} {r.input} -> {first} ({r.seconds:.1f} s)")
        print(f"{sum(r.error is None for r in results)} of {len(results)} inputs segmented into {args.out}")
    return 0 if all(r.error is None for r in results) else 1


# ------------------------------------------------------------------------------------------- evaluate-seg

def add_evaluate_seg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted label map")
    p.add_argument("--ref", required=True, help="reference label map on the same grid")
    p.add_argument("--labels", help="label table (head, pelvis or a JSON file) naming the structures; default: "
                                    "the values found, unnamed")
    p.add_argument("--ref-names", help="JSON of the reference's values -> source label names (e.g. a phantom's "
                                       "labels.json), mapped through the table's source_mapping first")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--csv", help="also write the results to this CSV file")


def run_evaluate_seg(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from MRtoCTSynthesisLib.volumes import Geometry, read_volume

    from .evaluation import evaluate_labels
    from .labels import load_label_table, read_source_names

    pred, ref = read_volume(args.pred), read_volume(args.ref)
    if pred.GetSize() != ref.GetSize() or not Geometry.of(pred).matches(Geometry.of(ref), tol=1e-4):
        raise ValueError(f"{args.pred} and {args.ref} are not on the same grid (size {pred.GetSize()} vs "
                         f"{ref.GetSize()}); resample the prediction onto the reference first")
    table = load_label_table(args.labels) if args.labels else None
    if args.ref_names:
        if table is None:
            raise ValueError("--ref-names needs --labels (the table whose source_mapping maps them)")
        ref = table.map_image(ref, read_source_names(args.ref_names))
    result = evaluate_labels(sitk.GetArrayFromImage(pred).astype("int64"), sitk.GetArrayFromImage(ref).astype("int64"),
                             pred.GetSpacing()[::-1], table)
    finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731
    dices = finite([r["dice"] for r in result.values()])
    msds = finite([r["msd_mm"] for r in result.values()])
    width = max([len(name) for name in result] + [9])
    print(f"{'structure':<{width}}  {'Dice':>7}  {'MSD (mm)':>9}  {'HD95 (mm)':>9}")
    for name, r in result.items():
        print(f"{name:<{width}}  {r['dice']:7.4f}  {r['msd_mm']:9.3f}  {r['hd95_mm']:9.3f}")
    if dices:
        print(f"{'mean':<{width}}  {sum(dices) / len(dices):7.4f}  "
              f"{(sum(msds) / len(msds)) if msds else float('nan'):9.3f}")
    if args.json:
        clean = {n: {k: (v if math.isfinite(v) else None) for k, v in r.items()} for n, r in result.items()}
        Path(args.json).write_text(json.dumps(clean, indent=2), encoding="utf-8")
    if args.csv:
        lines = ["structure,dice,msd_mm,hd95_mm"] + [f"{n},{r['dice']},{r['msd_mm']},{r['hd95_mm']}"
                                                     for n, r in result.items()]
        Path(args.csv).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0
