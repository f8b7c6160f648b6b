"""The ``mrtoct`` command line: one entry point for every engine job."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__

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
    from .figures import orthogonal_panels, save_panel_grid
    from .preprocessing import Normalization, prepare_volume
    from .volumes import array_of, read_volume, slices_to_volume

    norm = Normalization.from_config(preset(args.preset))
    rows = []
    for path in args.volumes:
        image = read_volume(path)
        modality = args.modality if args.modality != "auto" else ("ct" if array_of(image).min() < -500 else "mr")
        prepared = prepare_volume(image, modality, norm)
        array = slices_to_volume(prepared.slices, norm.plane)
        rows.append(orthogonal_panels(array, prepared.canonical.GetSpacing(), f"{Path(path).name} ({modality})",
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mrtoct {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
