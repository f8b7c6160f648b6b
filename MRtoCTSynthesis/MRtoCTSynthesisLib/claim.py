"""Exclusive claims on output folders, so that two runs writing into the same folder never replace each other's
results (issue 20): the second run is refused at once, naming the run that holds the folder.

A claim is an advisory ``flock`` on a small file in the system's temporary folder, named by a hash of the output
folder's resolved path (the output folder itself stays free of lock files, and an empty folder made by a failed run
can still be removed). The kernel releases it when the holder exits, however it exits (SIGKILL included), so a stale
claim cannot block a later run. It protects runs on one machine; where ``fcntl`` does not exist (Windows) no claim
is taken.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator, Sequence

try:
    import fcntl
except ImportError:          # Windows
    fcntl = None

CLAIMS_FOLDER = "mrtoct-claims"


class OutputInUseError(ValueError):
    """Another run is writing into the same output folder."""


def claim_file(folder: os.PathLike) -> Path:
    """The lock file that stands for ``folder`` (one per resolved path)."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8")).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / CLAIMS_FOLDER / f"{key}.lock"


def _take(folder: Path) -> IO:
    path = claim_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another run"
        handle.close()
        raise OutputInUseError(f"{folder} is being written by {holder}; wait until it has finished, or choose "
                               "another output folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{Path(sys.argv[0]).name or 'python'} (pid {os.getpid()})")
    handle.flush()
    return handle


@contextlib.contextmanager
def claimed(folders: Sequence[os.PathLike]) -> Iterator[None]:
    """Hold exclusive claims on ``folders`` for the duration of the block; refuse with OutputInUseError if another
    process holds one of them (the claims taken so far are released)."""
    held: list = []
    try:
        if fcntl is not None:
            for folder in folders:
                held.append(_take(Path(folder)))
        yield
    finally:
        for handle in held:
            handle.close()            # closing the descriptor releases the flock
