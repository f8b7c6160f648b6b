"""Numbers and p-values as the tables, figures and report print them."""
from __future__ import annotations

import numpy as np


def _fmt(value: float, decimals: int) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{decimals}f}"


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 1e-6" if p < 1e-6 else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def _p_text(p: float) -> str:
    """'p = 0.012' or 'p < 1e-6' (for sentences)."""
    text = _fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _mark(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "*" if p < 0.001 else ("+" if p < 0.05 else "")
