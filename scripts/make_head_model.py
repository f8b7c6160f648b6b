"""Reproduce the default head model "head-synth" (issue 21): simulated pairs with randomised MR contrast, supervised.

One command remakes the shipped model (v11) from nothing, about 6 hours of one CPU core, resumable (a killed step
resumes from its checkpoint; finished steps are skipped):

    python scripts/make_head_model.py reproduce --work /tmp/head [--jobs N] [--device cuda]
    python benchmarks/real_head_checks.py --models phantom-head-demo /tmp/head/v11/head-synth/model.mrtoct.safetensors
    python scripts/make_head_model.py finalize --work /tmp/head/v11 --real-checks <its results.json>   # card, bundle

It runs ``CHAIN``: v1 on random contrasts; warm starts (``--init-from``) v2, v4, v7, each on 160 new pairs with one
more prior; v8 and v9, two fine-tunings of v7 with a thicker-scalp prior (6 and 3 mm); v10 the average of their
weights, half each; v11 a fine-tuning of v10 with the brain under the skull labelled CSF. Alone, v8 overshot the
scalp fat and opened the vault of the 5.5 mm contrast T1 (0.85), and v9's level-matched histogram was further from
the CTs' than v7's (RESULTS section 14); their average keeps the vaults, and the CSF prior thins the skull's inner
side towards the real CTs' (section 15). The stages data, train, soup and finalize run one step by hand
(``python scripts/make_head_model.py data --work W --seed 5 --max-extra-scalp-mm 6 ...``). The iterations of a step
are fitted to its minutes on the machine at hand, so another machine makes a model of the same recipe, not the same
bits; and v1-v7 were made while the VTK headsq CT was read upside down (``head_simulator.read_head_ct`` now turns
it): an axial network sees the same slices, but the same seed now draws other pairs.

Data: ``head_simulator.write_simulated_dataset``: half the pairs are the real head CTs of --real-data (read, never
copied), half new head phantoms, each deformed at random, each MR drawn with a random contrast; with --own-mr-every
2, every second phantom pair keeps the phantom's own T1-like MR (v2); with --axial-thick-share 0.67, two thirds
of the thick-slice MRs are thick along the axial axis, as clinical 2D axial series are (v4); with --bright-fat-share
0.8 fat outshines skin and muscle in 80% of the contrasts, and --max-bias 0.7 doubles the strongest bias field (v7);
--max-extra-scalp-mm inserts up to that much fat under the skin (v8, v9; ``head_simulator.SimulationPrior``);
--max-csf-mm labels the brain under the skull CSF (``head_simulator.add_subarachnoid_csf``). The soup stage
averages the G_CT weights of models fine-tuned from one start (``modelfile.average_weights``).
Training: the 'paired' preset with only the supervised L1 (G_CT alone), the recipe 'fast' (issue 22), axial 2 mm
slices, the MR scaled by its body's 99.5th percentile (no N4: the simulated bias fields teach the network to ignore
it). The iterations are fitted to
--minutes from the measured step, so that the learning-rate schedule completes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.head_simulator import Anatomy, SimulationPrior, write_simulated_dataset
from MRtoCTSynthesisLib.modelfile import SUFFIX, average_weights, load_model, save_model, sha256_of
from MRtoCTSynthesisLib.phantom import make_phantom
from MRtoCTSynthesisLib.quality import Subject, mean_mae_beside_baselines
from MRtoCTSynthesisLib.quality.data import subject_seeds_of
from MRtoCTSynthesisLib.quality.settings import DEFAULT_REAL_DATA, SETTINGS
from MRtoCTSynthesisLib.quality.plan import step_seconds
from MRtoCTSynthesisLib.train import CHECKPOINT, MODEL, build_trainer

NAME = "head-synth"
REAL_CTS = ("head_ct_ge_dicom", "head_ct_vtk_headsq.nii.gz")
PAIRS, SEED = 160, 0
CONFIG = dict(recipe="fast", lambda_adversarial=0.0, lambda_cycle=0.0, lambda_supervised=1.0,
              plane="axial", image_size=(160, 160), augment_pad=(176, 176), pixel_spacing_mm=(2.0, 2.0),
              ct_window=(-1000.0, 2500.0), mr_window=(0.0, 3500.0), mr_scaling="percentile", mr_percentile=99.5,
              mr_percentile_value=3000.0, n4=False, validation_fraction=0.1, seed=SEED,
              description="supervised on simulated head pairs with randomised MR contrast (issue 21)")


@dataclass(frozen=True)
class Step:
    """One model of the chain that made head-synth: PAIRS new pairs (``seed``, ``own_mr_every``, ``prior``) and
    ``minutes`` of training (at ``lr``, or the recipe's) from the model of step ``start`` (none: from scratch); or,
    with ``soup``, the weight average of those steps' models, equal shares."""

    name: str
    minutes: float = 0.0
    start: str = ""
    lr: Optional[float] = None
    seed: int = SEED
    own_mr_every: int = 2
    prior: SimulationPrior = SimulationPrior()
    soup: tuple = ()


V7_PRIOR = SimulationPrior(axial_thick_share=0.67, bright_fat_share=0.8, max_bias=0.7)
CHAIN = (Step("v1", 55, own_mr_every=0),
         Step("v2", 50, "v1"),
         Step("v4", 45, "v2", 3e-4, seed=1, prior=SimulationPrior(axial_thick_share=0.67)),
         Step("v7", 45, "v4", 3e-4, seed=4, prior=V7_PRIOR),
         Step("v8", 45, "v7", 3e-4, seed=5, prior=replace(V7_PRIOR, max_extra_scalp_mm=6.0)),
         Step("v9", 28, "v7", 3e-4, seed=6, prior=replace(V7_PRIOR, max_extra_scalp_mm=3.0)),
         Step("v10", soup=("v8", "v9")),
         Step("v11", 28, "v10", 3e-4, seed=7, prior=replace(V7_PRIOR, max_extra_scalp_mm=3.0, max_csf_mm=4.0)))


def make_data(work: Path, real_data: Path, pairs: int, own_mr_every: int, jobs: int = 1, seed: int = SEED,
              prior: SimulationPrior = SimulationPrior()) -> None:
    real = [Anatomy.of_ct(real_data / name) for name in REAL_CTS if (real_data / name).exists()]
    print(f"anatomy: {[a.name for a in real]} and phantoms", flush=True)
    began = time.time()
    write_simulated_dataset(work / "sim", real, pairs, seed, own_mr_every=own_mr_every, jobs=jobs,
                            prior=prior,
                            progress=lambda done, total: print(f"\rpairs {done}/{total}, "
                                                               f"{time.time() - began:.0f} s", end="", flush=True))
    print(flush=True)


def train(work: Path, minutes: float, init_from: str = "", device: str = "cpu", extra_planes: tuple = (),
          lr: Optional[float] = None) -> Path:
    """Fit the iterations to ``minutes`` (a first call) or resume the run; returns the model path. ``init_from``: a
    model file to start from (a warm start, e.g. the previous head-synth); ``extra_planes``: coronal and sagittal
    slices train the network too, and synthesis averages its three passes (v3); ``lr``: instead of the recipe's
    (a warm start keeps more of its start with a smaller one)."""
    run, cache = work / NAME, work / "cache"
    sim = work / "sim"
    resume = (run / CHECKPOINT).exists()
    if resume:
        trainer = build_trainer(preset("paired", **CONFIG), sim / "mr", sim / "ct", run, device, cache_dir=cache,
                                resume=True)
    else:
        settings = dict(CONFIG, extra_planes=tuple(extra_planes), **({"lr": lr} if lr else {}))
        probe = build_trainer(preset("paired", **settings, iterations=10), sim / "mr", sim / "ct", work / "_timing",
                              device, cache_dir=cache, show_progress=False)
        per_step = step_seconds(probe, 2, 5)
        iterations = max(50, int(minutes * 60 * 0.92 / per_step) // 50 * 50)
        print(f"{per_step:.3f} s per iteration -> {iterations} iterations in {minutes:g} min", flush=True)
        every = max(50, iterations // 25 // 50 * 50)
        config = preset("paired", **settings, iterations=iterations, validate_every=every, checkpoint_every=every,
                        preview_every=every * 5, init_from=init_from)
        trainer = build_trainer(config, sim / "mr", sim / "ct", run, device, cache_dir=cache)
    return trainer.run(stop_at=time.time() + minutes * 60 * 1.1)


def reproduce(work: Path, real_data: Path, jobs: int = 1, device: str = "cpu", chain: tuple = CHAIN) -> Path:
    """Run ``chain`` in work/<step name>, skipping the steps whose model exists; a step killed in training resumes
    from its checkpoint (before one, its pairs are remade: the same files). Returns the last step's model."""
    def model_of(name: str) -> Path:
        return work / name / NAME / MODEL

    for step in chain:
        folder = work / step.name
        if model_of(step.name).exists():
            print(f"{step.name}: done ({model_of(step.name)})", flush=True)
        elif step.soup:
            soup(folder, [model_of(name) for name in step.soup])
        else:
            if not (folder / NAME / CHECKPOINT).exists():
                make_data(folder, real_data, PAIRS, step.own_mr_every, jobs, step.seed, step.prior)
            train(folder, step.minutes, str(model_of(step.start)) if step.start else "", device, lr=step.lr)
    return model_of(chain[-1].name)


def phantom_scores(model: Path) -> dict:
    """MAE inside the body on the quality benchmark's 15 fresh 2 mm head test phantoms (MR as the phantoms make it,
    T1-like), beside the constant and the MR lookup fitted on its 30 training phantoms with this model's MR
    normalisation, and the class-mean floor; each also as a fraction of the constant's MAE."""
    setting = SETTINGS["default"]["head"]
    train_seeds, test_seeds = subject_seeds_of(setting)
    subject = lambda seed: Subject.of_phantom(make_phantom("head", seed, setting.shape, setting.spacing),  # noqa: E731
                                              str(seed))
    began = time.time()
    mae, _ = mean_mae_beside_baselines(load_model(model), [subject(s) for s in train_seeds],
                                       [subject(s) for s in test_seeds])
    return {"subjects": len(test_seeds), "setting": "quality benchmark, head, 2 mm, test seeds",
            "mae_hu": {k: round(v, 1) for k, v in mae.items()},
            "mae_vs_constant": {k: round(v / mae["constant"], 3) for k, v in mae.items()},
            "synthesis_seconds_total": round(time.time() - began, 1)}


def soup(work: Path, models: list, shares: Optional[list] = None) -> Path:
    """Average the G_CT weights of ``models`` (fine-tuned from one start; equal shares by default) into the run's
    model file, recording each ingredient's file, sha256, share, training and validation (v10: v8 and v9)."""
    shares = shares or [1.0 / len(models)] * len(models)
    bundles = [load_model(model) for model in models]
    meta = dict(bundles[0].metadata)
    meta.update(networks={"G_CT": meta["networks"]["G_CT"]},
                training={"weight_average": [{"file": str(model), "sha256": sha256_of(model), "share": share,
                                              "training": bundle.metadata["training"]}
                                             for model, share, bundle in zip(models, shares, bundles)]},
                validation_metrics={"averaged_models": [bundle.metadata["validation_metrics"] for bundle in bundles]})
    target = work / NAME / MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_model(target, meta, {"G_CT": average_weights(bundles, shares)})


CARD = ("Default head model: MR (any common contrast) to CT in HU, axial 2D U-Net on 2 mm slices. Trained "
        "supervised on simulated pairs with randomised MR contrast (issue 21): half made from two real head CTs "
        "(dcm_qa_ct GE head CT, BSD-2; VTKData headsq, BSD-3; their tissue labels by HU thresholds, randomly "
        "deformed) and half from the project's head phantoms; each MR drawn with random tissue intensities (bone and "
        "air dark), bias field, noise, blur and slice thickness, except every second phantom pair, which keeps the "
        "phantom's own T1-like MR. Recipe 'fast' (U-Net ngf 16, batch 4, Adam 1e-3, beta1 0.9). v11: 28 minutes "
        "of one CPU core at Adam 3e-4 from v10 on 160 new pairs in which the brain up to 4 mm under the skull is "
        "labelled CSF (dark in a T1, as the bone beside it; the real CTs' label maps lack it). v10: the weight "
        "average, half each, of v8 and v9, both fine-tuned from v7 at Adam 3e-4 on 160 new pairs with up to 6 mm "
        "(v8, 45 minutes) or 3 mm (v9, 28 minutes) of fat inserted under the skin. v7: 45 minutes of one "
        "CPU core at Adam 3e-4 started from v4, on 160 new pairs with fat brighter than skin and muscle in 80% of the "
        "contrasts and bias fields up to twice as strong; v4: 45 minutes at Adam 3e-4 from v2, on 160 new pairs of "
        "which two thirds of the thick-slice MRs are thick axially (clinical 2D axial series); v2: 50 minutes from v1 "
        "with the T1-like phantom pairs added; v1: 58 minutes on random contrasts. Reproduce with "
        "scripts/make_head_model.py.")
INTENDED = ("Research and demonstration only. NOT for clinical use, diagnosis or treatment planning. Trained on two "
            "real head CTs and phantoms, never on a real MR: check every sCT (the README's reference-free checks).")


def finalize(work: Path, real_checks: Path) -> None:
    """Score the trained model, write its card, bundle it (G_CT only: trained supervised, it has no MR generator)
    next to the catalog and record it there."""
    from MRtoCTSynthesisLib.modelfile import DEFAULT_CATALOG

    model = work / NAME / MODEL
    bundle = load_model(model)
    scores = phantom_scores(model)
    print(json.dumps(scores, indent=1), flush=True)
    real = json.loads(real_checks.read_text(encoding="utf-8")) if real_checks.exists() else {}
    meta = dict(bundle.metadata)
    meta.update(name=NAME, license="CC-BY-4.0", description=CARD, intended_use=INTENDED,
                networks={"G_CT": meta["networks"]["G_CT"]},
                validation_metrics={"fresh_phantoms": scores, "real_head_mrs": real,
                                    "during_training": bundle.metadata["validation_metrics"]})
    target = DEFAULT_CATALOG.parent / f"{NAME}{SUFFIX}"
    save_model(target, meta, {"G_CT": bundle.state_dicts["G_CT"]})
    catalog = json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))
    entry = {"name": NAME, "description": CARD, "file": target.name, "sha256": sha256_of(target),
             "size_bytes": target.stat().st_size, "license": "CC-BY-4.0",
             "metrics": {"fresh_phantoms_mae_vs_constant": scores["mae_vs_constant"]["model"]}}
    catalog["models"] = [m for m in catalog["models"] if m["name"] != NAME] + [entry]
    DEFAULT_CATALOG.write_text(json.dumps(catalog, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(entry, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["reproduce", "data", "train", "all", "soup", "finalize"])
    parser.add_argument("--work", type=Path, required=True,
                        help="working folder (simulated pairs, cache, run; reproduce: one folder per step)")
    parser.add_argument("--real-data", type=Path, default=DEFAULT_REAL_DATA, help="folder with the real head CTs")
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--own-mr-every", type=int, default=0,
                        help="every Nth phantom pair keeps the phantom's own T1-like MR (0: all random contrasts)")
    parser.add_argument("--jobs", type=int, default=1, help="data: processes making pairs (the same files as one)")
    parser.add_argument("--seed", type=int, default=SEED, help="data: the pairs' random seed")
    parser.add_argument("--axial-thick-share", type=float, default=None,
                        help="data: share of the thick-slice MRs sliced axially (default: any axis alike)")
    parser.add_argument("--bright-fat-share", type=float, default=SimulationPrior.bright_fat_share,
                        help="data: share of the contrasts with fat brighter than skin and muscle "
                             "(default %(default)s)")
    parser.add_argument("--max-bias", type=float, default=SimulationPrior.max_bias,
                        help="data: the largest sd of the log bias field (default %(default)s)")
    parser.add_argument("--max-extra-scalp-mm", type=float, default=SimulationPrior.max_extra_scalp_mm,
                        help="data: up to this much fat inserted under the skin (default %(default)s)")
    parser.add_argument("--max-csf-mm", type=float, default=SimulationPrior.max_csf_mm,
                        help="data: the brain within up to this much of the skull made CSF (default %(default)s)")
    parser.add_argument("--lr", type=float, default=None, help="train: learning rate instead of the recipe's")
    parser.add_argument("--minutes", type=float, default=50.0, help="training budget (wall clock)")
    parser.add_argument("--init-from", default="", help="train: start from this model file (a warm start)")
    parser.add_argument("--device", default="cpu", help="train: cpu, cuda, cuda:N")
    parser.add_argument("--extra-planes", nargs="*", default=[], choices=["coronal", "sagittal"],
                        help="train: these planes' slices train the axial network too; synthesis averages the planes")
    parser.add_argument("--models", nargs="+", default=[], help="soup: the model files to average (two or more)")
    parser.add_argument("--shares", nargs="+", type=float, default=None,
                        help="soup: each model's share of the average (default: equal)")
    parser.add_argument("--real-checks", type=Path, default=Path("benchmarks/real_head/results.json"),
                        help="finalize: the real-MR checks to put on the card (benchmarks/real_head_checks.py)")
    args = parser.parse_args(argv)
    if args.stage == "reproduce":
        print(f"model: {reproduce(args.work, args.real_data, args.jobs, args.device)}", flush=True)
    if args.stage in ("data", "all"):
        make_data(args.work, args.real_data, args.pairs, args.own_mr_every, args.jobs, args.seed,
                  SimulationPrior(args.axial_thick_share, args.bright_fat_share, args.max_bias,
                                  args.max_extra_scalp_mm, args.max_csf_mm))
    if args.stage in ("train", "all"):
        print(f"model: {train(args.work, args.minutes, args.init_from, args.device, args.extra_planes, args.lr)}",
              flush=True)
    if args.stage == "soup":
        print(f"model: {soup(args.work, args.models, args.shares)}", flush=True)
    if args.stage == "finalize":
        finalize(args.work, args.real_checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
