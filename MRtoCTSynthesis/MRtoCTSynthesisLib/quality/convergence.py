"""Convergence of a run from its validation curve: is the validation error flat over the last fifth of training?

The trainer validates every ``validate_every`` iterations (``events.jsonl``, event "validation"): MAE in HU on the
validation slices when the validation CT is registered to its MR (paired and supervised runs; inside the body where
the run recorded it, else over the whole canvas), else the cycle L1 of the MR. A run counts as converged when a straight line fitted to the points of the last fifth of its iterations
changes by less than ``FLAT_CHANGE`` of their mean over that span.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FLAT_CHANGE = 0.05
LAST_SHARE = 0.2


def validation_curve(run_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(metric name, iterations, values) of a run's validation events; empty arrays when there are none."""
    from ..events import EVENTS_FILE, iter_events

    points: dict[int, dict] = {}
    path = Path(run_dir) / EVENTS_FILE
    if path.exists():
        for event in iter_events(path):
            if event.get("event") == "validation":
                points[int(event["iteration"])] = event.get("metrics", {})  # a resumed run repeats: keep the last
    metric = next((name for name in ("mae_body_hu", "mae_hu") if any(name in m for m in points.values())),
                  "cycle_l1_mr")  # in-body MAE where recorded (runs since issue 22), whole canvas before
    kept = sorted(i for i, m in points.items() if metric in m)
    return metric, np.array(kept, dtype=float), np.array([points[i][metric] for i in kept], dtype=float)


def convergence(run_dir: Path, iterations: int) -> dict:
    """metric, last value, relative change over the last fifth (fitted line), and whether that is flat."""
    metric, its, values = validation_curve(run_dir)
    result = {"validation_metric": metric, "validation_last": float(values[-1]) if len(values) else float("nan"),
              "change_last_fifth_pct": float("nan"), "flat": False, "validation_points": int(len(values))}
    tail = its >= iterations * (1 - LAST_SHARE)
    if tail.sum() >= 3:
        slope, _ = np.polyfit(its[tail], values[tail], 1)
        change = slope * (its[tail][-1] - its[tail][0]) / max(abs(float(values[tail].mean())), 1e-12)
        result.update(change_last_fifth_pct=float(100 * change), flat=bool(abs(change) < FLAT_CHANGE))
    return result
