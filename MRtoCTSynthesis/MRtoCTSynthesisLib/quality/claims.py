"""Several invocations of one benchmark share its work: run the same command N times (one per GPU, or one per CPU
core with --threads 1) and each trains the runs no other live process has claimed; the last to finish evaluates.

A claim is ``<out>/claims/<name>.json``, created exclusively (O_CREAT | O_EXCL, atomic on local file systems) and
holding the owner's host and PID; a claim of a process that no longer runs on this host is stale and taken over (the
run then resumes from its checkpoint). A claim from another host is trusted as live: its PID cannot be checked."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

CLAIMS = "claims"


def _path(out: Path, name: str) -> Path:
    return out / CLAIMS / f"{name}.json"


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed process its parent has not reaped yet: Linux /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS, Windows): kill(pid, 0) is all there is


def holder(out: Path, name: str) -> Optional[str]:
    """``"pid N on HOST"`` of the live process holding the claim ``name``, None when nobody (or a dead one) holds it."""
    try:
        owner = json.loads(_path(out, name).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable claim (being written?)"
    if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
        return None
    return f"pid {pid} on {host}"


def _take(out: Path, name: str) -> bool:
    path = _path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if holder(out, name) is not None:
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
        return True
    return False


@contextlib.contextmanager
def claimed(out: Path, name: str, wait: bool = False, poll_seconds: float = 5.0) -> Iterator[bool]:
    """Yields True when this process holds the claim ``name`` for the block (released after it), False when another
    live process holds it; ``wait``: wait until that process releases it (or dies), then hold it."""
    mine = _take(out, name)
    while wait and not mine:
        time.sleep(poll_seconds)
        mine = _take(out, name)
    try:
        yield mine
    finally:
        if mine:
            _path(out, name).unlink(missing_ok=True)
