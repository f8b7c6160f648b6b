"""GC(MR, CT) of true MR/CT pairs of the head phantoms, signed (Hiasa eq. 4 read literally) and absolute (the
authors' code), on the slices the networks see under a preset (its N4, MR scaling, windows and plane).

A true pair is what the gradient-consistency loss should rate highly: the signed form goes negative on T1/CT pairs
(bone is dark in T1 and bright in CT), the absolute form does not. For scale, the last column pairs each MR with
the next subject's CT (same slice index, unrelated anatomy at the edges).

    python scripts/gc_of_phantom_pairs.py [--subjects 5] [--preset hiasa2018 yang2018]
"""
from __future__ import annotations

import argparse
import platform

import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.losses import GRADIENT_OPERATORS, gradient_correlation
from MRtoCTSynthesisLib.phantom import make_phantom, subject_seeds
from MRtoCTSynthesisLib.preprocessing import Normalization, prepare_volume
from MRtoCTSynthesisLib.volumes import volume_to_slices

BODY_FRACTION = 0.1  # slices with body (a nonzero phantom label) in at least this share of pixels


def pair_slices(norm: Normalization, seed: int, shape: tuple, spacing: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) MR and CT slices of one phantom in [-1, 1], slices with too little body left out."""
    phantom = make_phantom("head", seed, shape, spacing)
    mr = prepare_volume(phantom.mr, "mr", norm).slices
    ct = prepare_volume(phantom.ct, "ct", norm).slices
    body = volume_to_slices(sitk.GetArrayFromImage(phantom.labels), norm.plane) > 0  # phantoms are LPS-aligned
    keep = body.mean(axis=(1, 2)) >= BODY_FRACTION
    return torch.from_numpy(mr[keep, None].copy()).double(), torch.from_numpy(ct[keep, None].copy()).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0))
    parser.add_argument("--preset", nargs="+", default=["hiasa2018", "yang2018"])
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}; {args.subjects} head phantoms "
          f"(seeds from {args.seed}), {tuple(args.shape)} voxels of {tuple(args.spacing)} mm")
    print("| preset (plane, windows) | operator | signed GC, mean (min, max) over slices | absolute GC (authors) "
          "| absolute GC, MR vs another subject's CT |")
    print("|---|---|---|---|---|")
    for name in args.preset:
        norm = Normalization.from_config(preset(name))
        pairs = [pair_slices(norm, seed, tuple(args.shape), tuple(args.spacing))
                 for seed in subject_seeds(args.seed, args.subjects)]
        mr, ct = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        shared = min(len(p[0]) for p in pairs)  # slices per subject common to all, for the mismatched pairs
        mr_other = torch.cat([p[0][:shared] for p in pairs])
        ct_other = torch.cat([p[1][:shared] for p in pairs[1:] + pairs[:1]])
        for operator in GRADIENT_OPERATORS:
            signed, absolute = (gradient_correlation(mr, ct, operator, form).numpy() for form in (False, True))
            unrelated = gradient_correlation(mr_other, ct_other, operator).numpy()
            cells = [f"{v.mean():+.3f} ({v.min():+.3f}, {v.max():+.3f})" for v in (signed, absolute, unrelated)]
            print(f"| {name} ({norm.plane}, CT {list(norm.ct_window)} HU, MR {list(norm.mr_window)}; "
                  f"{len(mr)} slices) | {operator} | {cells[0]} | {cells[1]} | {cells[2]} |")


if __name__ == "__main__":
    main()
