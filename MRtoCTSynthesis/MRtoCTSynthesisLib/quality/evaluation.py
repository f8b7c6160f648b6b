"""Scoring: one test subject synthesized and compared with its CT, and a trained run over all test subjects."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .output import _dump
from .settings import DATA_RANGE_HU, SATURATED_HU, TEST_METRICS, Setting


def score_subject(bundle, phantom, device: str) -> tuple[dict, np.ndarray]:
    """Synthesize one test subject and score it in the CT body mask (Yang's metrics, MAE per tissue, MI)."""
    from .. import volumes as V
    from ..metrics import evaluate, mutual_information
    from ..synthesis import synthesize

    sct = V.array_of(synthesize(phantom.mr, bundle, device=device, batch_size=16).sct)
    ct, mr = V.array_of(phantom.ct), V.array_of(phantom.mr)
    mask = V.array_of(V.body_mask(phantom.ct, threshold=-500.0)) > 0
    metrics = evaluate(sct, ct, mask, DATA_RANGE_HU, spacing=phantom.ct.GetSpacing()[::-1])
    metrics["mi_mr_sct"] = mutual_information(mr, sct, mask)
    metrics["mi_mr_ct"] = mutual_information(mr, ct, mask)
    metrics["saturated_pct"] = 100.0 * float(np.mean(sct[mask] <= SATURATED_HU))
    metrics["ct_air_pct"] = 100.0 * float(np.mean(ct[mask] <= SATURATED_HU))
    return {k: float(v) for k, v in metrics.items()}, sct


def evaluate_run(model_path: Path, setting: Setting, phantoms: list, device: str) -> list[dict]:
    """Per-subject metrics of one trained model, cached beside the model (keyed by the model file and subjects)."""
    from ..modelfile import load_model

    stat = model_path.stat()
    key = {"model_size": stat.st_size, "model_mtime_ns": stat.st_mtime_ns,
           "subjects": [int(p.seed) for p in phantoms], "shape": list(setting.shape), "spacing": list(setting.spacing)}
    cache = model_path.parent / TEST_METRICS
    if cache.exists():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["rows"]
    bundle = load_model(model_path)
    rows = []
    for index, phantom in enumerate(phantoms):
        metrics, _ = score_subject(bundle, phantom, device)
        rows.append({"subject": index, "subject_seed": int(phantom.seed), **metrics})
    _dump(cache, {"key": key, "rows": rows})
    return rows
