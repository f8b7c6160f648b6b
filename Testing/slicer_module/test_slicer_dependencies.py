"""Installing the engine's packages on both Slicer APIs, against stand-ins with Slicer's real signatures
(``slicer_packaging_stand_in.py``): ``slicer.packaging.pip_ensure`` with constraints on Slicer >= 5.12, the one-argument
``slicer.util.pip_install`` on 5.6-5.10; a refusal is False, a pip failure says what to do."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest

import slicer_packaging_stand_in as stand_in

MISSING = ("scikit-image>=0.20", "tqdm>=4.60")


@pytest.fixture
def missing(module, monkeypatch):
    """Two of the engine's packages look uninstalled (by distribution and by import name) until an installer runs."""
    import importlib.util

    real_version, real_find_spec = importlib.metadata.version, importlib.util.find_spec
    state = {"installed": False}

    def version(name):
        if not state["installed"] and name in ("scikit-image", "tqdm"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    def find_spec(name, *args):
        return None if not state["installed"] and name in ("skimage", "tqdm") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return state


def _constraints(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def test_slicer_5_12_uses_pip_ensure_with_constraints(module, logic, missing, monkeypatch):
    import slicer

    calls = []
    packaging = stand_in.packaging_module(calls)
    original = packaging.pip_ensure

    def pip_ensure(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[-1][2]["pins"] = _constraints(kwargs["constraints"])
        missing["installed"] = True
        return result

    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **kwargs: packaging.pip_install(
        requirements, **kwargs), raising=False)  # what Slicer 5.12's slicer.util.pip_install does
    assert logic.setupPythonRequirements(askConfirmation=True) is True
    assert [c[0] for c in calls] == ["pip_ensure"]
    _, requirements, options = calls[0]
    assert requirements == list(MISSING)
    assert options["prompt_install"] is True and options["requester"] == "MR to CT Synthesis"
    assert f"numpy=={importlib.metadata.version('numpy')}" in options["pins"]
    assert not Path(options["constraints"]).exists()  # the temporary constraints file is removed


def test_slicer_5_12_refusal_is_false_not_an_error(module, logic, missing, monkeypatch):
    import slicer

    packaging = stand_in.packaging_module([], declined=True)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    assert logic.setupPythonRequirements(askConfirmation=True) is False


def test_slicer_5_10_uses_the_one_argument_pip_install(module, logic, missing, monkeypatch):
    import slicer

    calls = []
    pip_install = stand_in.util_pip_install_5_10(calls)

    def install(requirements):
        pip_install(requirements)
        calls[-1][2]["pins"] = _constraints(requirements[requirements.index("-c") + 1])
        missing["installed"] = True

    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # no slicer.packaging before 5.12
    monkeypatch.setattr(slicer.util, "pip_install", install, raising=False)
    asked = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: asked.append(text) or True,
                        raising=False)
    assert logic.setupPythonRequirements(askConfirmation=True) is True
    assert len(asked) == 1 and "scikit-image>=0.20" in asked[0]
    (_, requirements, options), = calls
    assert requirements[:2] == list(MISSING) and requirements[2] == "-c"
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in options["pins"]


def test_pip_failure_says_what_to_do_when_offline(module, logic, missing, monkeypatch):
    import slicer

    def pip_install(requirements):
        raise subprocess.CalledProcessError(1, ["pip", "install", *requirements])

    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    with pytest.raises(RuntimeError, match="offline"):
        logic.setupPythonRequirements(askConfirmation=False)


def test_torch_is_installed_through_the_pytorch_extension(module, logic, monkeypatch):
    import importlib.util

    asked = []

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            asked.append((askConfirmation, torchVersionRequirement))
            return None  # the user said no

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert logic.setupPythonRequirements(askConfirmation=True) is False
    assert asked == [(True, ">=2.2")]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        logic.setupPythonRequirements()
