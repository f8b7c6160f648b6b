"""PNG figures (matplotlib, Agg): grids of 2D slices with titles, windows and colour maps."""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CT_WINDOW = (-1000.0, 2000.0)


@dataclass
class Panel:
    """One image of a figure: a 2D array, its title, display range, colour map and pixel aspect (row/col spacing)."""

    image: np.ndarray
    title: str = ""
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    cmap: str = "gray"
    aspect: float = 1.0
    colorbar: bool = False
    lines: Sequence[tuple] = ()      # (xs, ys, colour) drawn over the image, in pixel coordinates


def save_panel_grid(rows: Sequence[Sequence[Panel]], path: os.PathLike, suptitle: str = "",
                    panel_inches: float = 2.6, dpi: int = 90) -> Path:
    """Save a grid of panels (rows of equal length or shorter) as a PNG; returns the path."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_inches * n_cols, panel_inches * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r][c]
            shown = ax.imshow(panel.image, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax, aspect=panel.aspect,
                              interpolation="nearest")
            for xs, ys, colour in panel.lines:
                ax.plot(xs, ys, color=colour, linewidth=0.8)
            ax.set_title(panel.title, fontsize=8)
            if panel.colorbar:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    top = 1.0
    if suptitle:   # wrapped to the figure's width (about 13 characters of 10 pt text per inch), room kept above
        lines = [part for line in suptitle.splitlines() for part in textwrap.wrap(line, int(13 * panel_inches * n_cols))]
        fig.suptitle("\n".join(lines), fontsize=10)
        top = 1.0 - (0.18 * len(lines) + 0.1) / (panel_inches * n_rows)
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def orthogonal_panels(array_kji: np.ndarray, spacing_ijk: Sequence[float], title: str = "",
                      vmin: Optional[float] = None, vmax: Optional[float] = None, cmap: str = "gray") -> list[Panel]:
    """Middle sagittal, coronal and axial slices of a canonical (LPS, K-J-I) array, with true pixel aspect."""
    from .volumes import slice_spacing, volume_to_slices

    panels = []
    for plane in ("sagittal", "coronal", "axial"):
        slices = volume_to_slices(array_kji, plane)
        rows, cols = slice_spacing(spacing_ijk, plane)
        panels.append(Panel(slices[slices.shape[0] // 2], f"{title} {plane}".strip(), vmin, vmax, cmap, rows / cols))
    return panels


def save_loss_curves(rows: Sequence[dict], path: os.PathLike, title: str = "training losses") -> Path:
    """Plot every loss column of ``rows`` (dicts with 'iteration' and loss values) against the iteration."""
    path = Path(path)
    names = [k for k in rows[0] if k not in ("iteration", "lr", "seconds")] if rows else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    iterations = [int(r["iteration"]) for r in rows]
    for name in names:
        target = axes[0] if name.startswith("D_") or name.startswith("G_gan") else axes[1]
        target.plot(iterations, [float(r[name] or "nan") for r in rows], label=name, linewidth=1)  # "": not logged
    for ax, label in zip(axes, ("adversarial (LSGAN)", "cycle, structure, gradient, total")):
        ax.set_xlabel("iteration")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclass
class Column:
    """One volume of a comparison figure and how to display it."""

    title: str
    image: "object"  # SimpleITK.Image
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    cmap: str = "gray"


def save_volume_comparison(columns: Sequence[Column], path: os.PathLike, suptitle: str = "") -> Path:
    """Middle sagittal, coronal and axial slices (rows) of several volumes on one grid (columns), any orientation.

    Volumes are shown in LPS voxel order (permuted/flipped only, never resampled); a column without a display range
    uses the 0.5-99.5th percentiles of its volume.
    """
    from .volumes import array_of, to_canonical

    per_column = []
    for column in columns:
        canonical, _ = to_canonical(column.image, oblique="nearest")
        array = array_of(canonical)
        low, high = (column.vmin, column.vmax) if column.vmin is not None else np.percentile(array, [0.5, 99.5])
        per_column.append(orthogonal_panels(array, canonical.GetSpacing(), column.title, low, high, column.cmap))
    rows = [list(plane) for plane in zip(*per_column)]
    return save_panel_grid(rows, path, suptitle=suptitle)
