"""The losses.csv of a training run: one row per logged iteration, appended as training goes."""
from __future__ import annotations

import csv
from pathlib import Path

from .atomic import write_atomically


def append_row(path: Path, row: dict) -> None:
    """Append one row; the first row written also writes the header. A row with columns the header lacks (the
    generator losses after a discriminator warm-up) first rewrites the file with the widened header, atomically."""
    header = _header(path) if path.exists() else []
    if header and set(row) - set(header):
        header += [k for k in row if k not in header]
        _rewrite(path, header, read_rows(path))
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(row), extrasaction="ignore")
        if not header:
            writer.writeheader()
        writer.writerow(row)


def _header(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def _rewrite(path: Path, fieldnames: list, rows: list) -> None:
    def write(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write)


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
    _rewrite(path, list(rows[0]), kept)
