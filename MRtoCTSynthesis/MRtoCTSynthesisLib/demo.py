"""The main job of the README: synthesize CTs with the default model from a real head MR and from a head phantom.

1. The real MR embedded in the project (Resources/SampleData: a 3D T1 MPRAGE, BSD-2, 2 mm): its sCT, and since no
   CT of this person exists, the reference-free checks of ``head_checks`` (skull completeness over the vault, bone
   in the brain, the HU shares in the head, MI) next to those of the real head CTs recorded on the model's card.
2. A head phantom the model never saw: its sCT scored against the phantom's own CT, next to the constant and the
   MR-intensity lookup baselines fitted on four other phantoms with the model's MR normalisation.

Writes real_mr_sct.nii.gz, real_mr.png (three planes, MR | sCT, with the rays of the vault check), mr.nii.gz,
ct_reference.nii.gz, sct.nii.gz, demo.png (MR | sCT | reference CT | |error|) and metrics.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from . import DEFAULT_MODEL
from . import volumes as V
from .figures import CT_WINDOW, Column, save_volume_comparison
from .head_checks import check_figure, check_sct
from .metrics import evaluate, mutual_information
from .modelfile import ModelBundle
from .phantom import make_phantom, subject_seeds
from .preprocessing import normalization_from_metadata
from .synthesis import load_bundle, synthesize


DEMO_SEED = 90_001          # an unseen phantom subject (models train on seeds derived from 0)
DEMO_SHAPE = (88, 128, 128)  # a natural-size head at 2 mm (the quality benchmark's head setting); a smaller field of
DEMO_SPACING = (2.0, 2.0, 2.0)  # view would shrink the phantom's anatomy to fit
BASELINE_SEEDS = subject_seeds(31, 4)
SAMPLE_MR = Path(__file__).resolve().parent.parent / "Resources" / "SampleData" / "head_t1_mprage_2mm.nii.gz"
SAMPLE_MR_CARD_KEY = "head_t1_philips_mprage.nii.gz"     # the full-resolution original in the model card's checks


def _progress(label: str) -> Callable[[float, str], None]:
    return lambda f, m: print(f"\r{label}: {100 * f:5.1f}%  {m:<60}", end="", flush=True)


def real_mr_part(out: Path, bundle: ModelBundle, device: str) -> dict:
    """Synthesize the embedded real MR; its reference-free checks and picture."""
    mr = V.read_volume(SAMPLE_MR)
    result = synthesize(mr, bundle, device=device, progress=_progress("real MR"))
    print()
    V.write_volume(result.sct, out / "real_mr_sct.nii.gz")
    check = check_sct(mr, result.sct)
    card = bundle.metadata.get("validation_metrics", {}).get("real_head_mrs", {})
    reference = card.get("reference_hu_shares")
    check_figure(check.mr, {result.model_name: check}, out / "real_mr.png",
                 f"demo: {result.model_name} on a real T1 MPRAGE (no CT of this person exists)\nrays of the vault "
                 "check: green crossed bone, red did not, grey left the scan")
    return {**check.summary(reference), "model": result.model_name, "seconds": round(result.seconds, 2),
            "card": {"real_head_cts": card.get("real_cts", {}), "reference_hu_shares": reference,
                     "full_resolution_original": card.get("mrs", {}).get(SAMPLE_MR_CARD_KEY, {}).get("results", {})}}


def phantom_part(out: Path, bundle: ModelBundle, device: str) -> dict:
    """Synthesize an unseen phantom; its scores beside the constant and lookup baselines."""
    from .baselines import CONSTANT, LOOKUP, Subject, fit_baselines

    phantom = make_phantom("head", DEMO_SEED, DEMO_SHAPE, DEMO_SPACING)
    result = synthesize(phantom.mr, bundle, device=device, progress=_progress("phantom"))
    print()
    for name, image in (("mr", phantom.mr), ("ct_reference", phantom.ct), ("sct", result.sct)):
        V.write_volume(image, out / f"{name}.nii.gz")
    mr, ct, sct = (V.array_of(i) for i in (phantom.mr, phantom.ct, result.sct))
    mask = V.array_of(V.body_mask(phantom.ct, threshold=-500.0)) > 0
    metrics = {**evaluate(sct, ct, mask, 4500.0, spacing=phantom.ct.GetSpacing()[::-1]),
               "mi_mr_sct": mutual_information(mr, sct, mask), "mi_mr_ct": mutual_information(mr, ct, mask),
               "model": result.model_name, "device": result.device, "seconds": round(result.seconds, 2)}
    training = [Subject.of_phantom(make_phantom("head", s, DEMO_SHAPE, DEMO_SPACING), str(s)) for s in BASELINE_SEEDS]
    fitted = fit_baselines(training, normalization_from_metadata(bundle.metadata))
    subject = Subject.of_phantom(phantom, str(DEMO_SEED))
    metrics["baselines_mae"] = {name: float(np.abs(fitted.predict(name, subject)[mask] - ct[mask]).mean())
                                for name in (CONSTANT, LOOKUP)}
    metrics["mae_vs_constant"] = metrics["mae"] / metrics["baselines_mae"][CONSTANT]
    error = V.image_like(np.abs(sct - ct), phantom.ct)
    save_volume_comparison([Column("MR", phantom.mr), Column("sCT", result.sct, *CT_WINDOW),
                            Column("reference CT", phantom.ct, *CT_WINDOW),
                            Column("|sCT - CT| (HU)", error, 0, 500, "magma")], out / "demo.png",
                           suptitle=f"demo: {result.model_name} on an unseen phantom - MAE {metrics['mae']:.0f} HU "
                           f"(constant {metrics['baselines_mae'][CONSTANT]:.0f}, MR lookup "
                           f"{metrics['baselines_mae'][LOOKUP]:.0f}); not for clinical use")
    return metrics


def run_demo(out_dir: os.PathLike, model: str = DEFAULT_MODEL, device: str = "auto") -> dict:
    """Run both parts; returns the metrics (also written to metrics.json)."""
    out = Path(out_dir)
    bundle = load_bundle(model)     # read and verified once for both parts
    metrics = {"real_mr": real_mr_part(out, bundle, device), "phantom": phantom_part(out, bundle, device)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def demo_summary(metrics: dict, out: os.PathLike) -> str:
    """What the demo prints: the real MR's checks beside the real head CTs', the phantom's MAE beside the baselines."""
    real, phantom = metrics["real_mr"], metrics["phantom"]
    cts = real["card"]["real_head_cts"]
    ct_vault = ", ".join(f"{name} {c['skull_completeness']:.2f}" for name, c in cts.items()) or "not on the card"
    ct_bone = ", ".join(f"{name} {c['brain_bone_share']:.1%}" for name, c in cts.items()) or "not on the card"
    lines = [f"model {real['model']}; outputs in {out}/",
             f"real T1 MPRAGE (no CT exists): real_mr_sct.nii.gz, picture real_mr.png ({real['seconds']:.1f} s)",
             f"  skull completeness over the vault {real['skull_completeness']:.2f}   (real head CTs: {ct_vault})",
             f"  bone in the brain                 {real['brain_bone_share']:.1%}   (real head CTs: {ct_bone})",
             "  HU shares in the head             " + ", ".join(f"{k} {v:.0%}" for k, v in real["hu_shares"].items())]
    if real.get("hu_histogram_distance") is not None:
        reference = real["card"]["reference_hu_shares"]
        lines.append("  real head CTs' shares            " + ", ".join(f"{k} {v:.0%}" for k, v in reference.items())
                     + f"  (distance {real['hu_histogram_distance']:.3f})")
    base = phantom["baselines_mae"]
    lines += [f"phantom never seen in training: sct.nii.gz, picture demo.png ({phantom['seconds']:.1f} s)",
              f"  MAE in the body  model {phantom['mae']:.0f} HU   constant {base['constant']:.0f} HU   "
              f"MR lookup {base['mr-lookup']:.0f} HU   (model / constant {phantom['mae_vs_constant']:.2f})",
              f"  PSNR {phantom['psnr']:.1f} dB   SSIM {phantom['ssim']:.3f}   MAE bone {phantom['mae_bone']:.0f} HU",
              "Research use only; not for clinical use."]
    return "\n".join(lines)
