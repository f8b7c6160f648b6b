"""Durations and progress text for the panels' status lines (no Qt)."""
from typing import Optional


def formatDuration(seconds: Optional[float]) -> str:
    """'8 s', '2 min 05 s', '1 h 03 min' (None -> '')."""
    if seconds is None:
        return ""
    seconds = int(round(max(0.0, float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def etaText(update: dict) -> str:
    """' (about 12 s left)' for a progress update {"progress", "message", "eta_seconds"}, or ''."""
    if update.get("eta_seconds") is None or update["progress"] >= 1.0:
        return ""
    return f" (about {formatDuration(update['eta_seconds'])} left)"
