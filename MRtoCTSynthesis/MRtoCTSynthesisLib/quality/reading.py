"""The report's "Reading" section: statements generated from the numbers, each claim of the papers with its
p-value; no interpretation."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .formatting import _fmt, _p_text
from .settings import BASELINE, EFFECTS, METRIC_INFO, SATURATED_HU, SATURATED_SHARE, UNITS, YANG_METRICS, Options


def _test(tests: list[dict], anatomy: str, variant: str, reference: str, metric: str) -> Optional[dict]:
    for t in tests:
        if (t["anatomy"], t["variant"], t["reference"], t["metric"]) == (anatomy, variant, reference, metric):
            return t
    return None


def _summary(summary: list[dict], anatomy: str, variant: str) -> Optional[dict]:
    return next((r for r in summary if r["anatomy"] == anatomy and r["variant"] == variant), None)


def _saturated(summary: list[dict], anatomy: str, variant: str) -> bool:
    row = _summary(summary, anatomy, variant)
    return bool(row and np.isfinite(row["saturated_pct_mean"]) and row["saturated_pct_mean"] > SATURATED_SHARE)


def _compare_line(tests, summary, anatomy, variant, reference, metric, threshold) -> tuple[str, str]:
    """One generated sentence and its verdict: 'better' (significant at threshold), 'trend', 'worse', 'none'."""
    label, sign, decimals = METRIC_INFO[metric]
    t = _test(tests, anatomy, variant, reference, metric)
    if t is None or not np.isfinite(t["mean_difference"]):
        return f"{label}: not computable", "none"
    diff = t["mean_difference"]
    if diff == 0 or not np.isfinite(t["p"]):
        return (f"{label}: {variant} {_fmt(t['mean_variant'], decimals)} vs {reference} "
                f"{_fmt(t['mean_reference'], decimals)} (no difference or no test possible, n = {t['n']})"), "none"
    direction = ("lower" if diff < 0 else "higher")
    improved = diff * sign > 0
    sentence = (f"{label}: {variant} {_fmt(t['mean_variant'], decimals)} vs {reference} "
                f"{_fmt(t['mean_reference'], decimals)}, {direction} by {_fmt(abs(diff), decimals)}"
                f"{UNITS.get(metric, '')} (paired t-test {_p_text(t['p'])}, n = {t['n']})")
    if improved and t["p"] < threshold:
        return sentence, "better"
    if improved:
        return sentence, "trend"
    return sentence, "worse" if t["p"] < 0.05 else "worse-ns"


def _claim_word(verdict: str, level: str) -> str:
    """Whether a claim tested at p < ``level`` is reproduced, in words, for a verdict of ``_compare_line``."""
    return {"better": "reproduces", "trend": f"does not reproduce at p < {level} (same direction)",
            "worse": "does not reproduce (opposite, significant)",
            "worse-ns": "does not reproduce (opposite direction)", "none": "cannot test"}[verdict]


def reading(options: Options, plan: dict, summary: list[dict], tests: list[dict], real_rows: list[dict]) -> list[str]:
    """The 'Reading' section: statements generated from the numbers, each with its p-value; no interpretation."""
    lines = []
    variants = options.variants
    iterations = plan["iterations"]
    verdict_words = {"better": "as the paper claims (significant)", "trend": "same direction as the paper, not "
                     "significant at the paper's level", "worse": "opposite to the paper (significant at p < 0.05)",
                     "worse-ns": "opposite direction to the paper, not significant", "none": "no difference"}
    for setting in options.settings():
        a = setting.anatomy
        lines += _baseline_lines(summary, a, variants)
        lines.append(f"**{a.capitalize()} phantoms ({setting.paper} setting, n = {setting.test_subjects} test "
                     f"subjects, {iterations} iterations, {len(options.seeds)} training seed(s)).**")
        lines.append("")
        saturated = [v for v in variants if _saturated(summary, a, v)]
        shares = ", ".join(f"{v} {_fmt(_summary(summary, a, v)['saturated_pct_mean'], 1)} %" for v in variants)
        if saturated:
            lines.append(f"- Saturation: {', '.join(saturated)} output {SATURATED_HU:.0f} HU or less in more than "
                         f"{SATURATED_SHARE:.0f} % of the body (per variant: {shares}; the reference CT has "
                         + _fmt(_ct_air(options, a, summary), 1) + " % air in the body). The generator of a "
                         "saturated variant sits at tanh = -1 (sCT = -1000 HU) almost everywhere; its metrics describe "
                         "a near-constant image, so differences between saturated variants do not measure their "
                         "losses. This repeats the earlier observation at a small CPU budget; the budget was not "
                         "tuned around it.")
        else:
            lines.append("- Saturation: no variant has more than "
                         f"{SATURATED_SHARE:.0f} % of body voxels at {SATURATED_HU:.0f} HU or less (per variant: "
                         f"{shares}).")
        if BASELINE in variants and "yang2018" in variants:
            verdicts, sentences = [], []
            for metric in YANG_METRICS:
                sentence, verdict = _compare_line(tests, summary, a, "yang2018", BASELINE, metric, 0.001)
                verdicts.append(verdict)
                sentences.append(f"  - {sentence}: {verdict_words[verdict]}")
            count = verdicts.count("better")
            overall = ("reproduces" if count == len(YANG_METRICS) else
                       "partly reproduces" if count else "does not reproduce")
            lines.append(f"- Yang's main claim (yang2018 better than cyclegan in MAE, PSNR, SSIM and SSIM(HG), "
                         f"p < 0.001): this run {overall} it ({count} of {len(YANG_METRICS)} metrics better at "
                         f"p < 0.001){_both_saturated(saturated, 'yang2018')}.")
            lines += sentences
        if "yang2018" in variants and "paired" in variants:
            parts = []
            for metric in YANG_METRICS:
                t = _test(tests, a, "yang2018", "paired", metric)
                label, sign, decimals = METRIC_INFO[metric]
                if t is None:
                    continue
                gap = ""
                c = _summary(summary, a, BASELINE) if BASELINE in variants else None
                p_row, y_row = _summary(summary, a, "paired"), _summary(summary, a, "yang2018")
                upper = _test(tests, a, "paired", BASELINE, metric) if c is not None else None
                if upper is not None and np.isfinite(upper["p"]):
                    full = (p_row[f"{metric}_mean"] - c[f"{metric}_mean"]) * sign
                    closed = (y_row[f"{metric}_mean"] - c[f"{metric}_mean"]) * sign
                    if full > 0 and upper["p"] < 0.05:
                        share = 100 * closed / full
                        gap = ("; yang2018 is better than paired" if share > 100 else
                               "; yang2018 is not better than cyclegan" if share <= 0 else
                               f"; yang2018 covers {share:.0f} % of the cyclegan-to-paired difference")
                    else:
                        gap = (f"; paired is not significantly better than cyclegan ({_p_text(upper['p'])}), "
                               "so there is no gap to measure")
                parts.append(f"  - {label}: yang2018 {_fmt(t['mean_variant'], decimals)} vs paired "
                             f"{_fmt(t['mean_reference'], decimals)} ({_p_text(t['p'])}{gap})")
            lines.append("- Yang: yang2018 'produces similar results' to the cycleGAN trained with paired data "
                         "(paired t-test yang2018 vs paired; p >= 0.05 means no detectable difference at this n, "
                         "not equivalence):")
            lines += parts
        if BASELINE in variants and "paired" in variants:
            better = sum(_compare_line(tests, summary, a, "paired", BASELINE, m, 0.05)[1] == "better"
                         for m in YANG_METRICS)
            lines.append(f"- Upper bound: paired is better than cyclegan at p < 0.05 in {better} of "
                         f"{len(YANG_METRICS)} of Yang's metrics (Yang: paired is the best a cycleGAN can achieve).")
        if BASELINE in variants and "cyclegan-pbs" in variants:
            sentence, verdict = _compare_line(tests, summary, a, "cyclegan-pbs", BASELINE, "ssim_hg", 0.001)
            word = _claim_word(verdict, "0.001")
            lines.append(f"- Yang's position-based selection claim (cyclegan-pbs higher SSIM(HG) than cyclegan, "
                         f"p < 0.001): {word}{_both_saturated(saturated, 'cyclegan-pbs')}. {sentence}.")
        if BASELINE in variants and "hiasa2018" in variants:
            sentence, verdict = _compare_line(tests, summary, a, "hiasa2018", BASELINE, "mi_mr_sct", 0.01)
            word = _claim_word(verdict, "0.01")
            hg, _ = _compare_line(tests, summary, a, "hiasa2018", BASELINE, "ssim_hg", 0.05)
            bone, _ = _compare_line(tests, summary, a, "hiasa2018", BASELINE, "mae_bone", 0.05)
            lines.append(f"- Hiasa's claim (the gradient-consistency loss raises MI between MR and sCT, p < 0.01): "
                         f"{word}{_both_saturated(saturated, 'hiasa2018')}. {sentence}. "
                         f"Boundary proxies: {hg}; {bone}. Note: hiasa2018 also uses "
                         "lambda_cycle 3 where cyclegan uses 10, so this comparison is not a pure GC-loss ablation.")
        lines += _effect_lines(tests, summary, a, variants)
        lines.append("")
    if real_rows:
        lines.append("**Real head MR scans** (no ground truth; MI(MR, sCT) in the MR body mask, first seed):")
        lines.append("")
        for scan in sorted({r["scan"] for r in real_rows}):
            rows = [r for r in real_rows if r["scan"] == scan]
            best = max(rows, key=lambda r: r["mi_mr_sct"])
            lines.append(f"- {scan}: highest MI {best['variant']} ({best['mi_mr_sct']:.3f} nats); "
                         + ", ".join(f"{r['variant']} {r['mi_mr_sct']:.3f} (bone {r['bone_pct']:.1f} %, "
                                     f"<= -990 HU {r['saturated_pct']:.1f} %)" for r in rows) + ".")
        lines.append("")
    lines.append("**Limits of this run (fixed facts, not interpretation).** Digital phantoms, not patients; "
                 f"{iterations} training iterations per run versus the papers' 2e5; networks of ngf "
                 f"{options.net().ngf}, {options.net().n_blocks} residual blocks (papers: 64, 9); "
                 f"{len(options.seeds)} training seed(s) (variation between training runs is "
                 f"{'shown in the per-seed table' if len(options.seeds) > 1 else 'not measured'}); "
                 "p-values are not corrected for the number of comparisons (neither paper corrects them).")
    return lines


TARGETS = {"yang2018": 0.5, "paired": 0.35, "supervised": 0.35}  # issue 12: MAE as a fraction of the constant's


def _baseline_lines(summary: list[dict], anatomy: str, variants: Sequence[str]) -> list[str]:
    """Each model's MAE against the baselines: below the constant at all, and the targets of issue 12."""
    constant = _summary(summary, anatomy, "constant")
    if constant is None:
        return []
    lookup, floor = _summary(summary, anatomy, "mr-lookup"), _summary(summary, anatomy, "class-mean floor")
    lines = [f"**Against the baselines ({anatomy}).** Constant {_fmt(constant['mae_mean'], 1)} HU"
             + (f", MR lookup {_fmt(lookup['mae_mean'], 1)} HU ({_fmt(lookup['mae_vs_constant'], 2)} of the constant)"
                if lookup else "")
             + (f", class-mean floor {_fmt(floor['mae_mean'], 1)} HU ({_fmt(floor['mae_vs_constant'], 2)})"
                if floor else "") + ".", ""]
    for variant in variants:
        row = _summary(summary, anatomy, variant)
        if row is None:
            continue
        ratio = row["mae_vs_constant"]
        target = TARGETS.get(variant, 1.0)
        beats_lookup = lookup is not None and row["mae_mean"] < lookup["mae_mean"]
        lines.append(f"- {variant}: MAE {_fmt(row['mae_mean'], 1)} HU = {_fmt(ratio, 2)} of the constant's "
                     f"(target <= {target:g}: {'met' if ratio <= target else 'NOT met'}"
                     + (f"; {'better' if beats_lookup else 'not better'} than the MR lookup" if lookup else "")
                     + ").")
    lines.append("")
    return lines


def _effect_lines(tests: list[dict], summary: list[dict], anatomy: str, variants: Sequence[str]) -> list[str]:
    """One line per isolated effect (``EFFECTS``: the variant and a control that differs in that one thing)."""
    lines = []
    for effect, (variant, control) in EFFECTS.items():
        if variant in variants and control in variants:
            parts = [_compare_line(tests, summary, anatomy, variant, control, m, 0.05)[0] for m in ("mae", "ssim_hg",
                                                                                                     "mi_mr_sct")]
            lines.append(f"- Isolated effect of {effect} ({variant} vs {control}): " + "; ".join(parts) + ".")
    return lines


def _both_saturated(saturated: Sequence[str], variant: str) -> str:
    if variant in saturated and BASELINE in saturated:
        return (f" (both {variant} and {BASELINE} are saturated, see above: this comparison says little about "
                "the losses)")
    return ""


def _ct_air(options: Options, anatomy: str, summary: list[dict]) -> float:
    row = _summary(summary, anatomy, options.variants[0])
    return row.get("ct_air_pct_mean", float("nan")) if row else float("nan")
