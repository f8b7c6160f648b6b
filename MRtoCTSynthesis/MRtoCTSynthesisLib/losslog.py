"""The losses.csv of a training run: one row per logged iteration, appended as training goes."""
from __future__ import annotations

import csv
from pathlib import Path

from .atomic import write_atomically


def append_row(path: Path, row: dict) -> None:
    """Append one row; the first row written also writes the header."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def truncate_rows(path: Path, iteration: int) -> None:
    """Drop rows logged after ``iteration`` (a resumed run logs them again), atomically."""
    rows = read_rows(path)
    kept = [r for r in rows if int(r["iteration"]) <= iteration]
    if len(kept) == len(rows):
        return

    def write(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
    write_atomically(path, write)
