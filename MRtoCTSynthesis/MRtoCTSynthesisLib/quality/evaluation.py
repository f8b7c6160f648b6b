"""Scoring: one test subject synthesized (or predicted by a baseline) and compared with its CT in its evaluation mask,
and a trained run over all test subjects."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .output import _dump
from .settings import DATA_RANGE_HU, SATURATED_HU, TEST_METRICS, Setting


def score_subject(bundle, subject, device: str) -> tuple[dict, np.ndarray]:
    """Synthesize one test subject (``data.Subject``) and score it (``score_prediction``)."""
    from .. import volumes as V
    from ..synthesis import synthesize

    sct = V.array_of(synthesize(subject.mr, bundle, device=device, batch_size=16).sct)
    return score_prediction(sct, subject), sct


def score_prediction(sct: np.ndarray, subject) -> dict:
    """An sCT (HU, the subject's grid) scored in the subject's evaluation mask: Yang's metrics, MAE per tissue, MI."""
    from .. import volumes as V
    from ..metrics import evaluate, mutual_information
    from ..baselines import evaluation_mask

    ct, mr = V.array_of(subject.ct), V.array_of(subject.mr)
    if sct.shape != ct.shape:
        raise ValueError(f"subject {subject.name}: the sCT {sct.shape} is not on the CT's grid {ct.shape}")
    mask = evaluation_mask(subject)
    metrics = evaluate(sct, ct, mask, DATA_RANGE_HU, spacing=subject.ct.GetSpacing()[::-1])
    metrics["mi_mr_sct"] = mutual_information(mr, sct, mask)
    metrics["mi_mr_ct"] = mutual_information(mr, ct, mask)
    metrics["saturated_pct"] = 100.0 * float(np.mean(sct[mask] <= SATURATED_HU))
    metrics["ct_air_pct"] = 100.0 * float(np.mean(ct[mask] <= SATURATED_HU))
    return {k: float(v) for k, v in metrics.items()}


def subject_row(index: int, subject) -> dict:
    return {"subject": index, "subject_name": subject.name,
            "subject_seed": -1 if subject.seed is None else int(subject.seed)}


def evaluate_run(model_path: Path, setting: Setting, subjects: list, device: str) -> list[dict]:
    """Per-subject metrics of one trained model, cached beside the model (keyed by the model file and subjects)."""
    from ..modelfile import load_model

    stat = model_path.stat()
    key = {"model_size": stat.st_size, "model_mtime_ns": stat.st_mtime_ns,
           "subjects": [s.name if s.seed is None else int(s.seed) for s in subjects],
           "shape": list(setting.shape), "spacing": list(setting.spacing)}
    cache = model_path.parent / TEST_METRICS
    if cache.exists():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["rows"]
    bundle = load_model(model_path)
    rows = []
    for index, subject in enumerate(subjects):
        metrics, _ = score_subject(bundle, subject, device)
        rows.append({**subject_row(index, subject), **metrics})
    _dump(cache, {"key": key, "rows": rows})
    return rows


def evaluate_baselines(baselines, subjects: list) -> dict[str, list[dict]]:
    """Per-subject metrics of every baseline that can predict these subjects (``baselines.BASELINES``)."""
    from ..baselines import BASELINES

    rows = {}
    for name in BASELINES:
        for index, subject in enumerate(subjects):
            sct = baselines.predict(name, subject)
            if sct is not None:
                rows.setdefault(name, []).append({**subject_row(index, subject), **score_prediction(sct, subject)})
    return rows


def mean_mae_beside_baselines(bundle, train_subjects: list, test_subjects: list,
                              device: str = "cpu") -> tuple[dict[str, float], float]:
    """({baseline name or "model": MAE inside the body, mean over ``test_subjects``}, the constant's HU): the
    baselines fitted on ``train_subjects`` with the model's MR normalisation, so model and baselines see one MR."""
    from ..baselines import BASELINES, fit_baselines
    from ..preprocessing import normalization_from_metadata

    fitted = fit_baselines(train_subjects, normalization_from_metadata(bundle.metadata))
    mae = {name: [score_prediction(fitted.predict(name, t), t)["mae"] for t in test_subjects] for name in BASELINES}
    mae["model"] = [score_subject(bundle, t, device)[0]["mae"] for t in test_subjects]
    return {name: float(np.mean(values)) for name, values in mae.items()}, fitted.constant_hu
