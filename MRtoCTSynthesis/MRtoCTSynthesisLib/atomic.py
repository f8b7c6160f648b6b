"""Atomic, verified writes: a published file is complete and read back, or the earlier file is untouched.

A write goes to a hidden temporary beside the target, named ``.<target name>.partial-<pid>-<random><suffix>``,
is flushed to disk (``fsync``: a full disk shows up here, not later), checked by a ``verify`` callback (e.g. a read-back
of the header or of every voxel: some writers, ITK's NIfTI writer among them, report a short write only on the
console), and only then renamed over the target. Every live temporary is registered, so an interrupt (Ctrl-C,
SIGTERM turned into an exception by ``signals.exceptions_on_termination``) removes it on the way out; a temporary
left by a killed process (SIGKILL, power loss) carries its process id and is removed by ``remove_stale_temporaries``
once that process is gone.

``OutputSet`` stages several outputs (files and folders) and publishes them together at the end, so a failure or an
interrupt half-way leaves neither a partial set nor a damaged earlier result.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

Verify = Callable[[Path], None]
_MARK = ".partial-"
_NAME_KEPT = 120          # bytes of the target's name in its temporary's (names end at 255 bytes on most systems)
_STALE = re.compile(r"^\..+\.partial-(\d+)-[0-9a-f]{8}")
_LIVE: set[Path] = set()  # temporaries of this process not yet published or removed


class OutputVerificationError(OSError):
    """A file was written but does not read back as written (disk full, a failing writer)."""


def temporary_path(dest: os.PathLike, suffix: str = ".part") -> Path:
    """A new hidden path beside ``dest`` (same file system, so the final rename is atomic), registered as live."""
    dest = Path(dest)
    name = dest.name   # a name that fits as the final name must fit as the temporary's too: keep its first bytes
    while len(name.encode("utf-8")) > _NAME_KEPT:
        name = name[:-1]
    temp = dest.with_name(f".{name}{_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    _LIVE.add(temp)
    return temp


def discard(path: Path) -> None:
    """Remove a temporary file or folder (missing is fine) and forget it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _LIVE.discard(path)


def discard_all_live() -> None:
    """Remove every temporary this process still holds (called on interrupts, before the process exits)."""
    for path in list(_LIVE):
        discard(path)


def _fsync(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
        return
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _check_written(temp: Path, verify: Optional[Verify]) -> None:
    if not temp.exists():
        raise OutputVerificationError(f"the writer produced no file {temp}")
    _fsync(temp)
    if verify is not None:
        verify(temp)


def write_atomically(dest: os.PathLike, write: Callable[[Path], None], suffix: str = ".part",
                     verify: Optional[Verify] = None) -> Path:
    """Call ``write(temp)`` on a temporary beside ``dest`` (ending in ``suffix``, for writers that choose the format
    by extension), check it (it exists, fsync, ``verify(temp)``), then rename it over ``dest``. On any error or
    interrupt the temporary is removed and ``dest`` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_path(dest, suffix)
    try:
        write(temp)
        _check_written(temp, verify)
        os.chmod(temp, 0o644)  # like a plain open(); the writer may have used mkstemp's 0600
        os.replace(temp, dest)
        _LIVE.discard(temp)
    except BaseException:
        discard(temp)
        raise
    return dest


def remove_stale_temporaries(folder: os.PathLike) -> list[Path]:
    """Remove temporaries in ``folder`` left by processes that no longer run; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _STALE.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            discard(path)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class OutputSet:
    """Outputs staged as verified temporaries and published together (``publish``) or all discarded (``discard``).

    ``replace=False`` entries refuse to publish over an existing path, which ``check`` reports before any work.
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []   # (temporary, destination)

    def file(self, dest: os.PathLike, write: Callable[[Path], None], suffix: str = ".part",
             verify: Optional[Verify] = None) -> Path:
        """Stage a file: ``write(temp)`` then the checks of ``write_atomically``; nothing is visible at ``dest`` yet."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = temporary_path(dest, suffix)
        self.staged.append((temp, dest))
        write(temp)
        _check_written(temp, verify)
        os.chmod(temp, 0o644)
        return dest

    def folder(self, dest: os.PathLike, write_into: Callable[[Path], None], verify: Optional[Verify] = None) -> Path:
        """Stage a folder: ``write_into(temp_folder)`` fills a new hidden folder that replaces ``dest`` on publish."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = temporary_path(dest, ".dir")
        self.staged.append((temp, dest))
        temp.mkdir()
        write_into(temp)
        _check_written(temp, verify)
        return dest

    def publish(self) -> list[Path]:
        """Rename every staged output over its destination (a replaced folder is removed only after its successor
        is in place); returns the destinations. SIGINT and SIGTERM wait until all are renamed, so an interrupt never
        splits the set."""
        with _signals_deferred():
            for temp, dest in self.staged:
                _publish_one(temp, dest)
        published = [dest for _, dest in self.staged]
        self.staged = []
        return published

    def discard(self) -> None:
        for temp, _ in self.staged:
            discard(temp)
        self.staged = []


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received inside the block are handled (by their previous handlers) right after it.

    Python handles signals in the main thread only, so elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.signal(kind, lambda signum, frame: received.append((signum, frame))) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum, frame in received[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _publish_one(temp: Path, dest: Path) -> None:
    if temp.is_dir() and dest.is_dir():
        old = temporary_path(dest, ".old")
        dest.rename(old)
        try:
            temp.rename(dest)
        except BaseException:
            old.rename(dest)
            raise
        discard(old)
    else:
        os.replace(temp, dest)
    _LIVE.discard(temp)
