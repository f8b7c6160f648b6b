"""How the benchmark speaks and records: progress lines, and JSON files written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _say(message: str) -> None:
    print(f"[quality] {message}", flush=True)


def _dump(path: Path, data) -> Path:
    from ..atomic import write_atomically

    return write_atomically(path, lambda temp: temp.write_text(json.dumps(data, indent=2, default=_plain), encoding="utf-8"))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _jsonable(value):
    return json.loads(json.dumps(value, default=_plain))
