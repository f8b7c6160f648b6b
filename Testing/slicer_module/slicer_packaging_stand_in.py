"""Stand-ins with the exact signatures of Slicer's package installers, read from Slicer's source
(Base/Python/slicer/packaging.py of Slicer 5.12/5.13, Base/Python/slicer/util.py of Slicer 5.10): a call with an
argument that Slicer's function does not take fails here as it fails there (TypeError). They record the calls and
install nothing."""
from __future__ import annotations

import importlib.machinery
import types


def packaging_module(calls: list, declined: bool = False) -> types.ModuleType:
    """``slicer.packaging`` of Slicer >= 5.12 (pip_ensure, pip_install)."""

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        calls.append(("pip_ensure", requirements, {"constraints": constraints, "prompt_install": prompt_install,
                                                   "requester": requester}))
        if declined:
            raise RuntimeError("User declined package installation")

    def pip_install(requirements, constraints=None, no_deps_requirements=None, skip_packages=None, blocking=True,
                    show_progress=True, requester=None, logCallback=None, completedCallback=None):
        calls.append(("pip_install", requirements, {"constraints": constraints}))

    def load_requirements(path):
        raise AssertionError("not used by this extension")

    module = types.ModuleType("slicer.packaging")
    module.__spec__ = importlib.machinery.ModuleSpec("slicer.packaging", None)  # found by importlib, as in Slicer
    module.pip_ensure, module.pip_install, module.load_requirements = pip_ensure, pip_install, load_requirements
    return module


def util_pip_install_5_10(calls: list):
    """``slicer.util.pip_install`` of Slicer 5.6 to 5.10: one argument, a string or a list of pip arguments."""

    def pip_install(requirements):
        calls.append(("util.pip_install", requirements, {}))

    return pip_install
