"""Reference-free checks of head sCTs on every real head MR of ../shared/data/real (issue 21): old and new default
models side by side, with the constant and MR-lookup baselines and the real head CTs as the upper bound.

    python benchmarks/real_head_checks.py --out benchmarks/real_head [--models phantom-head-demo head-synth]

No real MR here has a CT of the same patient, so there is no MAE: the checks are skull completeness over the vault,
the in-head HU histogram against the real head CTs (their whole heads; level-matched, at the MR's levels of the head;
by depth under the skin) and MI(MR, sCT) (``MRtoCTSynthesisLib.head_checks``). Writes results.json, results.md,
one figure per MR (three planes through the brain centre: MR | each sCT, the in-plane rays of the completeness check
drawn: green crossed bone, red did not, grey left the scanned slab), depth_profiles.png (fat and bone shares by
depth under the skin, sCTs against the real CTs), level_matching.png (how each real CT was aligned to each MR) and
bone_by_level.png (bone share per axial level, sCTs against the real CTs at their aligned levels).
The baselines are fitted on head phantoms (T1-like) with the last model's MR normalisation (the new default's): the
constant is the median body HU, the lookup maps the normalised MR intensity to HU (``baselines``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from MRtoCTSynthesisLib import head_checks as C
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.baselines import CONSTANT, LOOKUP, Subject, fit_baselines
from MRtoCTSynthesisLib.head_simulator import read_head_ct
from MRtoCTSynthesisLib.phantom import make_phantom, subject_seeds
from MRtoCTSynthesisLib.preprocessing import normalization_from_metadata
from MRtoCTSynthesisLib.quality.machine import machine_description
from MRtoCTSynthesisLib.quality.settings import DEFAULT_REAL_DATA
from MRtoCTSynthesisLib.synthesis import load_bundle, synthesize


HEAD_MRS = ("head_t1_philips_mprage.nii.gz", "head_t1gd_remind022.nii.gz", "head_t1_rire001.mha",
            "head_t1gd_brain1.nrrd", "head_t1_tcga_fg6692.nii.gz", "head_t1gd_tcga_fg6692.nii.gz")
HEAD_CTS = ("head_ct_ge_dicom", "head_ct_vtk_headsq.nii.gz")
MODELS = ("phantom-head-demo", "head-synth")
BASELINE_PHANTOMS = 8


def fitted_baselines(bundle):
    """The constant and the MR lookup fitted on head phantoms with the model's MR normalisation (once per run)."""
    phantoms = [Subject.of_phantom(make_phantom("head", s, (88, 128, 128), (2.0, 2.0, 2.0)), str(s))
                for s in subject_seeds(11, BASELINE_PHANTOMS)]
    return fit_baselines(phantoms, normalization_from_metadata(bundle.metadata))


def baseline_scts(mr, fitted) -> dict:
    """The constant and MR-lookup sCTs of ``mr``."""
    subject = Subject("real", mr, None, V.body_mask(mr))
    return {name: V.image_like(fitted.predict(name, subject), mr) for name in (CONSTANT, LOOKUP)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/real_head"))
    parser.add_argument("--real-data", type=Path, default=DEFAULT_REAL_DATA)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--labels", nargs="+", help="a name per model for the tables and figures (default: theirs)")
    parser.add_argument("--figures", type=Path, default=Path("docs/images/real_head"))
    args = parser.parse_args(argv)
    if not args.real_data.is_dir():
        raise SystemExit(f"no real data folder at {args.real_data}")
    bundles = [load_bundle(m) for m in args.models]          # read and verified once
    labels = args.labels or [b.metadata["name"] for b in bundles]
    if len(labels) != len(bundles) or len(set(labels)) < len(labels):
        raise SystemExit("give one distinct --labels entry per model (two versions of a model share its name)")
    fitted = fitted_baselines(bundles[-1])
    cts = {name: C.check_ct(read_head_ct(args.real_data / name)) for name in HEAD_CTS}
    reference = C.mean_shares(list(cts.values()))
    results = {"machine": machine_description("cpu"),
               "reference_hu_shares": {k: round(v, 4) for k, v in reference.items()},
               "real_cts": {name: check.summary(reference, {n: c for n, c in cts.items() if n != name})
                            for name, check in cts.items()}, "mrs": {}}
    mr_levels, model_levels = {}, {}
    for name in HEAD_MRS:
        path = args.real_data / name
        if not path.exists():
            continue
        mr = V.read_volume(path)
        rows, columns = {}, {}
        for label, sct in baseline_scts(mr, fitted).items():
            check = C.check_sct(mr, sct)
            rows[label], columns[label] = check.summary(reference, cts), check
        for bundle, label in zip(bundles, labels):
            began = time.time()
            sct = synthesize(mr, bundle, device="cpu").sct
            seconds = time.time() - began
            check = C.check_sct(mr, sct)
            rows[label] = {**check.summary(reference, cts), "synthesis_seconds": round(seconds, 1)}
            columns[label] = check
            print(f"{name} {label}: {rows[label]}", flush=True)
        results["mrs"][name] = {"size": list(mr.GetSize()), "spacing_mm": [round(s, 3) for s in mr.GetSpacing()],
                                "results": rows}
        first = next(iter(columns.values()))
        mr_levels[name] = first.levels                          # the MR's head mask: the same for every sCT
        model_levels[name] = {label: columns[label].levels for label in labels}
        C.check_figure(first.mr, {k: columns[k] for k in (LOOKUP, *labels)},
                       args.figures / f"{name.split('.')[0]}.png",
                       f"{name}: real MR (no CT of this patient) and sCTs\nrays of the vault check: green crossed "
                       "bone > 250 HU, red did not, grey left the scan")
    args.out.mkdir(parents=True, exist_ok=True)
    depth_figure(results, labels, args.figures / "depth_profiles.png")
    ct_levels = {name: check.levels for name, check in cts.items()}
    level_figure(mr_levels, ct_levels, results, args.figures / "level_matching.png")
    bone_level_figure(model_levels, ct_levels, results, args.figures / "bone_by_level.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(markdown(results, labels), encoding="utf-8")
    print((args.out / "results.md").read_text(encoding="utf-8"))
    return 0


def markdown(results: dict, models) -> str:
    predictors = (CONSTANT, LOOKUP, *models)
    columns = (("vault", "skull_completeness", "{:.2f}", predictors), ("brain bone %", "brain_bone_share", "{:.1%}",
                                                                       predictors),
               ("HU-histogram distance", "hu_histogram_distance", "{:.3f}", predictors),
               ("level-matched HU-histogram distance", "hu_histogram_distance_level_matched", "{:.3f}", predictors),
               ("MI", "mi_mr_sct", "{:.3f}", models))
    lines = ["| real head MR | " + " | ".join(f"{title}: {p}" for title, _, _, who in columns for p in who) + " |",
             "|---" * (1 + sum(len(who) for *_, who in columns)) + "|"]
    for name, entry in results["mrs"].items():
        r = entry["results"]
        lines.append(f"| {name} | " + " | ".join("n/a" if r[p].get(key) is None else form.format(r[p][key])
                                                 for _, key, form, who in columns for p in who)
                     + " |")
    lines += ["", "Real head CTs (upper bound of the vault check; their mean HU shares are the histogram reference):",
              ""]
    for name, summary in results["real_cts"].items():
        lines.append(f"- {name}: vault {summary['skull_completeness']:.2f} ({summary['rays_counted']} rays), brain "
                     f"bone {summary['brain_bone_share']:.1%}, "
                     f"shares {summary['hu_shares']}, distance to the mean {summary['hu_histogram_distance']:.3f}, "
                     f"level-matched to the other {level_matched(summary)}")
    lines += ["", "Level matching (each real CT aligned to each MR by the head's area per axial level; used where the "
              f"median mismatch is <= {C.MAX_AREA_MISMATCH}):", ""]
    for name, entry in results["mrs"].items():
        match = next(iter(entry["results"].values()))["level_matched"]
        lines.append(f"- {name}: {match['covered_share']:.0%} of the head at levels a CT covers; " + "; ".join(
            f"{ct} shift {a['shift_mm']:+.0f} mm, mismatch {a['area_mismatch']:.3f}{'' if a['used'] else ' (not used)'}"
            for ct, a in match["cts"].items() if a is not None))
    lines += ["", f"Scalp fat: the fat share 2-8 mm under the skin (mean of the 2-4, 4-6 and 6-8 mm shells); real "
              "head CTs: " + ", ".join(f"{scalp_fat(c):.2f}" for c in results["real_cts"].values()), "",
              "| real head MR | " + " | ".join(predictors) + " |", "|---" * (1 + len(predictors)) + "|"]
    for name, entry in results["mrs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{scalp_fat(entry['results'][p]):.2f}" for p in predictors) + " |")
    seconds = {m: [e["results"][m]["synthesis_seconds"] for e in results["mrs"].values()] for m in models}
    lines += ["", "Synthesis seconds per MR on this CPU: " + "; ".join(f"{m}: {v}" for m, v in seconds.items()), ""]
    return "\n".join(lines) + "\n"


def level_matched(summary: dict) -> str:
    """A summary's level-matched distance, or why there is none."""
    distance = summary.get("hu_histogram_distance_level_matched")
    return "no level in common" if distance is None else f"{distance:.3f}"


SCALP_SHELLS = ("2-4", "4-6", "6-8")


def scalp_fat(summary: dict) -> float:
    """The mean fat share of the shells 2-8 mm under the skin (the scalp of an adult head)."""
    return float(np.mean([summary["shares_by_depth_mm"][shell]["fat"] for shell in SCALP_SHELLS]))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _alignments(results: dict, mr: str) -> dict:
    """Each real CT's recorded alignment to the real MR ``mr`` (None where none overlaps enough)."""
    return next(iter(results["mrs"][mr]["results"].values()))["level_matched"]["cts"]


def _reference_levels(head: C.Levels, ct: C.Levels, aligned: dict) -> tuple[np.ndarray, np.ndarray]:
    """(head's levels, CT's levels) where a used CT is the head's reference, at its recorded alignment."""
    return C.agreeing_levels(head, ct, int(round(aligned["shift_mm"] / C.GRID_MM)))


def _save(fig, path: Path, title: str, fontsize: int) -> Path:
    """Title, lay out, write (110 dpi) and close a figure."""
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def depth_figure(results: dict, models, path: Path) -> Path:
    """Fat (top row) and bone (bottom row) share by depth under the skin, one column per real MR: each model's sCT,
    and the real head CTs (grey band: their range, black: their mean)."""
    plt = _pyplot()

    shells = list(next(iter(results["real_cts"].values()))["shares_by_depth_mm"])
    middle = [np.mean([float(x) for x in shell.split("-")]) for shell in shells]
    mrs = results["mrs"]
    fig, axes = plt.subplots(2, len(mrs), figsize=(3.0 * len(mrs), 5.6), sharex=True, sharey="row", squeeze=False)
    for column, (name, entry) in enumerate(mrs.items()):
        for row, tissue in enumerate(("fat", "bone")):
            ax = axes[row, column]
            real = np.array([[c["shares_by_depth_mm"][s][tissue] for s in shells] for c in results["real_cts"].values()])
            ax.fill_between(middle, real.min(0), real.max(0), color="0.85", label="real head CTs (range)")
            ax.plot(middle, real.mean(0), "k-", lw=2, label="real head CTs (mean)")
            for model in models:
                ax.plot(middle, [entry["results"][model]["shares_by_depth_mm"][s][tissue] for s in shells], "o-",
                        ms=3, label=model)
            ax.set_xscale("log")
            ax.set_title(name.split(".")[0] if row == 0 else "", fontsize=8)
            if column == 0:
                ax.set_ylabel(f"{tissue} share")
            if row == 1:
                ax.set_xlabel("depth under the skin (mm)")
    axes[0, 0].legend(fontsize=6)
    return _save(fig, path, "Where the HU classes sit: share of each shell under the skin that is fat (-400 to -30 "
                 "HU) or bone (>= 250 HU)\nsCTs of real MRs (no CT of these patients) against the two real head CTs", 9)


def level_figure(mr_levels: dict, ct_levels: dict, results: dict, path: Path) -> Path:
    """The head's cross-section (cm^2) per axial level of each real MR (black) and of each real CT placed at its
    level-matched alignment (dots: the levels where it is the MR's reference; dashed: the cross-sections disagree,
    not used)."""
    plt = _pyplot()

    voxel_cm2 = (C.GRID_MM / 10) ** 2
    fig, axes = plt.subplots(1, len(mr_levels), figsize=(2.6 * len(mr_levels), 4.2), sharex=True, squeeze=False)
    for ax, (name, levels) in zip(axes[0], mr_levels.items()):
        height = np.arange(len(levels.area)) * C.GRID_MM
        ax.plot(levels.area * voxel_cm2, height, "k-", lw=2.5, label="MR head")
        alignments = _alignments(results, name)
        for (ct_name, ct), colour in zip(ct_levels.items(), ("tab:red", "tab:blue")):
            aligned = alignments.get(ct_name)
            if aligned is None:
                continue
            ct_height = np.arange(len(ct.area)) * C.GRID_MM - aligned["shift_mm"]
            ax.plot(ct.area * voxel_cm2, ct_height, "-" if aligned["used"] else "--", color=colour, lw=0.8,
                    label=f"{ct_name.split('.')[0]} ({aligned['area_mismatch']:.2f})")
            if aligned["used"]:
                _, used = _reference_levels(levels, ct, aligned)
                ax.plot(ct.area[used] * voxel_cm2, ct_height[used], ".", color=colour, ms=3)
        ax.set_ylim(-5, len(levels.area) * C.GRID_MM + 5)
        ax.set_title(name.split(".")[0], fontsize=8)
        ax.set_xlabel("head cross-section (cm$^2$)")
        ax.legend(fontsize=5.5, loc="lower left")
    axes[0, 0].set_ylabel("height in the MR's volume (mm, superior up)")
    return _save(fig, path, "Level matching: each real head CT slid along the head's axis to where its cross-sections "
                 "best match the MR's (median relative mismatch in brackets;\ndots: the levels where it is the "
                 f"reference, dashed: mismatch > {C.MAX_AREA_MISMATCH}, not used)", 8)


def bone_level_figure(model_levels: dict, ct_levels: dict, results: dict, path: Path) -> Path:
    """The bone share (>= 250 HU) of the head per axial level of each real MR: each model's sCT (lines) and each real
    CT used as that MR's reference, at its aligned levels where the cross-sections agree (dots): where along the head
    an sCT has more or less bone than a real head."""
    plt = _pyplot()

    bone = [name for name, *_ in C.HU_CLASSES].index("bone")

    def share(counts: np.ndarray) -> np.ndarray:
        return counts[:, bone] / np.maximum(counts.sum(axis=1), 1)

    fig, axes = plt.subplots(1, len(model_levels), figsize=(2.6 * len(model_levels), 4.2), sharex=True,
                             squeeze=False)
    for ax, (name, by_model) in zip(axes[0], model_levels.items()):
        for label, levels in by_model.items():
            counted = ~np.isnan(levels.area)
            height = np.arange(len(levels.area)) * C.GRID_MM
            ax.plot(share(levels.counts)[counted], height[counted], "-", lw=1.2, label=label)
        head = next(iter(by_model.values()))
        alignments = _alignments(results, name)
        for (ct_name, ct), colour in zip(ct_levels.items(), ("k", "0.5")):
            aligned = alignments.get(ct_name)
            if aligned is None or not aligned["used"]:
                continue
            levels, used = _reference_levels(head, ct, aligned)
            ax.plot(share(ct.counts[used]), levels * C.GRID_MM, ".", color=colour, ms=3, label=ct_name.split(".")[0])
        ax.set_title(name.split(".")[0], fontsize=8)
        ax.set_xlabel("bone share of the head")
        ax.legend(fontsize=5.5, loc="lower right")
    axes[0, 0].set_ylabel("height in the MR's volume (mm, superior up)")
    return _save(fig, path, "Bone per axial level: sCTs of real MRs (lines; no CT of these patients) against the real "
                 "head CTs at the levels where they are the reference (dots)", 8)


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
