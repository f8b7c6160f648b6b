"""The real head MR scans (read only): which are there, and each head model applied to them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .plots import mid_slice
from .settings import BONE_HU, SATURATED_HU, Options


def real_scan_paths(options: Options) -> tuple[list[Path], str]:
    folder = options.real_data
    if folder is None:
        return [], "real scans skipped (--real-data none)"
    folder = Path(folder)
    if not folder.is_dir():
        return [], f"real scans skipped: folder {folder} not found"
    found = [folder / name for name in options.real_scans if (folder / name).exists()]
    missing = [name for name in options.real_scans if not (folder / name).exists()]
    message = f"real scans: {len(found)} found in {folder}" + (f"; missing: {', '.join(missing)}" if missing else "")
    return found, message


def apply_to_real(options: Options, models: dict, scans: list[Path]) -> tuple[list[dict], Optional[Path]]:
    """Synthesize each real head MR with each head model (first seed); MI(MR, sCT) in the MR body mask; a figure."""
    from .. import volumes as V
    from ..figures import CT_WINDOW, Panel, save_panel_grid
    from ..metrics import mutual_information
    from ..modelfile import load_model
    from ..synthesis import synthesize

    if not scans or not models:
        return [], None
    out = options.out / "real"
    rows, figure_rows = [], []
    for scan in scans:
        image = V.read_volume(scan)
        canonical = V.to_canonical(image)[0]
        canonical_mr, spacing = V.array_of(canonical), canonical.GetSpacing()
        mask = V.array_of(V.body_mask(image)) > 0
        mr = V.array_of(image)
        top = float(np.percentile(canonical_mr, 99.5))
        panels = {}
        for plane in ("axial", "sagittal"):
            image_2d, aspect = mid_slice(canonical_mr, spacing, plane)
            panels[plane] = [Panel(image_2d, f"{scan.name}\nMR ({plane})", 0, top, aspect=aspect)]
        for variant, (seed, model_path) in models.items():
            result = synthesize(image, load_model(model_path), device=options.device, batch_size=16)
            sct = V.array_of(result.sct)
            V.write_volume(result.sct, out / f"{variant}-seed{seed}" / f"{scan.name.split('.')[0]}_sct.nii.gz")
            row = {"scan": scan.name, "variant": variant, "seed": seed,
                   "mi_mr_sct": mutual_information(mr, sct, mask),
                   "saturated_pct": 100.0 * float(np.mean(sct[mask] <= SATURATED_HU)),
                   "bone_pct": 100.0 * float(np.mean(sct[mask] >= BONE_HU)),
                   "sct_mean_hu": float(np.mean(sct[mask]))}
            rows.append(row)
            canonical_sct = V.array_of(V.to_canonical(result.sct, default_value=-1000.0)[0])
            for plane in panels:
                image_2d, aspect = mid_slice(canonical_sct, spacing, plane)
                panels[plane].append(Panel(image_2d, f"{variant}\nMI {row['mi_mr_sct']:.3f}", *CT_WINDOW,
                                           aspect=aspect))
        figure_rows.extend(panels.values())
    path = save_panel_grid(figure_rows, options.out / "figures" / "real_scans_head.png", panel_inches=2.6,
                           suptitle="real head MR scans (no ground-truth CT): middle slices of each variant's sCT\n"
                                    "MI(MR, sCT) in the MR body mask; CT window [-1000, 2000] HU")
    return rows, path
