"""The ``mrtoct`` command line: one entry point for every engine job."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import DEFAULT_MODEL, __version__

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str):
    """Register ``run(args) -> exit code`` as a subcommand whose arguments are added by ``add(parser)``."""
    def register(add: Callable[[argparse.ArgumentParser], None]):
        def attach(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help_text, add, run)
            return run
        return attach
    return register


# ------------------------------------------------------------------------------------------------ preview

def _add_preview(p: argparse.ArgumentParser) -> None:
    p.add_argument("volumes", nargs="+", help="volume files or DICOM folders")
    p.add_argument("--modality", choices=["auto", "mr", "ct"], default="auto",
                   help="auto: CT when the volume has values below -500 (HU), else MR")
    p.add_argument("--preset", default="yang2018", help="preset whose normalisation is shown (default yang2018)")
    p.add_argument("--out", required=True, help="PNG to write")


@command("preview", "PNG of the normalised middle slices (what the networks see) of one or more volumes")(_add_preview)
def _preview(args: argparse.Namespace) -> int:
    from .config import preset
    from .dataset import looks_like_ct
    from .figures import orthogonal_panels, save_panel_grid
    from .preprocessing import Normalization, prepare_volume
    from .volumes import array_of, read_volume, slices_to_volume

    norm = Normalization.from_config(preset(args.preset))
    rows = []
    for path in args.volumes:
        image = read_volume(path)
        modality = args.modality if args.modality != "auto" else ("ct" if looks_like_ct(array_of(image)) else "mr")
        prepared = prepare_volume(image, modality, norm)
        array = slices_to_volume(prepared.slices, norm.plane)
        rows.append(orthogonal_panels(array, prepared.canonical.spacing, f"{Path(path).name} ({modality})",
                                      -1.0, 1.0))
    save_panel_grid(rows, args.out, suptitle=f"normalised for preset {args.preset} ([-1, 1] = window)")
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ train

def _add_train(p: argparse.ArgumentParser) -> None:
    from .train import add_train_arguments
    add_train_arguments(p)


@command("train", "train a CycleGAN MR-to-CT model from folders of unpaired MR and CT volumes")(_add_train)
def _train(args: argparse.Namespace) -> int:
    from .train import run_from_args
    return run_from_args(args)


# ------------------------------------------------------------------------------------------------ synthesize

def _add_synthesize(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="MR volume files or DICOM series folders")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"catalog name, local model name or model file (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, help="output folder for <name>_sct.nii.gz files")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: the device's "
                                                                "fastest: 1 on CPUs, 8 on GPUs)")
    p.add_argument("--precision", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                   help="auto: bf16 where the CPU/GPU computes it natively, fp16 on older GPUs, else float32")
    p.add_argument("--oblique", choices=["auto", "resample", "nearest"], default="auto",
                   help="a tilted volume: resample it onto LPS axes, or run the network on its own slices "
                        "(nearest axes); auto: its own slices when they are thick (voxels > 2x longer one way)")
    p.add_argument("--quality-map", action="store_true", help="also write cycle-residual and structure maps")
    p.add_argument("--dicom-out", help="also write each sCT as a DICOM CT series into this folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DICOM series left in --dicom-out by an earlier run (default: refuse before any work)")
    p.add_argument("--series", help="DICOM folder inputs: the series to read (SeriesInstanceUID or SeriesNumber; "
                                    "default: the rule of 'mrtoct series')")
    p.add_argument("--input-is-mr", action="store_true",
                   help="accept inputs that look like a label map or a CT stored without its rescale (refused by "
                        "default: they give a meaningless sCT)")
    p.add_argument("--png", action="store_true", help="also write <name>_sct.png: MR | sCT (| quality maps)")
    p.add_argument("--progress-json", action="store_true",
                   help="print progress and the results as JSON lines on stdout (for the Slicer module)")


@command("synthesize", "synthesize CT (HU) from MR volumes with a trained model")(_add_synthesize)
def _synthesize(args: argparse.Namespace) -> int:
    from .modelfile import model_range_note
    from .progress import BatchProgress
    from .synthesis import synthesize_files

    progress = BatchProgress(args.progress_json)
    results = synthesize_files(args.inputs, args.out, args.model, args.device, args.quality_map, args.dicom_out,
                               progress, batch_size=args.batch_size, precision=args.precision, series=args.series,
                               overwrite=args.overwrite, input_is_mr=args.input_is_mr, oblique=args.oblique)
    progress.close()
    if args.png:
        for r in results:
            if r.error is None:
                r.extra_outputs.append(_save_sct_png(r))
    records = [{"input": str(r.input), "output": r.output and str(r.output), "error": r.error,
                "seconds": round(r.seconds, 2), "extra_outputs": [str(p) for p in r.extra_outputs],
                "device": r.device, "model_name": r.model_name, "precision": r.precision, "backend": r.backend}
               for r in results]
    if args.progress_json:
        print(json.dumps({"result": records}), flush=True)
    else:
        for r in results:
            how = f", {r.precision}, {r.backend}" if r.error is None else ""
            print(f"{'ok    ' if r.error is None else 'FAILED'} {r.input} -> {r.output or r.error} ({r.seconds:.1f} s{how})")
        print(f"{sum(r.error is None for r in results)} of {len(results)} inputs synthesized into {args.out}")
        if note := model_range_note(args.model):  # e.g. hiasa2018's [-150, 350] HU window caps every sCT
            print(note)
    return 0 if all(r.error is None for r in results) else 1


def _save_sct_png(result) -> Path:
    from .figures import CT_WINDOW, Column, save_volume_comparison
    from .volumes import read_volume

    columns = [Column("MR", read_volume(result.input)), Column("sCT (HU)", read_volume(result.output), *CT_WINDOW)]
    columns += [Column(p.name.split("_sct_")[-1].split(".")[0].replace("_", " "), read_volume(p), cmap="magma")
                for p in result.extra_outputs if str(p).endswith(".nii.gz")]
    return save_volume_comparison(columns, result.output.with_name(result.output.name.replace(".nii.gz", ".png")),
                                  suptitle=f"{result.input.name}: synthetic CT")


# ------------------------------------------------------------------------------------------------ series

def _add_series(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder of DICOM files")


@command("series", "list the DICOM series of a folder; '*' marks the one read when --series is not given")(_add_series)
def _series(args: argparse.Namespace) -> int:
    from .dicom_series import RULE, choose_series, list_series, listing
    from .volumes import VolumeError

    found = list_series(args.folder)
    try:
        chosen = choose_series(args.folder) if found else None
    except VolumeError:
        chosen = None
    print(listing(found, chosen) if found else f"{args.folder}: no DICOM image series")
    print(f"'*' = the series read by default ({RULE}); choose another with --series UID|number")
    return 0 if chosen is not None else 1


# ------------------------------------------------------------------------------------------------ evaluate

def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="synthetic CT (HU)")
    p.add_argument("--ref", required=True, help="reference CT (HU) on the same grid")
    p.add_argument("--mask", help="mask volume (nonzero inside); default: the reference CT's body mask")
    p.add_argument("--mr", help="the MR on the same grid, for the mutual information MR-sCT (Hiasa's unpaired measure)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="model (file or name) that made the sCT: its preset's metrics, plane and window")
    which.add_argument("--preset", default="yang2018", help="preset whose paper's metrics to print (default yang2018)")
    p.add_argument("--json", help="also write the metrics to this JSON file")


@command("evaluate", "the metrics of the model's paper (Yang: MAE, PSNR, SSIM, SSIM(HG); Hiasa: MAE, PSNR on "
                     "[0, 255], MI) of an sCT against a CT, on the slices of the model's plane")(_add_evaluate)
def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import METRIC_SETS, metric_set, paper_metrics
    from .volumes import body_mask, read_volume

    if args.model:
        from .modelfile import Catalog, read_metadata
        metadata = read_metadata(Catalog().resolve(args.model))
        preset_name, plane, ct_window = metadata["preset"], metadata["plane"], metadata["ct_window"]
    else:
        from .config import preset
        config = preset(args.preset)
        preset_name, plane, ct_window = args.preset, config.plane, config.ct_window
    pred, ref = read_volume(args.pred), read_volume(args.ref)
    mask = read_volume(args.mask) if args.mask else body_mask(ref, threshold=-500.0)
    volumes = [pred, ref, mask] + ([read_volume(args.mr)] if args.mr else [])
    slices, spacing = _slices_in_plane(volumes, plane)
    metrics = paper_metrics(slices[0], slices[1], slices[2] > 0, preset_name, ct_window, 0, spacing,
                            slices[3] if args.mr else None)
    print(f"{metric_set(preset_name)} metrics ({preset_name}, {plane} slices, CT window "
          f"[{ct_window[0]:g}, {ct_window[1]:g}] HU)")
    width = max(len(k) for k in METRIC_SETS[metric_set(preset_name)])
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:10.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return 0


def _slices_in_plane(images: list, plane: str) -> tuple[list, tuple]:
    """Arrays (N, H, W) of the images' slices along ``plane`` (canonical LPS; all on the first image's grid) and the
    voxel size (mm) per array axis."""
    from .volumes import Geometry, array_of, slice_spacing, to_canonical, volume_to_slices

    grid = Geometry.of(images[0])
    for image in images[1:]:
        if not Geometry.of(image).matches(grid):
            raise ValueError("the sCT, the reference CT, the mask and the MR must share one voxel grid; resample "
                             "them onto the sCT's grid first")
    canonical = [to_canonical(image)[0] for image in images]
    spacing_ijk = canonical[0].GetSpacing()
    through = {"axial": spacing_ijk[2], "coronal": spacing_ijk[1], "sagittal": spacing_ijk[0]}[plane]
    return ([volume_to_slices(array_of(image), plane) for image in canonical],
            (through, *slice_spacing(spacing_ijk, plane)))


# ------------------------------------------------------------------------------------------------ phantom

def _add_phantom(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["head", "pelvis"], default="head")
    p.add_argument("--subjects", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48), help="voxels (x y z)")
    p.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0), help="mm (x y z)")
    p.add_argument("--out", required=True, help="folder for mr/, ct/, labels/")
    p.add_argument("--preview", action="store_true", help="also write a PNG of the first subject")


@command("phantom", "write paired digital phantoms (MR, CT in HU, labels) for training and tests")(_add_phantom)
def _phantom(args: argparse.Namespace) -> int:
    from .phantom import make_phantom, save_preview_png, subject_seeds, write_phantom_dataset

    written = write_phantom_dataset(args.out, args.kind, args.subjects, args.seed, tuple(args.shape),
                                    tuple(args.spacing))
    if args.preview:
        first = make_phantom(args.kind, subject_seeds(args.seed, 1)[0], tuple(args.shape), tuple(args.spacing))
        save_preview_png(first, Path(args.out) / f"{args.kind}_preview.png")
    print(f"wrote {len(written)} {args.kind} phantoms into {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ demo

def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")


@command("demo", "the main job: synthesize CTs from an embedded real head MR and a phantom with the default model")(
    _add_demo)
def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_summary, run_demo

    metrics = run_demo(args.out, args.model, args.device)
    print(demo_summary(metrics, args.out))
    return 0


# ------------------------------------------------------------------------------------------------ bench

HARNESS = {f"{__package__}.{name}" for name in ("bench", "speed_bench", "tables", "quality")}


def _add_bench(p: argparse.ArgumentParser) -> None:
    """The benchmark harness' arguments; where the harness is not installed (the Slicer extension leaves it out), a
    ``bench`` that says so, so every other command still works."""
    try:
        from .bench import add_bench_arguments
        from .quality import add_quality_arguments
        from .quality.recipe import add_recipe_arguments
        from .speed_bench import add_speed_arguments
    except ModuleNotFoundError as error:
        if error.name not in HARNESS:
            raise
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(harness_missing=f"the benchmark harness ({error.name}) is not part of this installation (the "
                                       "Slicer extension leaves it out); run mrtoct bench from a source checkout "
                                       "(pip install -e .)")
        return
    add_bench_arguments(p, more=("speed", "quality", "recipe"))
    add_speed_arguments(p)
    add_quality_arguments(p)
    add_recipe_arguments(p)


@command("bench", "benchmarks: speed (synthesis and training paths side by side); training seconds per iteration; "
                  "synthesis time and peak memory; image quality; training recipes under one time budget")(_add_bench)
def _bench(args: argparse.Namespace) -> int:
    if getattr(args, "harness_missing", None):
        print(args.harness_missing, file=sys.stderr)
        return 2
    if args.what == "quality":
        from .quality import run_quality_from_args
        return run_quality_from_args(args)
    if args.what == "recipe":
        from .quality.recipe import run_recipe_from_args
        return run_recipe_from_args(args)
    if args.what == "speed":
        from .speed_bench import run_speed
        return run_speed(args)
    from .bench import run_bench
    return run_bench(args)


# ------------------------------------------------------------------------------------------------ segmentation
# (the MRtoCTSegmentLib package: Hiasa 2018 sec. 3.2; arguments and runs live in MRtoCTSegmentLib.commands)

def _add_train_seg(p: argparse.ArgumentParser) -> None:
    from MRtoCTSegmentLib.commands import add_train_seg
    add_train_seg(p)


@command("train-seg", "train a 2D U-Net segmentation model on labelled CT (+ its synthetic MR)")(_add_train_seg)
def _train_seg(args: argparse.Namespace) -> int:
    from MRtoCTSegmentLib.commands import run_train_seg
    return run_train_seg(args)


def _add_segment(p: argparse.ArgumentParser) -> None:
    from MRtoCTSegmentLib.commands import add_segment
    add_segment(p)


@command("segment", "segment MR volumes (+ their synthetic CT) with a trained U-Net")(_add_segment)
def _segment(args: argparse.Namespace) -> int:
    from MRtoCTSegmentLib.commands import run_segment
    return run_segment(args)


def _add_evaluate_seg(p: argparse.ArgumentParser) -> None:
    from MRtoCTSegmentLib.commands import add_evaluate_seg
    add_evaluate_seg(p)


@command("evaluate-seg", "Dice and mean surface distance per structure of a label map against a reference")(
    _add_evaluate_seg)
def _evaluate_seg(args: argparse.Namespace) -> int:
    from MRtoCTSegmentLib.commands import run_evaluate_seg
    return run_evaluate_seg(args)


# ------------------------------------------------------------------------------------------------ main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrtoct", description="MR-to-CT synthesis (CycleGAN, Yang 2018 / Hiasa 2018)")
    parser.add_argument("--version", action="version", version=f"mrtoct {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a subcommand. A bad input or setting is one line on stderr (exit 2); Ctrl-C or SIGTERM removes what the
    command had not finished writing and prints one line (exit 130 or 143), never a traceback."""
    from .interrupts import exit_code, termination_as_interrupt

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        with termination_as_interrupt():
            return args.run(args)
    except KeyboardInterrupt as interrupt:
        how = "SIGTERM" if exit_code(interrupt) == 143 else "Ctrl-C"
        print(f"mrtoct {args.command}: stopped by {how}; unfinished outputs were removed, finished ones kept",
              file=sys.stderr)
        return exit_code(interrupt)
    except (ValueError, OSError) as error:
        print(f"mrtoct {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
