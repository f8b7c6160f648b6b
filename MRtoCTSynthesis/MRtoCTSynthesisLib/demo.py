"""The main job of the README: synthesize a CT from an embedded phantom MR with the embedded demo model.

Writes mr.nii.gz, ct_reference.nii.gz, sct.nii.gz, demo.png (MR | sCT | reference CT | |error|) and metrics.json.
The phantom subject is generated on the fly with a seed that the demo model never saw in training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import volumes as V
from .figures import CT_WINDOW, Column, save_volume_comparison
from .metrics import evaluate, mutual_information
from .phantom import make_phantom
from .synthesis import synthesize

DEMO_MODEL = "phantom-head-demo"
DEMO_SEED = 90_001          # training used seeds derived from 0 (see docs/DEMO_MODEL.md); this subject is unseen
DEMO_SHAPE = (64, 64, 48)
DEMO_SPACING = (3.0, 3.0, 3.0)


def run_demo(out_dir: os.PathLike, model: str = DEMO_MODEL, device: str = "auto") -> dict:
    """Run the demo; returns the metrics (also written to metrics.json)."""
    out = Path(out_dir)
    phantom = make_phantom("head", DEMO_SEED, DEMO_SHAPE, DEMO_SPACING)
    result = synthesize(phantom.mr, model, device=device,
                        progress=lambda f, m: print(f"\r{100 * f:5.1f}%  {m:<60}", end="", flush=True))
    print()
    for name, image in (("mr", phantom.mr), ("ct_reference", phantom.ct), ("sct", result.sct)):
        V.write_volume(image, out / f"{name}.nii.gz")
    mr, ct, sct = (V.array_of(i) for i in (phantom.mr, phantom.ct, result.sct))
    mask = V.array_of(V.body_mask(phantom.ct, threshold=-500.0)) > 0
    metrics = {**evaluate(sct, ct, mask, 4500.0, spacing=phantom.ct.GetSpacing()[::-1]),
               "mi_mr_sct": mutual_information(mr, sct, mask), "mi_mr_ct": mutual_information(mr, ct, mask),
               "model": result.model_name, "device": result.device, "seconds": round(result.seconds, 2)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    error = V.image_like(np.abs(sct - ct), phantom.ct)
    save_volume_comparison([Column("MR", phantom.mr), Column("sCT", result.sct, *CT_WINDOW),
                            Column("reference CT", phantom.ct, *CT_WINDOW),
                            Column("|sCT - CT| (HU)", error, 0, 500, "magma")], out / "demo.png",
                           suptitle=f"demo: {result.model_name} on an unseen phantom - MAE {metrics['mae']:.0f} HU, "
                             f"SSIM {metrics['ssim']:.3f} (demonstration model, not for clinical use)")
    return metrics
