"""Result tables of the benchmarks: aligned plain text, and CSV + JSON files with the machine recorded."""
from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch


def format_table(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as an aligned plain-text table."""
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as a Markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: list[dict], out: Path, name: str, echo: bool = True) -> Path:
    """Write ``<out>/<name>.csv`` and ``<name>.json`` (with the machine); print the table when ``echo``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2), encoding="utf-8")
    with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if echo:
        print("\n" + format_table(rows))
        print(f"\nwritten: {out / name}.csv, {out / name}.json ({machine})")
    return out / f"{name}.csv"
