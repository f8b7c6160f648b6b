"""Phantom benchmark of Hiasa et al. 2018 sec. 3.2: train the U-Net on labelled CT (+ G_MR(CT)), test it on MR
(+ G_CT(MR)), for the three channel modes; per-structure Dice and mean surface distance in a table.

    python -m MRtoCTSegmentLib.experiment --out seg_experiment [--synthesis-model M] [--iterations 3000] ...

Data (digital pelvis phantoms, ``MRtoCTSynthesisLib.phantom``; three disjoint sets of subjects):
* ``synthesis``: paired MR/CT to train a small synthesis model when none is given (the ``paired`` preset with a
  supervised L1 term, coronal plane: ``mrtoct train --preset paired --lambda-supervised 10 ...``);
* ``train``: labelled CTs: the segmentation training set (their MRs are never used);
* ``test``: MRs with reference labels (their CTs are used only for the "real CT" reference rows).

Outputs in --out: results.md (Markdown tables), summary.csv (mean Dice per mode and structure), results.csv (every
subject, structure and metric), figure.png (one coronal slice: MR, sCT, reference, each mode's labels), the models.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.phantom import write_phantom_dataset
from MRtoCTSynthesisLib.synthesis import load_bundle

from .evaluation import evaluate_labels
from .labels import load_label_table, read_source_names
from .segment import segment
from .train import SegTrainConfig, build_seg_trainer
from .translate import synthesize_ct

log = logging.getLogger(__name__)
MODES = ("mr+sct", "sct", "mr")
REAL_CT = "real CT (no synthesis error)"
HIASA_STRUCTURES = ("pelvis", "femur", "gluteus_medius", "gluteus_minimus")
HIASA_DICE = {"pelvis": 0.808, "femur": 0.883, "gluteus_medius": 0.804, "gluteus_minimus": 0.669}


def test_input_label(mode: str, real_ct: bool = False) -> str:
    """What the U-Net of ``mode`` is given at test time: its channels, the CT one synthetic unless ``real_ct``."""
    ct = REAL_CT if real_ct else "sCT"
    return {"mr": "MR", "sct": ct, "mr+sct": f"MR + {ct}"}[mode]


def make_data(out: Path, args: argparse.Namespace) -> dict:
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    sets = {"synthesis": (args.synthesis_subjects, args.seed + 1000), "train": (args.train_subjects, args.seed + 2000),
            "test": (args.test_subjects, args.seed + 3000)}
    folders = {}
    for name, (count, seed) in sets.items():
        folder = out / "data" / name
        if name == "synthesis" and args.synthesis_model:
            continue
        if not (folder / "labels.json").exists():
            write_phantom_dataset(folder, "pelvis", count, seed=seed, shape=shape, spacing=spacing)
        folders[name] = folder
    return folders


def train_synthesis(folder: Path, out: Path, args: argparse.Namespace) -> Path:
    """A small paired-preset synthesis model on the pelvis phantoms (coronal); returns the model file."""
    from MRtoCTSynthesisLib.config import preset
    from MRtoCTSynthesisLib.train import MODEL, build_trainer

    run = out / "synthesis_run"
    if (run / MODEL).exists():
        return run / MODEL
    config = preset("paired", lambda_supervised=10.0, plane="coronal", image_size=tuple(args.synthesis_size),
                    augment_pad=tuple(s + 8 for s in args.synthesis_size),
                    pixel_spacing_mm=tuple(args.pixel_spacing), ngf=args.ngf, n_blocks=args.n_blocks, ndf=args.ngf,
                    iterations=args.synthesis_iterations, validation_fraction=0.0, seed=args.seed,
                    checkpoint_every=max(1, args.synthesis_iterations // 4), log_every=25,
                    preview_every=args.synthesis_iterations, validate_every=args.synthesis_iterations)
    trainer = build_trainer(config, folder / "mr", folder / "ct", run, args.device,
                            resume=(run / "checkpoint.pt").exists(), show_progress=not args.no_progress)
    return trainer.run()


def train_segmentation(mode: str, folders: dict, synthesis: Path, out: Path, args: argparse.Namespace) -> Path:
    from .train import MODEL

    run = out / f"seg_{mode.replace('+', '_')}"
    if (run / MODEL).exists():
        return run / MODEL
    config = SegTrainConfig(channels=mode, table="pelvis", plane="coronal", image_size=tuple(args.image_size),
                            augment_pad=tuple(s + 16 for s in args.image_size),
                            pixel_spacing_mm=tuple(args.pixel_spacing), base=args.base, lr=args.lr,
                            iterations=args.iterations, batch_size=args.batch_size, validation_fraction=0.0,
                            seed=args.seed, checkpoint_every=max(1, args.iterations // 4), log_every=25,
                            validate_every=args.iterations, preview_every=args.iterations)
    resume = (run / "checkpoint.pt").exists()
    trainer = build_seg_trainer(config, folders["train"] / "ct", folders["train"] / "labels", synthesis, run,
                                args.device, cache_dir=out / "seg_cache", resume=resume,
                                show_progress=not args.no_progress)
    return trainer.run()


def _mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def run_experiment(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    timings = {}
    began = time.time()
    folders = make_data(out, args)
    timings["data_s"] = time.time() - began
    table = load_label_table("pelvis")
    t = time.time()
    synthesis = Path(args.synthesis_model) if args.synthesis_model else train_synthesis(folders["synthesis"], out, args)
    timings["synthesis_training_s"] = time.time() - t
    bundle = load_bundle(synthesis)
    models = {}
    for mode in args.modes:
        t = time.time()
        models[mode] = train_segmentation(mode, folders, synthesis, out, args)
        timings[f"train_{mode}_s"] = time.time() - t

    names = read_source_names(folders["test"] / "labels.json")
    rows, figure = [], {}
    subjects = sorted(p for p in (folders["test"] / "mr").iterdir() if p.name.endswith(".nii.gz"))
    for subject in subjects:
        stem = subject.name[: -len(".nii.gz")]
        mr = V.read_volume(subject)
        ct = V.read_volume(folders["test"] / "ct" / subject.name)
        reference = table.map_image(V.read_volume(folders["test"] / "labels" / subject.name), names)
        ref_array = sitk.GetArrayFromImage(reference)
        sct = synthesize_ct(mr, bundle, args.device)
        sct_mae = float(np.abs(V.array_of(sct) - V.array_of(ct))[ref_array > 0].mean())
        cases = [(mode, test_input_label(mode), sct) for mode in args.modes]
        if args.real_ct_reference:
            cases += [(mode, test_input_label(mode, real_ct=True), ct) for mode in args.modes if "sct" in mode]
        for mode, test_input, sct_channel in cases:
            result = segment(mr, models[mode], sct=sct_channel, device=args.device)
            scores = evaluate_labels(sitk.GetArrayFromImage(result.labels), ref_array,
                                     reference.GetSpacing()[::-1], table)
            for name, score in scores.items():
                rows.append({"mode": mode, "test_input": test_input, "subject": stem, "structure": name,
                             **{k: round(v, 5) for k, v in score.items()}, "sct_mae_hu": round(sct_mae, 2)})
            if stem == subjects[0].name[: -len(".nii.gz")]:
                figure[(mode, test_input)] = result.labels
        if stem == subjects[0].name[: -len(".nii.gz")]:
            figure["mr"], figure["sct"], figure["ref"] = mr, sct, reference
    timings["total_s"] = time.time() - began
    return write_results(out, rows, table, figure, args, timings, synthesis)


def write_results(out: Path, rows: list, table, figure: dict, args: argparse.Namespace, timings: dict,
                  synthesis: Path) -> dict:
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    groups = sorted({(r["mode"], r["test_input"]) for r in rows}, key=lambda g: (REAL_CT in g[1],
                                                                                  MODES.index(g[0])))
    structures = table.names
    summary = []
    for mode, test_input in groups:
        mine = [r for r in rows if r["mode"] == mode and r["test_input"] == test_input]
        entry = {"mode": mode, "test_input": test_input}
        for name in structures:
            dices = [r["dice"] for r in mine if r["structure"] == name and np.isfinite(r["dice"])]
            entry[name] = round(float(np.mean(dices)), 4) if dices else float("nan")
        entry["mean_all"] = round(float(np.nanmean([entry[n] for n in structures])), 4)
        entry["mean_hiasa4"] = round(float(np.nanmean([entry[n] for n in HIASA_STRUCTURES])), 4)
        msd = [r["msd_mm"] for r in mine if r["structure"] in HIASA_STRUCTURES and np.isfinite(r["msd_mm"])]
        entry["msd_hiasa4_mm"] = round(float(np.mean(msd)), 3) if msd else float("nan")
        summary.append(entry)
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)

    subjects = sorted({r["subject"] for r in rows})
    sct_mae = np.mean([r["sct_mae_hu"] for r in rows if r["structure"] == structures[0] and r["mode"] == groups[0][0]
                       and r["test_input"] == groups[0][1]])
    lines = [f"# Segmentation of phantom MR by a U-Net trained on labelled CT (Hiasa 2018 sec. 3.2)", "",
             f"Command: `{' '.join(['python -m MRtoCTSegmentLib.experiment'] + sys.argv[1:])}`", "",
             f"- test subjects: {len(subjects)} pelvis phantom MRs; training: {args.train_subjects} labelled phantom "
             f"CTs (other subjects); phantom shape {tuple(args.shape)} voxels at {tuple(args.spacing)} mm",
             f"- synthesis model: `{synthesis}`; mean |sCT - CT| inside the body of the test subjects: "
             f"{sct_mae:.0f} HU",
             f"- U-Net: base {args.base}, canvas {tuple(args.image_size)} at {tuple(args.pixel_spacing)} mm, "
             f"{args.iterations} iterations, batch {args.batch_size}, Adam lr {args.lr:g}, Dice + CE; "
             f"{args.threads} CPU thread(s), {platform.processor() or platform.machine()}",
             f"- time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()), "",
             "## Dice, mean ± sd over test subjects (Hiasa's four structures)", "",
             "| channels | test input | " + " | ".join(HIASA_STRUCTURES) + " | mean (4) | MSD (4), mm |",
             "|---|---|" + "---|" * (len(HIASA_STRUCTURES) + 2)]
    for mode, test_input in groups:
        mine = [r for r in rows if r["mode"] == mode and r["test_input"] == test_input]
        cells = [_mean_sd([r["dice"] for r in mine if r["structure"] == n]) for n in HIASA_STRUCTURES]
        entry = next(e for e in summary if e["mode"] == mode and e["test_input"] == test_input)
        lines.append(f"| {mode} | {test_input} | " + " | ".join(cells) +
                     f" | {entry['mean_hiasa4']:.3f} | {entry['msd_hiasa4_mm']:.2f} |")
    lines.append("| Hiasa 2018 (real patients, >300 cases + GC) | MR + sCT | " +
                 " | ".join(f"{HIASA_DICE[n]:.3f}" for n in HIASA_STRUCTURES) + " | | |")
    lines += ["", "## Mean Dice per structure (all structures of the pelvis table)", "",
              "| channels | test input | " + " | ".join(structures) + " | mean |",
              "|---|---|" + "---|" * (len(structures) + 1)]
    for entry in summary:
        lines.append(f"| {entry['mode']} | {entry['test_input']} | " +
                     " | ".join(f"{entry[n]:.3f}" for n in structures) + f" | {entry['mean_all']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "timings.json").write_text(json.dumps(timings, indent=2), encoding="utf-8")
    if figure:
        _figure(out / "figure.png", figure, table)
    print("\n".join(lines))
    return {"summary": summary, "rows": rows, "timings": timings}


def _figure(path: Path, figure: dict, table) -> None:
    from MRtoCTSynthesisLib.figures import Panel, save_panel_grid

    def coronal(image):
        canonical, _ = V.to_canonical(image, interpolator=sitk.sitkNearestNeighbor)
        slices = V.volume_to_slices(sitk.GetArrayFromImage(canonical), "coronal")
        return np.asarray(slices[len(slices) // 2])

    mr, sct = coronal(figure["mr"]), coronal(figure["sct"])
    n = table.n_classes - 1
    row = [Panel(mr, "MR", 0, float(np.percentile(mr, 99.5))), Panel(sct, "sCT", -1000, 2000),
           Panel(coronal(figure["ref"]), "reference", 0, n, "tab20")]
    row += [Panel(coronal(labels), f"{key[0]}{' (real CT)' if REAL_CT in key[1] else ''}", 0, n, "tab20")
            for key, labels in figure.items() if isinstance(key, tuple)]
    save_panel_grid([row], path, suptitle="pelvis phantom, middle coronal slice")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m MRtoCTSegmentLib.experiment", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (data, models, results.md, summary.csv)")
    p.add_argument("--synthesis-model", help="pelvis synthesis model with G_CT and G_MR (default: train one)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--train-subjects", type=int, default=10)
    p.add_argument("--test-subjects", type=int, default=5)
    p.add_argument("--synthesis-subjects", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 48, 48), help="phantom voxels (x y z)")
    p.add_argument("--spacing", type=float, nargs=3, default=(6.5, 6.0, 5.5), help="phantom mm (x y z)")
    p.add_argument("--pixel-spacing", type=float, nargs=2, default=(6.5, 6.5), help="network pixel mm (both nets)")
    p.add_argument("--image-size", type=int, nargs=2, default=(48, 64), help="U-Net canvas (multiples of 16)")
    p.add_argument("--synthesis-size", type=int, nargs=2, default=(48, 64), help="generator canvas (x4)")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--synthesis-iterations", type=int, default=3000)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--n-blocks", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate of the U-Net (Hiasa: 1e-4 for 1e5 iterations; at this budget 1e-4 leaves "
                        "most structures unlearnt, see docs/SEGMENTATION.md)")
    p.add_argument("--no-real-ct-reference", dest="real_ct_reference", action="store_false",
                   help="skip the rows testing on the real CT instead of the sCT")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    run_experiment(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
