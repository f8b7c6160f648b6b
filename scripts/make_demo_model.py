"""Reproduce the bundled demo model "phantom-head-demo" with the project's own trainer and phantoms.

    python scripts/make_demo_model.py train   --work /tmp/demo      # phantoms + training (about 10 min on 2 cores)
    python scripts/make_demo_model.py finalize --work /tmp/demo     # evaluate, write the card, bundle, catalog

Finalize evaluates the model on phantom subjects never used in training, writes the card (what it was trained on,
its measured metrics, that it is a demonstration model, not for clinical use) into the model's metadata, copies it
to MRtoCTSynthesis/Resources/Models/ and records its sha256, size and metrics in catalog.json.

The bundled model was made with these settings, except that its run was started with --iterations 4000, stopped at
its iteration-1500 checkpoint and resumed with the recorded iterations set to 2500 (to fit the session's CPU time):
its first 1500 iterations used the constant learning rate that a 2500-iteration run keeps only until 1250.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.metrics import evaluate, mutual_information
from MRtoCTSynthesisLib.modelfile import SUFFIX, load_model, save_model, sha256_of
from MRtoCTSynthesisLib.phantom import make_phantom, write_phantom_dataset
from MRtoCTSynthesisLib.synthesis import synthesize
from MRtoCTSynthesisLib.train import main as train_main

NAME = "phantom-head-demo"
REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "MRtoCTSynthesis" / "Resources" / "Models"
SUBJECTS, SEED = 16, 0
TEST_SEEDS = (90_001, 90_002, 90_003, 90_004)  # unseen subjects (the demo shows the first)
SHAPE, SPACING = (64, 64, 48), (3.0, 3.0, 3.0)
TRAIN_ARGS = ["--preset", "paired", "--lambda-supervised", "10", "--iterations", "2500", "--pixel-spacing-mm", "3", "3",
              "--image-size", "64", "64", "--augment-pad", "72", "72", "--ngf", "24", "--n-blocks", "6",
              "--validation-fraction", "0.125", "--checkpoint-every", "250", "--preview-every", "250",
              "--validate-every", "250", "--log-every", "25"]


def train(work: Path) -> None:
    write_phantom_dataset(work / "phantoms", "head", SUBJECTS, SEED, SHAPE, SPACING)
    train_main(["--mr", str(work / "phantoms" / "mr"), "--ct", str(work / "phantoms" / "ct"),
                "--out", str(work / NAME), *TRAIN_ARGS])


def finalize(work: Path) -> None:
    bundle = load_model(work / NAME / ("model" + SUFFIX))
    per_subject = []
    for seed in TEST_SEEDS:
        phantom = make_phantom("head", seed, SHAPE, SPACING)
        sct, ct, mr = (V.array_of(i) for i in (synthesize(phantom.mr, bundle, device="cpu").sct, phantom.ct, phantom.mr))
        mask = V.array_of(V.body_mask(phantom.ct, threshold=-500.0)) > 0
        per_subject.append({**evaluate(sct, ct, mask, 4500.0, spacing=SPACING[::-1]),
                            "mi_mr_sct": mutual_information(mr, sct, mask)})
    metrics = {k: round(float(np.mean([m[k] for m in per_subject])), 4) for k in per_subject[0]}
    metrics["subjects"] = len(per_subject)
    meta = dict(bundle.metadata)
    meta.update(
        name=NAME, license="CC-BY-4.0",
        description=("Demonstration model: MR-to-CT for the project's digital head phantoms (sagittal, 3 mm pixels). "
                     "Trained with the project's trainer, preset 'paired' plus the supervised L1 switch (lambda 10) on "
                     f"{SUBJECTS} registered phantom MR/CT pairs (seeds from {SEED}); the unpaired presets did not "
                     "converge within the CPU budget (the sCT stayed at -1000 HU for 1000+ iterations)."),
        intended_use=("Demonstration and testing of the software only. NOT for clinical use, diagnosis or treatment "
                      "planning; on real MR scans its output is not a valid CT."),
        validation_metrics={"unseen_phantoms": metrics, "during_training": bundle.metadata["validation_metrics"]})
    target = MODELS / f"{NAME}{SUFFIX}"
    save_model(target, meta, bundle.state_dicts)
    catalog_path = MODELS / "catalog.json"
    catalog = json.loads(catalog_path.read_text(encoding="utf-8"))
    entry = {"name": NAME, "description": meta["description"], "file": target.name, "sha256": sha256_of(target),
             "size_bytes": target.stat().st_size, "license": meta["license"], "metrics": metrics}
    catalog["models"] = [m for m in catalog["models"] if m["name"] != NAME] + [entry]
    catalog_path.write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    for picture in ("loss_curves.png", "preview.png"):
        shutil.copy(work / NAME / picture, REPO / "docs" / "images" / f"demo_model_{picture}")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["train", "finalize"])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    (train if args.stage == "train" else finalize)(args.work)
