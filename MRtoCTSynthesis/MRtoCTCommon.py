"""Slicer-layer code shared by the "MR to CT Synthesis" and "Train MR-to-CT model" modules.

- ``MRtoCTModuleWidget``: the panel template both widgets follow: load the .ui, a poll timer for the background job,
  scene-close observers, the parameter node <-> GUI wiring (with the re-entrance guard), the device list and the
  "check the Python packages first" step before a run;
- the dependency helpers their Logic classes use (pip install of what is missing, pinned to what Slicer ships).
  No Qt in these: the Logic classes stay usable headless.

The engine (``MRtoCTSynthesisLib``) stays free of Slicer and Qt; this file is the Slicer layer. It is installed beside
the module files (see CMakeLists.txt) and, as every Python file there, discovered by Slicer as a scripted module: the
hidden ``MRtoCTCommon`` module below is what Slicer finds in it.
"""
import importlib.util
import os
import tempfile
from pathlib import Path

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

# distributions that Slicer ships: pinned to their installed version while installing, so nothing upgrades them
SLICER_SHIPPED_DISTRIBUTIONS = ("numpy", "SimpleITK", "scipy", "pydicom", "requests", "Pillow", "setuptools",
                                "packaging", "torch")


class MRtoCTCommon(ScriptedLoadableModule):
    """Hidden module: Slicer loads every Python file in the scripted-modules folder as a module."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MRtoCT common"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRtoCT extension contributors"]
        self.parent.helpText = "Code shared by the MR to CT Synthesis and Train MR-to-CT model modules."
        self.parent.acknowledgementText = ""
        self.parent.hidden = True


#
# Dependencies (no Qt: used by the Logic classes)
#


def missingRequirements(requirements):
    """pip requirements of ``requirements`` ({import name: pip requirement}) whose package cannot be imported."""
    return [requirement for module, requirement in requirements.items() if importlib.util.find_spec(module) is None]


def installMissingRequirements(requirements, askConfirmation, purpose):
    """pip-install what of ``requirements`` ({import name: pip requirement}) cannot be imported; nothing Slicer ships
    is upgraded. ``purpose`` starts the confirmation question ("Training needs these Python packages..."). Returns
    False if the user declined, True when everything is importable; raises RuntimeError with instructions if pip
    fails (for example offline) or a package is still missing."""
    missing = missingRequirements(requirements)
    if not missing:
        return True
    # Slicer with slicer.packaging (uv-based pip_install) shows the changes and asks by itself
    slicerAsks = importlib.util.find_spec("slicer.packaging") is not None
    if askConfirmation and not slicerAsks and not slicer.util.confirmOkCancelDisplay(
            f"{purpose} needs these Python packages, which will be downloaded and installed now:\n\n"
            + "\n".join(missing), "Install Python packages"):
        return False
    constraints = writeShippedConstraints()
    try:
        options = {"interactive": askConfirmation} if slicerAsks else {}
        slicer.util.pip_install(missing + ["-c", str(constraints)], **options)
    except Exception as error:
        if type(error).__name__ == "InstallationAbortedError":  # the user said no in Slicer's own dialog
            return False
        raise RuntimeError(installFailureMessage(", ".join(missing), error)) from error
    finally:
        constraints.unlink(missing_ok=True)
    importlib.invalidate_caches()
    still = missingRequirements(requirements)
    if still:
        raise RuntimeError(f"these Python packages are still missing after installation: {', '.join(still)}; "
                           "restart Slicer and try again")
    return True


def writeShippedConstraints():
    """A pip constraints file pinning the installed version of every package Slicer ships."""
    import importlib.metadata

    lines = []
    for name in SLICER_SHIPPED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    handle, path = tempfile.mkstemp(prefix="MRtoCTSynthesis-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return Path(path)


def installFailureMessage(what, error):
    """pip's own output is in the Python console; the usual causes are no internet access or a proxy."""
    return (f"Could not install {what}: {error}.\nSee the Python console for pip's output. If this computer is "
            "offline or behind a proxy, install the packages from a local wheel folder in Slicer's Python console with "
            "slicer.util.pip_install('--no-index --find-links /path/to/wheels <package>').")


#
# Widget template
#


class MRtoCTModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel template of the MRtoCT modules. A subclass calls ``setupPanel`` from its ``setup`` and provides:

    - ``showParameters(parameterNode)``: parameter node -> widgets (called with the re-entrance guard set);
    - ``storeParameters(parameterNode)``: widgets -> parameter node (called between StartModify / EndModify);
    - ``stopRunningJob(reason)``: cancel or stop the background job, if any;
    - ``populateDeviceComboBox()`` and ``onPollJob()``.

    Its Logic provides ``getParameterNode``, ``setDefaultParameters`` and ``setupPythonRequirements``.
    """

    POLL_INTERVAL_MSEC = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._job = None
        self._pollTimer = None

    def setupPanel(self, uiFile, logic):
        """The module's .ui in the panel (``self.ui``), the logic, the job's poll timer and the scene observers."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(uiFile))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = logic
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MSEC)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def stopRunningJob(self, reason):
        raise NotImplementedError

    def cleanup(self):
        self.stopRunningJob("Slicer is closing")
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.stopRunningJob("the scene was closed")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode:
            self.logic.setDefaultParameters(inputParameterNode)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            self.showParameters(self._parameterNode)
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        wasModified = p.StartModify()
        self.storeParameters(p)
        p.EndModify(wasModified)

    def showParameters(self, parameterNode):
        raise NotImplementedError

    def storeParameters(self, parameterNode):
        raise NotImplementedError

    @staticmethod
    def _selectData(comboBox, data):
        index = comboBox.findData(data)
        if index >= 0:
            comboBox.setCurrentIndex(index)

    # ------------------------------------------------------------------------------------------- devices, packages

    def fillDeviceComboBox(self, devices):
        """The device list: (device, label) pairs; no signal while it is refilled."""
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for device, label in devices:
            combo.addItem(label, device)
        combo.blockSignals(wasBlocked)

    def checkPythonRequirements(self, missingText):
        """Before a run (inside its error display): install what is missing (after confirmation) and list the GPUs if
        torch has just been installed. False, with ``missingText`` in the status line, if the user declined."""
        self.ui.statusLabel.text = "Checking Python packages..."
        slicer.app.processEvents()
        if not self.logic.setupPythonRequirements(askConfirmation=True):
            self.ui.statusLabel.text = missingText
            return False
        if self.ui.deviceComboBox.count <= 2:  # torch may have just been installed: list the GPUs
            self.populateDeviceComboBox()
            self._selectData(self.ui.deviceComboBox, self._parameterNode.GetParameter("Device"))
        return True
