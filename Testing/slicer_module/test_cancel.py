"""Cancel returns within a second (the GUI waits for it), even when an escaped grandchild keeps the pipes open."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from MRtoCTSynthesisLib.background import BackgroundSynthesis

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(os.name == "nt", reason="fork")
def test_cancel_returns_within_a_second_with_an_escaped_grandchild(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    job = BackgroundSynthesis([tmp_path / "in.nrrd"], tmp_path / "out", model="unused", module="escaping_child",
                              extra_pythonpath=[HERE])
    job.python_command = lambda *arguments, module=None: [sys.executable, str(HERE / "escaping_child.py"),
                                                           str(pid_file)]
    job.start()
    try:
        deadline = time.time() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        started = time.time()
        job.cancel()
        assert time.time() - started < 1.0
        assert job.finished and job.cancelled and not job.succeeded
        assert not job.staging.exists()
    finally:
        if pid_file.is_file() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
