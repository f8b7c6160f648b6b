"""Installing what the engine needs into Slicer's Python, the way the running Slicer version supports (no Qt).

- torch through the PyTorch extension's ``PyTorchUtils`` (it picks the build that matches the GPU driver);
- the other packages with pip, pinned by a constraints file to the versions of what Slicer ships, so nothing that
  Slicer itself uses is upgraded:
  - Slicer >= 5.12 has ``slicer.packaging.pip_ensure(requirements, constraints=, prompt_install=, requester=)``
    (it checks what is missing, asks, installs; a refusal raises RuntimeError("User declined package
    installation")), as Slicer's scripted-module template uses it;
  - Slicer 5.6 to 5.10 have only ``slicer.util.pip_install(requirements)`` (one argument: a string or a list of pip
    arguments): this module asks first and passes ``-c constraints.txt`` in the list.
"""
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import slicer

ENGINE_REQUIREMENTS = ("safetensors>=0.4", "scipy>=1.9", "scikit-image>=0.20", "pydicom>=2.3", "tqdm>=4.60")
TRAINING_REQUIREMENTS = ("matplotlib>=3.6",)
MINIMUM_TORCH_VERSION = "2.2"
# distributions that Slicer ships: pinned to their installed version while installing, so nothing upgrades them
SLICER_SHIPPED_DISTRIBUTIONS = ("numpy", "SimpleITK", "scipy", "pydicom", "requests", "Pillow", "setuptools",
                                "packaging", "torch")
DECLINED_BY_USER = "User declined package installation"  # slicer.packaging.pip_ensure's RuntimeError message


def missingRequirements(requirements) -> list:
    """The pip requirements (strings) that the installed distributions do not satisfy."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def setupPythonRequirements(requirements, askConfirmation: bool, requester: str) -> bool:
    """torch (PyTorch extension) and then ``requirements`` (pip). False if the user declined, True when everything
    is installed; RuntimeError with what to do if the PyTorch extension is missing, torch is too old or pip fails."""
    if not ensureTorch(askConfirmation, requester):
        return False
    return installRequirements(requirements, askConfirmation, requester)


def ensureTorch(askConfirmation: bool, requester: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(f"{requester} needs the 'PyTorch' extension: install it from the Extensions Manager, "
                               "restart Slicer, and try again.") from error
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            logging.info(f"{requester}: PyTorch is required; installing it (this may take several minutes)")
            try:
                torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                                torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
            except Exception as error:
                raise RuntimeError(installFailureMessage("PyTorch", error)) from error
            if torch is None:
                return False
    if missingRequirements([f"torch>={MINIMUM_TORCH_VERSION}"]):
        version = importlib.metadata.version("torch")
        raise RuntimeError(f"PyTorch {version} is installed but {requester} needs >= {MINIMUM_TORCH_VERSION}. Open "
                           f"the 'PyTorch Utils' module, uninstall PyTorch, restart Slicer, and install it again with "
                           f"the version requirement '>={MINIMUM_TORCH_VERSION}'.")
    return True


def slicerPackaging():
    """``slicer.packaging`` where it has ``pip_ensure`` (Slicer >= 5.12), else None."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def installRequirements(requirements, askConfirmation: bool, requester: str) -> bool:
    """pip-install what of ``requirements`` is missing (see the module docstring for the two Slicer APIs)."""
    missing = missingRequirements(requirements)
    if not missing:
        return True
    constraints = writeShippedConstraints()
    try:
        packaging = slicerPackaging()
        if packaging is not None:
            try:
                packaging.pip_ensure(missing, constraints=str(constraints), prompt_install=askConfirmation,
                                     requester=requester)
            except RuntimeError as error:
                if str(error) == DECLINED_BY_USER:
                    return False
                raise RuntimeError(installFailureMessage(", ".join(missing), error)) from error
            except Exception as error:  # subprocess.CalledProcessError: pip failed
                raise RuntimeError(installFailureMessage(", ".join(missing), error)) from error
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    f"{requester} needs these Python packages, which will be downloaded and installed now:\n\n"
                    + "\n".join(missing), f"{requester} - Install Python Packages"):
                return False
            try:
                slicer.util.pip_install(missing + ["-c", str(constraints)])
            except Exception as error:
                raise RuntimeError(installFailureMessage(", ".join(missing), error)) from error
    finally:
        constraints.unlink(missing_ok=True)
    importlib.invalidate_caches()
    still = missingRequirements(requirements)
    if still:
        raise RuntimeError(f"these Python packages are still missing after installation: {', '.join(still)}; "
                           "restart Slicer and try again")
    return True


def writeShippedConstraints() -> Path:
    """A pip constraints file pinning the installed version of every package Slicer ships."""
    lines = []
    for name in SLICER_SHIPPED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    handle, path = tempfile.mkstemp(prefix="MRtoCT-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return Path(path)


def installFailureMessage(what: str, error: Exception) -> str:
    """pip's own output is in the Python console; the usual causes are no internet access or a proxy."""
    return (f"Could not install {what}: {error}.\nSee the Python console for pip's output. If this computer is "
            "offline or behind a proxy, install the packages from a local wheel folder in Slicer's Python console with "
            "slicer.util.pip_install('--no-index --find-links /path/to/wheels <package>').")
