"""3D Slicer module "MR to CT Synthesis": MR volume -> synthetic CT (Hounsfield units).

Three layers (see the extension README):
- the engine, ``MRtoCTSynthesisLib`` (pure Python, no Slicer);
- ``MRtoCTSynthesisLogic``: MRML nodes in, MRML nodes out; blocking, usable from the Python console and scripts;
- ``MRtoCTSynthesisWidget``: the panel; runs the synthesis in a background process so Slicer never freezes.

Heavy packages (torch, SimpleITK, the engine) are imported only when used, so the module loads before PyTorch is
installed and can offer to install it.
"""
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

MODULE_DIR = Path(__file__).resolve().parent
if str(MODULE_DIR) not in sys.path:  # the engine package and MRtoCTCommon.py live next to this file
    sys.path.insert(0, str(MODULE_DIR))

import MRtoCTCommon  # noqa: E402  (the Slicer-layer code shared with "Train MR-to-CT model")

DEFAULT_MODEL = "phantom-head-demo"
LOAD_FROM_FILE = "__load_from_file__"
MINIMUM_TORCH_VERSION = "2.2"
# import name -> pip requirement (the engine's dependencies besides torch; SimpleITK and numpy ship with Slicer)
PYTHON_REQUIREMENTS = {
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.9",
    "skimage": "scikit-image>=0.20",
    "pydicom": "pydicom>=2.3",
    "tqdm": "tqdm>=4.60",
}
# name -> (label, window, level) in HU
CT_WINDOW_PRESETS = {
    "wide": ("CT wide (W 2000 / L 400)", 2000.0, 400.0),
    "bone": ("Bone (W 1000 / L 400)", 1000.0, 400.0),
    "soft": ("Soft tissue (W 400 / L 40)", 400.0, 40.0),
    "brain": ("Brain (W 80 / L 40)", 80.0, 40.0),
}
DEFAULT_WINDOW_PRESET = "wide"
QUALITY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
QUALITY_REFERENCE_PREFIX = "MRtoCTSynthesis.quality."
SOURCE_REFERENCE = "MRtoCTSynthesis.source"
RESULT_ATTRIBUTES = ("Model", "Device", "Seconds")


#
# Module
#


class MRtoCTSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR to CT Synthesis"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRtoCT extension contributors"]
        self.parent.helpText = """
Synthesize a CT (Hounsfield units) from an MR volume with a CycleGAN generator (structure-constrained, Yang 2018;
gradient-consistency, Hiasa 2018). Select the MR and a model, then click <b>Synthesize CT</b>. The synthetic CT
(sCT) gets the MR's exact geometry; an optional quality map shows where it deserves least trust, and the sCT can be
exported as a DICOM CT series for treatment planning.<br>
<b>The models shipped with the extension are trained on digital phantoms and are not for clinical use.</b>
"""
        self.parent.acknowledgementText = """
Implements H. Yang et al., "Unpaired brain MR-to-CT synthesis using a structure-constrained CycleGAN", DLMIA 2018,
and Y. Hiasa et al., "Cross-modality image synthesis from unpaired data using CycleGAN: effects of gradient
consistency loss and training data size", SASHIMI 2018. Module layout follows the TotalSegmentator and
MONAIAuto3DSeg Slicer extensions.
"""


#
# Pure helpers (no Qt): node <-> SimpleITK image, durations
#


def _lpsFromRas():
    import numpy as np

    return np.diag([-1.0, -1.0, 1.0])


def sitkImageFromVolumeNode(volumeNode):
    """A SimpleITK image (a copy) with the voxels and exact geometry of a scalar volume node.

    Geometry: the node's IJK-to-RAS matrix converted to LPS (SimpleITK's convention): direction * spacing =
    diag(-1, -1, 1) @ IJKToRAS[:3, :3], origin = diag(-1, -1, 1) @ IJKToRAS[:3, 3]. A parent transform of the node is
    not applied (the image is in the node's local frame). The node is not modified.
    """
    import numpy as np
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("the volume node has no image data")
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if components != 1:
        raise ValueError(f"volume '{volumeNode.GetName()}' has {components} components per voxel; a scalar (grey) "
                         "volume is needed")
    array = slicer.util.arrayFromVolume(volumeNode)  # (K, J, I) view on the node's voxels
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
    lps = _lpsFromRas() @ matrix[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def updateVolumeNodeFromSitkImage(volumeNode, image):
    """Set a volume node's voxels (deep copy) and IJK-to-RAS geometry from a 3D scalar SimpleITK image."""
    import numpy as np
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a 3D scalar image is needed")
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _lpsFromRas() @ (direction * np.array(image.GetSpacing(), float))
    matrix[:3, 3] = _lpsFromRas() @ np.array(image.GetOrigin(), float)
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return volumeNode


def formatDuration(seconds):
    """'8 s', '2 min 05 s', '1 h 03 min' (None -> '')."""
    if seconds is None:
        return ""
    seconds = int(round(max(0.0, float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def etaText(update):
    """' (about 12 s left)' for a progress update {"progress", "message", "eta_seconds"}, or ''."""
    if update.get("eta_seconds") is None or update["progress"] >= 1.0:
        return ""
    return f" (about {formatDuration(update['eta_seconds'])} left)"


#
# Widget
#


class MRtoCTSynthesisWidget(MRtoCTCommon.MRtoCTModuleWidget):
    """The panel; the parameter-node and scene template is ``MRtoCTCommon.MRtoCTModuleWidget``."""

    POLL_INTERVAL_MSEC = 200

    def __init__(self, parent=None):
        MRtoCTCommon.MRtoCTModuleWidget.__init__(self, parent)
        self._describedModel = None

    def setup(self):
        self.setupPanel("UI/MRtoCTSynthesis.ui", MRtoCTSynthesisLogic())

        self.populateModelComboBox()
        self.populateDeviceComboBox()
        self.ui.precisionComboBox.clear()
        self.ui.precisionComboBox.addItem("Automatic (half precision on GPU)", "auto")
        self.ui.precisionComboBox.addItem("Full precision (float32)", "float32")
        self.ui.windowPresetComboBox.clear()
        for name, (label, _, _) in CT_WINDOW_PRESETS.items():
            self.ui.windowPresetComboBox.addItem(label, name)
        self.ui.progressBar.setVisible(False)

        # GUI -> parameter node
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.outputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.precisionComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.qualityMapCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.dicomExportCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.dicomFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.windowPresetComboBox.connect("currentIndexChanged(int)", self.onWindowPresetChanged)
        self.ui.mrOpacitySliderWidget.connect("valueChanged(double)", self.onMROpacityChanged)

        # buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showQualityMapButton.connect("toggled(bool)", self.onShowQualityMap)

        self.initializeParameterNode()

    def stopRunningJob(self, reason):
        self.cancelJob()

    def enter(self):
        MRtoCTCommon.MRtoCTModuleWidget.enter(self)
        self.populateModelComboBox()  # models trained (e.g. in "Train MR-to-CT model") since the panel was built

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        MRtoCTCommon.MRtoCTModuleWidget.initializeParameterNode(self)
        if not self._parameterNode.GetNodeReference("InputVolume"):
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.SetNodeReferenceID("InputVolume", firstVolume.GetID())

    def showParameters(self, p):
        inputVolume = p.GetNodeReference("InputVolume")
        self.ui.inputVolumeSelector.setCurrentNode(inputVolume)
        self.ui.outputVolumeSelector.setCurrentNode(p.GetNodeReference("OutputVolume"))
        self._selectModel(p.GetParameter("Model"))
        self._selectData(self.ui.deviceComboBox, p.GetParameter("Device"))
        self._selectData(self.ui.precisionComboBox, p.GetParameter("Precision"))
        self._selectData(self.ui.windowPresetComboBox, p.GetParameter("WindowPreset"))
        self.ui.qualityMapCheckBox.checked = p.GetParameter("QualityMap") == "true"
        self.ui.dicomExportCheckBox.checked = p.GetParameter("DicomExport") == "true"
        self.ui.dicomFolderPathLineEdit.currentPath = p.GetParameter("DicomFolder")
        self.ui.dicomFolderPathLineEdit.enabled = p.GetParameter("DicomExport") == "true"
        if inputVolume:
            self.ui.outputVolumeSelector.baseName = f"{inputVolume.GetName()} sCT"
        self.ui.showQualityMapButton.enabled = p.GetNodeReference("QualityVolume") is not None
        self.updateButtonStates()

    def storeParameters(self, p):
        p.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        p.SetNodeReferenceID("OutputVolume", self.ui.outputVolumeSelector.currentNodeID)
        model = self.ui.modelComboBox.currentData
        if model and model != LOAD_FROM_FILE:
            p.SetParameter("Model", model)
        p.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
        p.SetParameter("Precision", self.ui.precisionComboBox.currentData or "auto")
        p.SetParameter("WindowPreset", self.ui.windowPresetComboBox.currentData or DEFAULT_WINDOW_PRESET)
        p.SetParameter("QualityMap", "true" if self.ui.qualityMapCheckBox.checked else "false")
        p.SetParameter("DicomExport", "true" if self.ui.dicomExportCheckBox.checked else "false")
        p.SetParameter("DicomFolder", self.ui.dicomFolderPathLineEdit.currentPath)

    def updateButtonStates(self):
        running = self._job is not None
        p = self._parameterNode
        ready = bool(p and p.GetNodeReference("InputVolume") and p.GetParameter("Model"))
        self.ui.applyButton.text = "Cancel" if running else "Synthesize CT"
        self.ui.applyButton.toolTip = ("Stop the synthesis; the scene is left as it was" if running else
                                       "Synthesize a CT from the input MR" if ready else
                                       "Select an input MR volume and a model")
        self.ui.applyButton.enabled = running or ready
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running

    # ------------------------------------------------------------------------------------------- model, device

    def populateModelComboBox(self):
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            try:
                models = self.logic.availableModels()
            except Exception as error:  # a broken registry must not break the panel
                logging.error(f"MRtoCTSynthesis: cannot list models: {error}")
                models = []
            for entry in models:
                label = entry["name"]
                if entry.get("source") == "local":
                    label += " (trained locally)"
                elif not entry.get("path"):
                    label += " (to download)"
                combo.addItem(label, entry["name"])
                combo.setItemData(combo.count - 1, entry.get("description", ""), qt.Qt.ToolTipRole)
            combo.insertSeparator(combo.count)
            combo.addItem("Load from file...", LOAD_FROM_FILE)
        finally:
            combo.blockSignals(wasBlocked)

    def _selectModel(self, model):
        combo = self.ui.modelComboBox
        if not model:
            return
        index = combo.findData(model)
        if index < 0 and os.path.isfile(model):  # a model file chosen earlier (e.g. restored with the scene)
            combo.insertItem(combo.count - 2, Path(model).name, model)
            combo.setItemData(combo.count - 3, model, qt.Qt.ToolTipRole)
            index = combo.findData(model)
        if index >= 0:
            combo.setCurrentIndex(index)
        if model != self._describedModel:  # reading the description may open the model file: only on change
            self.ui.modelInfoLabel.text = self.logic.modelDescription(model)
            self._describedModel = model

    def onModelChanged(self, index):
        if self._updatingGUIFromParameterNode:
            return
        if self.ui.modelComboBox.currentData == LOAD_FROM_FILE:
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose an MRtoCT model file", "",
                                                  "MRtoCT models (*.mrtoct.safetensors);;All files (*)")
            if path and self._parameterNode is not None:
                self._parameterNode.SetParameter("Model", path)
            self.updateGUIFromParameterNode()  # selects the chosen file, or the previous model if none was chosen
            return
        self.updateParameterNodeFromGUI()

    def populateDeviceComboBox(self):
        self.fillDeviceComboBox(self.logic.availableDevices())

    # ------------------------------------------------------------------------------------------- run, cancel

    def onApplyButton(self):
        if self._job is not None:
            self.cancelJob()
            return
        self.updateParameterNodeFromGUI()
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to start the CT synthesis.", waitCursor=True):
            if not self.checkPythonRequirements(
                    "PyTorch and the required Python packages are needed to synthesize a CT."):
                return
            model = self.resolveModel(p.GetParameter("Model"))
            if model is None:
                return
            self._job = self.logic.startBackgroundSynthesis(
                p.GetNodeReference("InputVolume"), model=model, device=p.GetParameter("Device"),
                precision=p.GetParameter("Precision"), qualityMap=p.GetParameter("QualityMap") == "true",
                outputVolume=p.GetNodeReference("OutputVolume"),
                python=shutil.which("PythonSlicer") or sys.executable)
        if self._job is None:
            return
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.format = "%p%"
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = "Starting (loading PyTorch and the model)..."
        self.updateButtonStates()
        self._pollTimer.start()

    def resolveModel(self, model):
        """A catalog model that is not installed yet is downloaded (after confirmation); returns the model or None."""
        if not self.logic.modelNeedsDownload(model):
            return model
        if not slicer.util.confirmOkCancelDisplay(f"Model '{model}' is not installed yet. Download it now?",
                                                  "Download model"):
            return None
        dialog = slicer.util.createProgressDialog(labelText=f"Downloading model '{model}'...", maximum=100)
        try:
            def progress(done, total):
                dialog.setValue(int(100 * done / max(1, total)))
                slicer.app.processEvents()

            return str(self.logic.downloadModel(model, progress=progress))
        finally:
            dialog.close()

    def onPollJob(self):
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        try:
            updates = job.process.poll()
        except Exception as error:
            self.cancelJob()
            slicer.util.errorDisplay(f"Lost track of the synthesis process: {error}")
            return
        if updates:
            self.ui.progressBar.setValue(int(100 * updates[-1]["progress"]))
            self.ui.progressBar.format = "%p%" + etaText(updates[-1])
            self.ui.statusLabel.text = updates[-1]["message"]
        if job.process.finished:
            self._pollTimer.stop()
            self.onJobFinished(job)

    def cancelJob(self):
        job = self._job
        if job is None:
            return
        self._pollTimer.stop()
        self.logic.cancelBackgroundSynthesis(job)
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        self.updateButtonStates()

    def onJobFinished(self, job):
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        p = self._parameterNode
        try:
            sctVolume = self.logic.finishBackgroundSynthesis(job)
        except Exception as error:
            self.ui.statusLabel.text = "CT synthesis failed."
            slicer.util.errorDisplay(f"CT synthesis failed.\n\n{str(error).splitlines()[0]}",
                                     detailedText=f"{error}\n\nProcess output:\n" + "\n".join(job.process.log))
            return
        if sctVolume is None:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
            return
        p.SetNodeReferenceID("OutputVolume", sctVolume.GetID())
        qualityVolumes = self.logic.qualityVolumes(sctVolume)
        p.SetNodeReferenceID("QualityVolume", next(iter(qualityVolumes.values())).GetID() if qualityVolumes else None)
        self.ui.showQualityMapButton.checked = False
        self.logic.setCTDisplay(sctVolume, p.GetParameter("WindowPreset"))
        self.logic.showResult(job.inputVolume(), sctVolume, mrOpacity=self.ui.mrOpacitySliderWidget.value, fit=True)
        status = (f"Done: '{sctVolume.GetName()}' in {formatDuration(job.process.finished_at - job.process.started_at)}"
                  f" on {sctVolume.GetAttribute('MRtoCTSynthesis.Device')}.")
        if p.GetParameter("DicomExport") == "true":
            folder = p.GetParameter("DicomFolder")
            try:
                files = self.logic.exportDicom(sctVolume, folder, referenceVolume=job.inputVolume())
                status += f" DICOM CT series ({len(files)} files) written to {folder}."
            except Exception as error:
                import traceback

                status += " The DICOM export failed."
                slicer.util.errorDisplay(f"The sCT was created but the DICOM export to {folder} failed.\n\n{error}",
                                         detailedText=traceback.format_exc())
        self.ui.statusLabel.text = status

    # ------------------------------------------------------------------------------------------- display

    def onWindowPresetChanged(self, index):
        self.updateParameterNodeFromGUI()
        sctVolume = self._parameterNode.GetNodeReference("OutputVolume") if self._parameterNode else None
        if sctVolume is not None and sctVolume.GetAttribute("MRtoCTSynthesis.Model"):
            self.logic.setCTDisplay(sctVolume, self.ui.windowPresetComboBox.currentData)

    def onMROpacityChanged(self, value):
        self.logic.setMROpacity(value)

    def onShowQualityMap(self, show):
        p = self._parameterNode
        sctVolume, qualityVolume = p.GetNodeReference("OutputVolume"), p.GetNodeReference("QualityVolume")
        if sctVolume is None or qualityVolume is None:
            return
        if show:
            self.logic.showQualityMap(sctVolume, qualityVolume)
        else:
            self.logic.showResult(sctVolume.GetNodeReference(SOURCE_REFERENCE), sctVolume,
                                  mrOpacity=self.ui.mrOpacitySliderWidget.value)
        self.ui.showQualityMapButton.text = "Hide quality map" if show else "Show quality map"


#
# Logic
#


class SynthesisJob:
    """A background synthesis started by ``MRtoCTSynthesisLogic.startBackgroundSynthesis``.

    ``process`` is the ``MRtoCTSynthesisLib.background.BackgroundSynthesis`` to ``poll()``; the scene is changed only by
    ``finishBackgroundSynthesis``, so a cancelled or failed job leaves no node behind.
    """

    def __init__(self, process, workDir, inputVolumeID, outputVolumeID, scene):
        self.process, self.workDir = process, workDir
        self.inputVolumeID, self.outputVolumeID, self.scene = inputVolumeID, outputVolumeID, scene

    def inputVolume(self):
        return self.scene.GetNodeByID(self.inputVolumeID)

    def outputVolume(self):
        return self.scene.GetNodeByID(self.outputVolumeID) if self.outputVolumeID else None

    def removeWorkDir(self):
        shutil.rmtree(self.workDir, ignore_errors=True)


class MRtoCTSynthesisLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, MRML nodes out. No Qt here: everything runs headless and from the Python console.

    Blocking (console, scripts)::

        logic = slicer.util.getModuleLogic("MRtoCTSynthesis")   # or MRtoCTSynthesisLogic()
        sct = logic.synthesize(mrNode, model="phantom-head-demo", device="auto")
        results = logic.synthesizeFiles(["a.nii.gz", "b.nrrd"], "/out", model="phantom-head-demo")

    Non-blocking (what the panel does): ``startBackgroundSynthesis`` -> poll ``job.process`` ->
    ``finishBackgroundSynthesis``.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def setDefaultParameters(self, parameterNode):
        defaults = {"Model": DEFAULT_MODEL, "Device": "auto", "Precision": "auto", "QualityMap": "false",
                    "DicomExport": "false", "DicomFolder": "", "WindowPreset": DEFAULT_WINDOW_PRESET}
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    # ------------------------------------------------------------------------------------------- dependencies

    @staticmethod
    def torchInstalled():
        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def missingRequirements():
        """pip requirements of the engine whose package cannot be imported."""
        return MRtoCTCommon.missingRequirements(PYTHON_REQUIREMENTS)

    def setupPythonRequirements(self, askConfirmation=True):
        """Install what is missing: torch through the PyTorch extension, then the other engine requirements with pip.

        Returns False if the user declined an installation, True when everything is importable. Nothing Slicer ships
        is upgraded. Raises RuntimeError with instructions if the PyTorch extension is missing, torch is too old, or
        pip fails (for example offline).
        """
        if not self.torchInstalled():
            try:
                import PyTorchUtils
            except ModuleNotFoundError as error:
                raise RuntimeError("MR to CT Synthesis needs the 'PyTorch' extension: install it from the Extensions "
                                   "Manager, restart Slicer, and try again.") from error
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                logging.info("MRtoCTSynthesis: PyTorch is required; installing it (this may take several minutes)")
                try:
                    torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                                    torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
                except Exception as error:
                    raise RuntimeError(_installFailureMessage("PyTorch", error)) from error
                if torch is None:
                    return False
        self._checkTorchVersion()
        return MRtoCTCommon.installMissingRequirements(PYTHON_REQUIREMENTS, askConfirmation, "MR to CT Synthesis")

    @staticmethod
    def _checkTorchVersion():
        import importlib.metadata

        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return
        if _versionTuple(version) < _versionTuple(MINIMUM_TORCH_VERSION):
            raise RuntimeError(f"PyTorch {version} is installed but MR to CT Synthesis needs >= "
                               f"{MINIMUM_TORCH_VERSION}. Open the 'PyTorch Utils' module, uninstall PyTorch, restart "
                               f"Slicer, and install it again with the version requirement "
                               f"'>={MINIMUM_TORCH_VERSION}'.")

    @staticmethod
    def _writeShippedConstraints():
        """A pip constraints file pinning the installed version of every package Slicer ships."""
        return MRtoCTCommon.writeShippedConstraints()

    # ------------------------------------------------------------------------------------------- models, devices

    @staticmethod
    def availableModels():
        """Catalog and locally trained models: dicts with name, description, source ("catalog"/"local"), path."""
        try:
            from MRtoCTSynthesisLib.modelfile import Catalog
        except ImportError:  # torch or safetensors not installed yet: read the catalog file itself
            import json

            folder = MODULE_DIR / "Resources" / "Models"
            catalog = json.loads((folder / "catalog.json").read_text(encoding="utf-8"))
            return [{"name": m["name"], "description": m.get("description", ""), "source": "catalog",
                     "path": str(folder / m["file"]) if (folder / m.get("file", "-")).is_file() else None}
                    for m in catalog.get("models", [])]
        return Catalog().list_models()

    def modelDescription(self, model):
        """One line about a model (catalog or file) for the panel; never raises."""
        try:
            for entry in self.availableModels():
                if entry["name"] == model:
                    return entry.get("description") or ""
            if os.path.isfile(model):
                from MRtoCTSynthesisLib.modelfile import read_metadata

                metadata = read_metadata(model)
                return f"{metadata['name']}: {metadata['description']} (license: {metadata['license']})"
        except Exception as error:
            return f"Cannot read this model: {error}"
        return ""

    def modelNeedsDownload(self, model):
        """True for a catalog model that has a download URL but no local file yet."""
        if os.path.isfile(str(model)):
            return False
        from MRtoCTSynthesisLib.modelfile import Catalog

        catalog = Catalog()
        if "url" not in catalog.models.get(str(model), {}):
            return False
        return not any(entry["name"] == model and entry["path"] for entry in catalog.list_models()
                       if entry["source"] == "catalog")

    @staticmethod
    def downloadModel(model, progress=None):
        """Download catalog model ``model`` into the model cache (sha256-checked); returns its path."""
        from MRtoCTSynthesisLib.modelfile import Catalog

        return Catalog().download(model, progress=progress)

    @staticmethod
    def availableDevices():
        """(device, label) pairs: automatic, CPU, and each GPU torch can see (torch is imported only if installed)."""
        devices = [("auto", "Automatic (GPU if available)"), ("cpu", "CPU")]
        if importlib.util.find_spec("torch") is None:
            return devices
        try:
            import torch

            for index in range(torch.cuda.device_count()):
                devices.append((f"cuda:{index}", f"GPU {index}: {torch.cuda.get_device_name(index)}"))
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                devices.append(("mps", "Apple GPU (MPS)"))
        except Exception as error:  # a broken CUDA setup must not break the panel
            logging.warning(f"MRtoCTSynthesis: cannot list GPUs: {error}")
        return devices

    # ------------------------------------------------------------------------------------------- blocking synthesis

    def synthesize(self, inputVolume, model=DEFAULT_MODEL, device="auto", outputNode=None, qualityMap=False,
                   precision="auto", batchSize=None, progress=None, cancel=None):
        """Synthesize a CT from ``inputVolume`` (blocking); returns the sCT scalar volume node.

        The sCT has the input's exact geometry (IJK-to-RAS, dimensions, parent transform), float32 HU voxels, a CT
        window/level and is named "<input name> sCT" (``outputNode`` given: that node is overwritten instead). With
        ``qualityMap`` the quality maps become volumes referenced by the sCT (see ``qualityVolumes``).
        ``progress(fraction, message)`` is called during the run; ``cancel()`` returning True stops it and raises
        ``SynthesisCancelled``. The input node is never modified, and on error or cancel the scene is unchanged.
        """
        from MRtoCTSynthesisLib.synthesis import synthesize

        self._checkNodes(inputVolume, outputNode)
        image = sitkImageFromVolumeNode(inputVolume)
        result = synthesize(image, model, device=device, batch_size=batchSize, precision=precision,
                            quality_map=qualityMap, progress=progress, cancel=cancel)
        return self._storeResult(inputVolume, result.sct, result.quality, outputNode,
                                 {"Model": result.model_name, "Device": result.device,
                                  "Seconds": f"{result.seconds:.2f}"})

    def synthesizeFiles(self, inputs, outputFolder, model=DEFAULT_MODEL, device="auto", qualityMap=False,
                        dicomFolder=None, precision="auto", batchSize=None, progress=None, cancel=None):
        """Synthesize CTs for many MR files (blocking, no scene change): ``<outputFolder>/<name>_sct.nii.gz`` each.

        ``inputs``: a list of volume files / DICOM series folders, or one folder whose volume files are all used.
        Returns the engine's per-file results (``input``, ``output``, ``error``, ``seconds``): one failing file is
        reported in its result and the others go on; a failed file leaves no output behind.
        """
        from MRtoCTSynthesisLib.synthesis import synthesize_files

        return synthesize_files(self.expandInputs(inputs), outputFolder, model, device=device,
                                quality_map=qualityMap, dicom_out=dicomFolder, progress=progress, cancel=cancel,
                                batch_size=batchSize, precision=precision)

    @staticmethod
    def expandInputs(inputs):
        """A folder of volume files -> its volume files (sorted); a DICOM folder or a list -> as given."""
        from MRtoCTSynthesisLib.volumes import VOLUME_SUFFIXES

        if isinstance(inputs, (str, os.PathLike)):
            folder = Path(inputs)
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)) \
                if folder.is_dir() else []
            return files or [folder]
        return [Path(p) for p in inputs]

    # ------------------------------------------------------------------------------------------- background synthesis

    def startBackgroundSynthesis(self, inputVolume, model=DEFAULT_MODEL, device="auto", precision="auto",
                                 qualityMap=False, outputVolume=None, python=None):
        """Start the synthesis in a child process (``python -m MRtoCTSynthesisLib.cli synthesize``) and return a
        ``SynthesisJob``. Poll ``job.process.poll()``; when ``job.process.finished``, call
        ``finishBackgroundSynthesis(job)``. The scene is not touched until then."""
        import SimpleITK as sitk
        from MRtoCTSynthesisLib.background import BackgroundSynthesis

        self._checkNodes(inputVolume, outputVolume)
        workDir = Path(tempfile.mkdtemp(prefix="MRtoCTSynthesis-"))
        try:
            inputPath = workDir / "input" / f"{_safeFileName(inputVolume.GetName())}.nrrd"
            inputPath.parent.mkdir()
            sitk.WriteImage(sitkImageFromVolumeNode(inputVolume), str(inputPath), False)
            process = BackgroundSynthesis([inputPath], workDir / "output", model=model, device=device,
                                          quality_map=qualityMap, precision=precision, python=python).start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return SynthesisJob(process, workDir, inputVolume.GetID(), outputVolume.GetID() if outputVolume else None,
                            inputVolume.GetScene())

    def cancelBackgroundSynthesis(self, job):
        """Kill the job's process tree and delete its files; the scene stays as it was."""
        job.process.cancel()
        job.removeWorkDir()

    def finishBackgroundSynthesis(self, job):
        """Load a finished job's sCT (and quality maps) into the scene; returns the sCT node, None if cancelled.
        Raises RuntimeError with the process's message if it failed. The job's files are deleted."""
        import SimpleITK as sitk
        from MRtoCTSynthesisLib.background import quality_outputs

        try:
            process = job.process
            if not process.finished:
                process.wait()
            if process.cancelled:
                return None
            if not process.succeeded:
                raise RuntimeError(process.error)
            inputVolume = job.inputVolume()
            if inputVolume is None:
                raise RuntimeError("the input volume was removed from the scene while the synthesis was running")
            record = process.results[0]
            sct = sitk.ReadImage(record["output"], sitk.sitkFloat32)
            quality = {name: sitk.ReadImage(str(path), sitk.sitkFloat32)
                       for name, path in quality_outputs(record).items()}
            return self._storeResult(inputVolume, sct, quality, job.outputVolume(), {
                "Model": record.get("model_name") or self._modelName(job.process.model),
                "Device": record.get("device") or job.process.device, "Seconds": f"{record.get('seconds', 0.0)}"})
        finally:
            job.removeWorkDir()

    @staticmethod
    def _modelName(model):
        """The name in a model file's metadata; a catalog or local model's name as is."""
        if os.path.isfile(str(model)):
            from MRtoCTSynthesisLib.modelfile import read_metadata

            return read_metadata(model)["name"]
        return str(model)

    # ------------------------------------------------------------------------------------------- results in the scene

    @staticmethod
    def _checkNodes(inputVolume, outputVolume):
        if inputVolume is None:
            raise ValueError("no input MR volume selected")
        if not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"'{inputVolume.GetName()}' is not a scalar (grey-level) volume")
        if inputVolume.GetImageData() is None:
            raise ValueError(f"volume '{inputVolume.GetName()}' has no voxels")
        if outputVolume is not None:
            if outputVolume is inputVolume or outputVolume.GetID() == inputVolume.GetID():
                raise ValueError("the output volume must not be the input MR: choose another volume or 'Create new'")
            if not outputVolume.IsA("vtkMRMLScalarVolumeNode") or outputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ValueError(f"output '{outputVolume.GetName()}' must be a scalar volume")

    def _storeResult(self, inputVolume, sct, quality, outputVolume, attributes):
        """Write engine outputs into the scene on the input's exact geometry; a failure leaves no new node."""
        dimensions = tuple(inputVolume.GetImageData().GetDimensions())
        for name, image in [("sCT", sct)] + list(quality.items()):
            if tuple(image.GetSize()) != dimensions:
                raise RuntimeError(f"the engine returned the {name} on another grid than the input "
                                   f"({image.GetSize()} voxels instead of {dimensions})")
        scene = inputVolume.GetScene()
        created = []
        try:
            if outputVolume is None:
                outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                       scene.GenerateUniqueName(f"{inputVolume.GetName()} sCT"))
                created.append(outputVolume)
            self._writeVolume(outputVolume, sct, inputVolume)
            for key, value in attributes.items():
                outputVolume.SetAttribute(f"MRtoCTSynthesis.{key}", str(value))
            outputVolume.SetNodeReferenceID(SOURCE_REFERENCE, inputVolume.GetID())
            self.setCTDisplay(outputVolume)
            for name, image in quality.items():
                role = QUALITY_REFERENCE_PREFIX + name
                qualityVolume = outputVolume.GetNodeReference(role)
                if qualityVolume is None:
                    label = name.replace("_", " ")
                    qualityVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
                        f"{outputVolume.GetName()} quality ({label})"))
                    created.append(qualityVolume)
                self._writeVolume(qualityVolume, image, inputVolume)
                qualityVolume.CreateDefaultDisplayNodes()
                qualityVolume.GetDisplayNode().SetAndObserveColorNodeID(QUALITY_COLOR_NODE_ID)
                qualityVolume.GetDisplayNode().AutoWindowLevelOn()
                outputVolume.SetNodeReferenceID(role, qualityVolume.GetID())
            self._placeBesideInSubjectHierarchy(inputVolume, [outputVolume] + [
                outputVolume.GetNodeReference(QUALITY_REFERENCE_PREFIX + name) for name in quality])
        except BaseException:
            for node in created:
                scene.RemoveNode(node)
            raise
        return outputVolume

    @staticmethod
    def _writeVolume(volumeNode, image, inputVolume):
        updateVolumeNodeFromSitkImage(volumeNode, image)
        volumeNode.CopyOrientation(inputVolume)  # the engine works on the input's grid: keep its matrix bit for bit
        volumeNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())

    @staticmethod
    def _placeBesideInSubjectHierarchy(inputVolume, nodes):
        """Put the outputs in the input's subject-hierarchy folder (its study, for DICOM data)."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(inputVolume.GetScene())
        inputItem = shNode.GetItemByDataNode(inputVolume) if shNode else 0
        if not inputItem:
            return
        parent = shNode.GetItemParent(inputItem)
        for node in nodes:
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.SetItemParent(item, parent)
            else:
                shNode.CreateItem(parent, node)

    @staticmethod
    def qualityVolumes(sctVolume):
        """Quality-map volumes of an sCT node, by map name ("cycle_residual", "structure_discrepancy")."""
        volumes = {}
        for index in range(sctVolume.GetNumberOfNodeReferenceRoles()):
            role = sctVolume.GetNthNodeReferenceRole(index)
            if role.startswith(QUALITY_REFERENCE_PREFIX) and sctVolume.GetNodeReference(role) is not None:
                volumes[role[len(QUALITY_REFERENCE_PREFIX):]] = sctVolume.GetNodeReference(role)
        return volumes

    @staticmethod
    def setCTDisplay(volumeNode, preset=DEFAULT_WINDOW_PRESET):
        """Grey colour map and a CT window/level (``CT_WINDOW_PRESETS``; all of them are offered as presets)."""
        if preset not in CT_WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; choose one of {sorted(CT_WINDOW_PRESETS)}")
        if volumeNode.GetDisplayNode() is None:
            volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.ResetWindowLevelPresets()
        for _, window, level in CT_WINDOW_PRESETS.values():
            display.AddWindowLevelPreset(window, level)
        _, window, level = CT_WINDOW_PRESETS[preset]
        display.AutoWindowLevelOff()
        display.SetWindowLevel(window, level)

    @staticmethod
    def showResult(inputVolume, sctVolume, mrOpacity=0.0, fit=False):
        """Slice views: sCT in the background, the MR in the foreground at ``mrOpacity`` (drag it to compare)."""
        slicer.util.setSliceViewerLayers(background=sctVolume, foreground=inputVolume, foregroundOpacity=mrOpacity,
                                         fit=fit)

    @staticmethod
    def showQualityMap(sctVolume, qualityVolume, opacity=0.6):
        """Slice views: the quality map (hot colours = least trust) over the sCT."""
        slicer.util.setSliceViewerLayers(background=sctVolume, foreground=qualityVolume, foregroundOpacity=opacity)

    @staticmethod
    def setMROpacity(opacity):
        slicer.util.setSliceViewerLayers(foregroundOpacity=opacity)

    # ------------------------------------------------------------------------------------------- DICOM

    def exportDicom(self, sctVolume, folder, referenceVolume=None, overwrite=False):
        """Write the sCT as a DICOM CT series (one file per slice) into ``folder``; returns the files.

        If ``referenceVolume`` (the MR) was loaded from DICOM, the series joins its patient, study and frame of
        reference, so a planning system shows the sCT beside the MR.
        """
        from MRtoCTSynthesisLib.dicom_export import write_ct_series

        if not folder:
            raise ValueError("no DICOM output folder selected")
        return write_ct_series(sitkImageFromVolumeNode(sctVolume), folder,
                               reference_dicom=self.referenceDicomFile(referenceVolume), overwrite=overwrite)

    @staticmethod
    def referenceDicomFile(volumeNode):
        """A DICOM file the volume was loaded from (via Slicer's DICOM database), or None."""
        if volumeNode is None:
            return None
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        path = database.fileForInstance(uids[0])
        return path if path and os.path.isfile(path) else None


_installFailureMessage = MRtoCTCommon.installFailureMessage  # the name the training module used


def _versionTuple(version):
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _safeFileName(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "volume"


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MRtoCTSynthesisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SynthesizePhantom()

    def _smallestModel(self, folder):
        """The demo model if installed, else a tiny random model (same file format, 32x32 slices)."""
        from MRtoCTSynthesisLib.modelfile import Catalog, save_untrained_model

        try:
            return str(Catalog().resolve(DEFAULT_MODEL))
        except Exception:
            pass
        return str(save_untrained_model(Path(folder) / "tiny-self-test.mrtoct.safetensors", "tiny-self-test"))

    def test_SynthesizePhantom(self):
        import numpy as np
        from MRtoCTSynthesisLib.phantom import make_phantom

        self.delayDisplay("Starting the test")
        logic = MRtoCTSynthesisLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        phantom = make_phantom("head", 0, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0))
        mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom MR")
        updateVolumeNodeFromSitkImage(mrNode, phantom.mr)
        mrNode.CreateDefaultDisplayNodes()
        before = slicer.util.arrayFromVolume(mrNode).copy()

        with tempfile.TemporaryDirectory() as folder:
            model = self._smallestModel(folder)
            sctNode = logic.synthesize(mrNode, model=model, device="cpu", qualityMap=True)
        self.delayDisplay("Synthesized")

        self.assertEqual(sctNode.GetName(), "phantom MR sCT")
        self.assertEqual(sctNode.GetImageData().GetDimensions(), mrNode.GetImageData().GetDimensions())
        sctMatrix, mrMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        sctNode.GetIJKToRASMatrix(sctMatrix)
        mrNode.GetIJKToRASMatrix(mrMatrix)
        np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(sctMatrix),
                                      slicer.util.arrayFromVTKMatrix(mrMatrix))
        hu = slicer.util.arrayFromVolume(sctNode)
        self.assertTrue(np.isfinite(hu).all())
        self.assertGreaterEqual(float(hu.min()), -1100.0)
        self.assertLessEqual(float(hu.max()), 3600.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(mrNode), before)
        self.assertEqual(set(logic.qualityVolumes(sctNode)), {"cycle_residual", "structure_discrepancy"})
        logic.showResult(mrNode, sctNode, mrOpacity=0.5)
        self.delayDisplay("Test passed")
