"""Atomic file writes: a file is either complete or untouched, never half-written (killed runs included)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(dest: os.PathLike, write: Callable[[Path], None], suffix: str = ".part") -> Path:
    """Call ``write(temp)`` on a temporary file beside ``dest`` (ending in ``suffix``, for writers that choose the
    format by extension), then rename it over ``dest``. On any error the temporary file is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        os.chmod(temp, 0o644)  # mkstemp creates 0600
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return dest
