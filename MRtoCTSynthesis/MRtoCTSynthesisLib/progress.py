"""Progress of a batch command (``mrtoct synthesize``, ``mrtoct segment``): one reporter, three outputs.

* JSON lines ``{"progress", "message"}`` on stdout, for a parent process (the Slicer modules) with ``json_lines``;
* a percent bar with ETA (tqdm) when stderr is a terminal;
* otherwise (a log file, a pipe, CI) one plain line per new state: a bar redrawn in a file repeats every state.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, TextIO


class BatchProgress:
    """Call with (fraction 0..1, message); ``close()`` at the end."""

    def __init__(self, json_lines: bool, stream: Optional[TextIO] = None) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stderr
        self.bar = None
        self.last_message: Optional[str] = None
        if not json_lines and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, unit="%", file=self.stream,
                            bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")

    def __call__(self, fraction: float, message: str) -> None:
        if self.json_lines:
            print(json.dumps({"progress": round(fraction, 4), "message": message}), flush=True)
        elif self.bar is not None:
            self.bar.n = 100 * fraction
            self.bar.set_description_str(message[:60], refresh=False)
            self.bar.refresh()
        elif message != self.last_message:
            self.last_message = message
            print(f"{100 * fraction:5.1f}% {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
