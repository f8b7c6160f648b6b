"""The head mask before and after a fix (issue 21), on a real T1 MR.

    python benchmarks/head_mask_figure.py --mr ../shared/data/real/head_t1gd_remind022.nii.gz \
        --before axial-fill --out docs/images/head_mask_fix.png          # holes filled in all three planes
    python benchmarks/head_mask_figure.py --mr ../shared/data/real/head_t1gd_remind022.nii.gz \
        --before otsu --out docs/images/head_mask_threshold.png          # half of Otsu's threshold

Rows: coronal and sagittal cuts through the vault check's centre (2 mm check grid). Columns: the MR with the mask
before the fix (red) and now (green); the default model's sCT masked as synthesis did before (air beyond 5 mm of the
red mask) and as it does now (beyond 5 mm of the green one).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_fill_holes

from MRtoCTSynthesisLib import head_checks as C
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.synthesis import synthesize

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def axial_only_mask(mr: np.ndarray) -> np.ndarray:
    """The head mask as it was: Otsu, largest component, 5 mm closing, holes filled in axial slices only."""
    image = sitk.GetImageFromArray(mr)
    image.SetSpacing((C.GRID_MM,) * 3)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(image, 0, 1, 128)), sortByObjectSize=True)
    closed = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(sitk.Equal(components, 1), [2, 2, 2])) > 0
    return np.stack([binary_fill_holes(s) for s in closed])


def otsu_mask(mr: np.ndarray) -> np.ndarray:
    """The head mask with Otsu's threshold (holes filled in all three planes), before half of it was taken."""
    return C.head_mask(mr, threshold=V.otsu_threshold(sitk.GetImageFromArray(mr)))


BEFORE = {"axial-fill": (axial_only_mask, "Otsu, axial fill"), "otsu": (otsu_mask, "Otsu's threshold")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mr", type=Path, required=True)
    parser.add_argument("--model", default="head-synth")
    parser.add_argument("--before", choices=sorted(BEFORE), default="axial-fill", help="the mask before which fix")
    parser.add_argument("--out", type=Path, default=Path("docs/images/head_mask_fix.png"))
    args = parser.parse_args(argv)
    image = V.read_volume(args.mr)
    mr = C.on_check_grid(image, 0.0)
    sct = C.on_check_grid(synthesize(image, args.model, mask_background=False).sct, -1000.0)
    make_before, what = BEFORE[args.before]
    masks = {f"before ({what})": make_before(mr), "now": C.head_mask(mr)}
    k, j, i = (int(c) for c in C.brain_centre(masks["now"]))
    cuts = {"coronal": lambda a: a[::-1, j, :], "sagittal": lambda a: a[::-1, :, i]}
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    for row, (plane, cut) in zip(axes, cuts.items()):
        row[0].imshow(cut(mr), cmap="gray", vmax=np.percentile(mr, 99.5))
        for (label, mask), colour in zip(masks.items(), ("red", "lime")):
            row[0].contour(cut(mask), [0.5], colors=colour, linewidths=1.0)
        row[0].set_title(f"MR ({plane}), head mask: red before, green now", fontsize=9)
        for ax, (label, mask) in zip(row[1:], masks.items()):
            kept = binary_dilation(mask, iterations=round(5 / C.GRID_MM))
            ax.imshow(cut(np.where(kept, sct, -1000.0)), cmap="gray", vmin=-1000, vmax=1500)
            ax.set_title(f"sCT {label}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{args.mr.name} (real MR, no CT of this patient): the head mask at the vertex, and the "
                 f"{args.model} sCT with air outside the mask + 5 mm", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
