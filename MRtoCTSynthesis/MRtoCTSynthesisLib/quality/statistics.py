"""Statistics over test subjects: per-subject means, paired t-tests against the reference, summary rows."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .formatting import _mark
from .settings import BASELINE, EFFECTS, EXTRA_COLUMNS, METRICS


def subject_means(rows: list[dict], anatomy: str, variant: str, metric: str) -> np.ndarray:
    """Per test subject (sorted), the metric averaged over training seeds."""
    picked = [r for r in rows if r["anatomy"] == anatomy and r["variant"] == variant]
    subjects = sorted({r["subject"] for r in picked})
    return np.array([np.nanmean([r[metric] for r in picked if r["subject"] == s]) if picked else np.nan
                     for s in subjects], dtype=float)


def paired_ttest(a: np.ndarray, b: np.ndarray) -> dict:
    """scipy.stats.ttest_rel over subjects present (finite) in both; nan p when undefined (n < 2, no variation)."""
    from scipy.stats import ttest_rel

    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    result = {"n": int(keep.sum()), "mean_variant": float(np.mean(a)) if len(a) else float("nan"),
              "mean_reference": float(np.mean(b)) if len(b) else float("nan"),
              "mean_difference": float(np.mean(a - b)) if len(a) else float("nan"), "t": float("nan"),
              "p": float("nan")}
    if len(a) >= 2 and np.any(a - b != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            test = ttest_rel(a, b)
        result["t"], result["p"] = float(test.statistic), float(test.pvalue)
    return result


def comparisons(variants: Sequence[str]) -> list[tuple[str, str]]:
    """Every variant against cyclegan, each isolated effect against its control (``EFFECTS``), yang2018 vs paired."""
    pairs = [(v, BASELINE) for v in variants if v != BASELINE and BASELINE in variants]
    for variant, control in list(EFFECTS.values()) + [("yang2018", "paired")]:
        if variant in variants and control in variants and (variant, control) not in pairs:
            pairs.append((variant, control))
    return pairs


def ttest_rows(rows: list[dict], anatomy: str, variants: Sequence[str]) -> list[dict]:
    out = []
    for variant, reference in comparisons(variants):
        for metric in [m[0] for m in METRICS]:
            test = paired_ttest(subject_means(rows, anatomy, variant, metric),
                                subject_means(rows, anatomy, reference, metric))
            out.append({"anatomy": anatomy, "variant": variant, "reference": reference, "metric": metric, **test,
                        "mark": _mark(test["p"])})
    return out


def seed_spread(rows: list[dict], anatomy: str, variant: str, metric: str) -> float:
    """SD over training seeds of the seed's mean over subjects (nan with fewer than two seeds)."""
    seeds = sorted({r["seed"] for r in rows if r["anatomy"] == anatomy and r["variant"] == variant})
    means = [np.nanmean([r[metric] for r in rows if r["anatomy"] == anatomy and r["variant"] == variant
                         and r["seed"] == s]) for s in seeds]
    return float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")


def summary_rows(rows: list[dict], anatomy: str, variants: Sequence[str], seeds: Sequence[int],
                 train_seconds: dict, baselines: Sequence[str] = ()) -> list[dict]:
    """Mean and SD over subjects (of seed means) per baseline and variant; MAE also as a fraction of the constant's
    (the ``constant`` baseline, when present) and the seed-to-seed SD of the MAE."""
    out = []
    for variant in [*baselines, *variants]:
        row = {"anatomy": anatomy, "variant": variant, "kind": "baseline" if variant in baselines else "model",
               "n_subjects": 0, "n_seeds": 0 if variant in baselines else len(seeds),
               "train_minutes": round(sum(train_seconds.get((anatomy, variant, s), 0.0) for s in seeds) / 60, 1)}
        for key in [m[0] for m in METRICS] + [c[0] for c in EXTRA_COLUMNS] + ["ct_air_pct"]:
            values = subject_means(rows, anatomy, variant, key)
            finite = values[np.isfinite(values)]
            row["n_subjects"] = max(row["n_subjects"], len(values))
            row[f"{key}_mean"] = float(np.mean(finite)) if len(finite) else float("nan")
            row[f"{key}_sd"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
        row["mae_seed_sd"] = seed_spread(rows, anatomy, variant, "mae")
        out.append(row)
    constant = next((r["mae_mean"] for r in out if r["variant"] == "constant"), float("nan"))
    for row in out:
        row["mae_vs_constant"] = row["mae_mean"] / constant if np.isfinite(constant) and constant > 0 else float("nan")
    return out
