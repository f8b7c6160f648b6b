"""The Python interpreter that runs the engine's child processes.

Inside the Slicer application ``sys.executable`` is Slicer itself (starting it again would open a second Slicer), so
children run ``PythonSlicer``: found on PATH, beside ``sys.executable``, or in Slicer's bin folder. Outside Slicer
(console scripts, tests) ``sys.executable`` is a plain Python and is used.
"""
import os
import shutil
import sys

import slicer


def pythonExecutable() -> str:
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [shutil.which("PythonSlicer"), os.path.join(os.path.dirname(sys.executable), name)]
    app = getattr(slicer, "app", None)
    if app is not None and getattr(app, "slicerHome", None):
        candidates.append(os.path.join(app.slicerHome, "bin", name))
    return next((c for c in candidates if c and os.path.isfile(c)), sys.executable)
