"""Opening a panel imports neither torch nor CUDA into Slicer's process: the device list, what auto precision
chooses and the model list come from child processes (checked in a fresh Python, see open_panels_headless.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytest.importorskip("PySide6", reason="PySide6 is not installed; pip install PySide6-Essentials")


def test_opening_the_three_panels_imports_no_torch(slicer_core, model_cache):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(HERE / "open_panels_headless.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"torch_imported": False, "cuda_initialized": False}
