"""Progress events of long jobs (training): one JSON object per line, appended to ``<run>/events.jsonl``.

Every event has ``event`` (its kind), ``time`` (UNIX seconds) and ``run`` (the run folder). Kinds and fields:

==============  ====================================================================================
``warm_start``  file, sha256, networks (loaded from it), model (its name): a new run started from a model file
``start``       iteration (first to run), iterations (total), config, device, world_size, resumed
``iteration``   iteration, iterations, losses {name: value}, lr, seconds_per_iteration, eta_seconds
``validation``  iteration, metrics {name: value}
``preview``     iteration, path (PNG of MR | sCT | reconstructed MR), curves (PNG of the loss curves)
``checkpoint``  iteration, path
``stopped``     iteration, iterations, reason (a time budget ended training early; ``finished`` follows)
``finished``    iteration, model (the model bundle path), seconds
``error``       message, traceback
==============  ====================================================================================

Writers append whole lines and flush, so a follower (the Slicer training panel, ``follow_events``) polling the file
never sees half an event; a partial last line is left for the next poll.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

EVENT_KINDS = ("warm_start", "start", "iteration", "validation", "preview", "checkpoint", "stopped", "finished", "error")
EVENTS_FILE = "events.jsonl"


class EventWriter:
    """Appends events to ``<run>/events.jsonl`` and, optionally, echoes them to stdout (for a parent process)."""

    def __init__(self, run_dir: os.PathLike, echo: bool = False, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVENTS_FILE
        self.echo = echo
        self.enabled = enabled

    def emit(self, kind: str, **fields: Any) -> Optional[dict]:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {EVENT_KINDS}")
        if not self.enabled:
            return None
        event = {"event": kind, "time": time.time(), "run": str(self.run_dir), **fields}
        line = json.dumps(event, default=_jsonable) + "\n"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
        if self.echo:
            sys.stdout.write(line)
            sys.stdout.flush()
        return event


def parse_json_line(line: str) -> Optional[dict]:
    """One line of a child process's output -> a JSON object, or None for blank or other text."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def parse_event(line: str) -> Optional[dict]:
    """One line -> event dict, or None for blank/foreign lines (a process may print other text too)."""
    event = parse_json_line(line)
    return event if event is not None and event.get("event") in EVENT_KINDS else None


def read_new_events(path: os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Events of complete lines after byte ``offset``; returns them and the offset to poll from next time."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = [e for e in (parse_event(line) for line in complete.decode("utf-8").splitlines()) if e]
    return events, offset + len(complete)


def iter_events(path: os.PathLike) -> Iterator[dict]:
    """All events recorded in a run's events file."""
    yield from read_new_events(path)[0]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} in an event")
