"""The benchmark's figures: Yang Fig. 4 style box plots and Fig. 5 style representative slices.

(The engine's own ``MRtoCTSynthesisLib.figures``, imported here as ``..figures``, provides the panels and the
plotting backend.)"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .formatting import _fmt, _mark
from .settings import BASELINE, METRICS, Setting
from .statistics import subject_means


VARIANT_COLORS = {"cyclegan": "#9e9e9e", "cyclegan-pbs": "#80b1d3", "paired": "#b3de69", "yang2018": "#fb8072",
                  "hiasa2018": "#bebada", "cyclegan-cycle3": "#d9d9d9", "supervised": "#fdb462"}


def box_plots(rows: list[dict], anatomy: str, variants: Sequence[str], tests: list[dict], path: Path,
              subtitle: str) -> Path:
    """Yang Fig. 4 style: a panel per metric, a box per variant, mean as a blue diamond with its value, * / + marks."""
    from .. import figures  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    n = len(METRICS)
    cols = 3
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.3 * cols, 4.3 * math.ceil(n / cols) + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    p_of = {(t["variant"], t["metric"]): t["p"] for t in tests if t["reference"] == BASELINE}
    for ax, (metric, label, sign, decimals) in zip(axes.flat, METRICS):
        data = [subject_means(rows, anatomy, v, metric) for v in variants]
        data = [d[np.isfinite(d)] for d in data]
        positions = np.arange(1, len(variants) + 1)
        shown = [d if len(d) else np.array([np.nan]) for d in data]
        boxes = ax.boxplot(shown, positions=positions, widths=0.55, patch_artist=True, showmeans=True,
                           meanprops=dict(marker="D", markerfacecolor="tab:blue", markeredgecolor="tab:blue",
                                          markersize=5), medianprops=dict(color="black"),
                           flierprops=dict(marker="o", markersize=3))
        for patch, variant in zip(boxes["boxes"], variants):
            patch.set_facecolor(VARIANT_COLORS.get(variant, "white"))
        finite_all = np.concatenate([d for d in data if len(d)]) if any(len(d) for d in data) else np.array([0.0])
        reference = subject_means(rows, anatomy, variants[0], "mi_mr_ct") if metric == "mi_mr_sct" else np.array([])
        reference = float(np.nanmean(reference)) if np.isfinite(reference).any() else None
        if reference is not None:
            finite_all = np.append(finite_all, reference)
        low, high = float(np.min(finite_all)), float(np.max(finite_all))
        span = (high - low) or max(abs(high), 1e-3)
        for x, d, variant in zip(positions, data, variants):
            if not len(d):
                continue
            mean = float(np.mean(d))
            ax.text(x + 0.3, mean, _fmt(mean, decimals), color="tab:blue", fontsize=7, va="center")
            mark = _mark(p_of.get((variant, metric), float("nan")))
            if mark:
                ax.text(x, float(np.max(d)) + 0.04 * span, mark, ha="center", va="bottom", fontsize=12,
                        color="black")
        if reference is not None:
            ax.axhline(reference, color="tab:green", linestyle="--", linewidth=1)
            ax.text(0.55, reference, "MI(MR, CT), ground truth", color="tab:green", fontsize=7, va="bottom")
        ax.set_ylim(low - 0.08 * span, high + 0.18 * span)
        ax.set_xticks(positions)
        ax.set_xticklabels(variants, rotation=25, fontsize=8, ha="right")
        ax.set_xlim(0.4, len(variants) + 0.9)
        ax.set_title(f"{label} ({'lower' if sign < 0 else 'higher'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{subtitle}\nblue diamond and number: mean; * p < 0.001, + p < 0.05 vs {BASELINE} "
                 "(paired t-test over test subjects)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mid_slice(array: np.ndarray, spacing_xyz: Sequence[float], plane: str) -> tuple[np.ndarray, float]:
    """The middle slice of a canonical (K, J, I) array in ``plane`` (display orientation) and its pixel aspect."""
    from .. import volumes as V

    slices = V.volume_to_slices(array, plane)
    rows, cols = V.slice_spacing(spacing_xyz, plane)
    return np.asarray(slices[slices.shape[0] // 2]), rows / cols


def representative_figure(phantom, scts: dict, metrics: dict, setting: Setting, path: Path, subject: int) -> Path:
    """Yang Fig. 5 style: ground-truth CT over MR, then each variant's sCT over its difference image (sCT - CT)."""
    from .. import volumes as V
    from ..figures import CT_WINDOW, Panel, save_panel_grid

    spacing = phantom.ct.GetSpacing()
    ct, aspect = mid_slice(V.array_of(phantom.ct), spacing, setting.plane)
    mr, _ = mid_slice(V.array_of(phantom.mr), spacing, setting.plane)
    top = [Panel(ct, "(a) ground-truth CT", *CT_WINDOW, aspect=aspect)]
    bottom = [Panel(mr, "(a) input MR", 0, float(np.percentile(mr, 99.5)), aspect=aspect)]
    for index, (variant, sct) in enumerate(scts.items()):
        image, _ = mid_slice(sct, spacing, setting.plane)
        m = metrics[variant]
        text = (f"({chr(98 + index)}) {variant}\nMAE {m['mae']:.0f} HU  PSNR {m['psnr']:.1f} dB\n"
                f"SSIM {m['ssim']:.3f}  SSIM(HG) {m['ssim_hg']:.3f}")
        top.append(Panel(image, text, *CT_WINDOW, aspect=aspect))
        bottom.append(Panel(image - ct, f"{variant}: sCT - CT (HU)", -1000, 1000, cmap="seismic", aspect=aspect,
                            colorbar=index == len(scts) - 1))
    return save_panel_grid([top, bottom], path, panel_inches=2.7,
                           suptitle=f"{setting.anatomy} test subject {subject} (the first, not selected), middle "
                                    f"{setting.plane} slice\nCT window [{CT_WINDOW[0]:.0f}, {CT_WINDOW[1]:.0f}] HU; "
                                    "metrics of the whole subject")


def validation_figure(run_dirs: Sequence[Path], path: Path, title: str) -> Path:
    """The validation curve of every run (``convergence.validation_curve``), one panel per validation metric; the
    last fifth of training, over which convergence is judged, is shaded."""
    from .. import figures  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    from .convergence import LAST_SHARE, validation_curve

    curves = {}
    for run in run_dirs:
        metric, its, values = validation_curve(run)
        if len(its):
            curves.setdefault(metric, []).append((Path(run).name, its, values))
    labels = {"mae_body_hu": "validation MAE (HU, inside the body)", "mae_hu": "validation MAE (HU, whole canvas)", "cycle_l1_mr": "validation cycle L1 of the MR"}
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(6 * max(1, len(curves)), 4), squeeze=False,
                             layout="constrained")
    for ax, (metric, runs) in zip(axes.flat, curves.items()):
        for name, its, values in runs:
            ax.plot(its, values, marker="o", markersize=2, label=name,
                    color=VARIANT_COLORS.get(name.rsplit("-seed", 1)[0]))
        end = max(float(its[-1]) for _, its, _ in runs)
        ax.axvspan(end * (1 - LAST_SHARE), end, color="0.9", zorder=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not curves:
        axes.flat[0].text(0.5, 0.5, "no validation events", ha="center", va="center")
    fig.suptitle(f"{title} (shaded: the last fifth, where a converged run is flat)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
