"""3D Slicer module "MR to CT Synthesis": MR volume -> synthetic CT (Hounsfield units).

This file declares the module, its panel (``MRtoCTSynthesisWidget``) and its self-test. The logic
(``MRtoCTSlicer.synthesis_logic.MRtoCTSynthesisLogic``: MRML nodes in, MRML nodes out, blocking or in a child process)
and the rest of the Slicer layer are in the ``MRtoCTSlicer`` package; the engine is ``MRtoCTSynthesisLib``.
The panel never imports torch: synthesis, the device list and the model list run in child processes.
"""
import os
import sys
import tempfile
from pathlib import Path

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

MODULE_DIR = Path(__file__).resolve().parent
if str(MODULE_DIR) not in sys.path:  # the engine and the Slicer-layer package live next to this file
    sys.path.insert(0, str(MODULE_DIR))

from MRtoCTSlicer import display  # noqa: E402
from MRtoCTSlicer.choices import fillComboBox, precisionItems  # noqa: E402
from MRtoCTSlicer.formatting import formatDuration  # noqa: E402
from MRtoCTSlicer.interpreter import pythonExecutable  # noqa: E402
from MRtoCTSlicer.nodes import updateVolumeNodeFromSitkImage  # noqa: E402
from MRtoCTSlicer.panel import MRtoCTModuleWidget  # noqa: E402
from MRtoCTSlicer.sampledata import registerSampleData  # noqa: E402
from MRtoCTSlicer.selftest_data import smallestSynthesisModel  # noqa: E402
from MRtoCTSlicer.synthesis_logic import (  # noqa: E402,F401  (the logic is part of this module's console API)
    DEFAULT_MODEL, SOURCE_REFERENCE, MRtoCTSynthesisLogic,
)

LOAD_FROM_FILE = "__load_from_file__"


#
# Module
#


class MRtoCTSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR to CT Synthesis"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["MR to CT Synthesis developers"]
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
consistency loss and training data size", SASHIMI 2018. Module layout follows the SlicerNNUNet, TotalSegmentator and
MONAIAuto3DSeg Slicer extensions.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Widget
#


class MRtoCTSynthesisWidget(MRtoCTModuleWidget):
    """The panel over ``parameters.SynthesisParameters``; Synthesize CT starts a child process that the timer
    follows."""

    def __init__(self, parent=None):
        MRtoCTModuleWidget.__init__(self, parent)
        self.models = []  # the model list entries (``Catalog.list_models``) from the last probe

    def setup(self):
        self.setupPanel("UI/MRtoCTSynthesis.ui", MRtoCTSynthesisLogic(), dataComboBoxes={
            "device": "deviceComboBox", "precision": "precisionComboBox", "windowPreset": "windowPresetComboBox"})
        fillComboBox(self.ui.windowPresetComboBox,
                     [(label, name) for name, (label, _, _) in display.CT_WINDOW_PRESETS.items()])
        self.showModels([])
        self.onDevicesChanged()
        self.ui.progressBar.setVisible(False)

        # the widgets with a SlicerParameterName (.ui) and the combo boxes above are bound by setParameterNode
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.windowPresetComboBox.currentIndexChanged.connect(self.onWindowPresetChanged)
        self.ui.mrOpacitySliderWidget.valueChanged.connect(display.setMROpacity)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.showQualityMapButton.toggled.connect(self.onShowQualityMap)

        self.initializeParameterNode()
        self.refreshDevices()

    def enter(self):
        MRtoCTModuleWidget.enter(self)
        self.refreshModels()  # models trained (e.g. in "Train MR-to-CT model") since the panel was built

    def stopRunningJob(self, reason):
        self.cancelJob()

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        MRtoCTModuleWidget.initializeParameterNode(self)
        self.setFirstScalarVolumeAsInput()

    def showParameters(self, p):
        self.showModels(self.models)
        self.onDevicesChanged()  # the precision menu's "auto" label is the selected device's
        self.ui.dicomFolderPathLineEdit.enabled = p.dicomExport
        if p.inputVolume:
            self.ui.outputVolumeSelector.baseName = f"{p.inputVolume.GetName()} sCT"
        self.ui.showQualityMapButton.enabled = p.qualityVolume is not None
        self.updateButtonStates()

    def updateButtonStates(self):
        running = self._job is not None
        p = self._parameterNode
        ready = bool(p and p.inputVolume and p.model)
        self.ui.applyButton.text = "Cancel" if running else "Synthesize CT"
        self.ui.applyButton.toolTip = ("Stop the synthesis; the scene is left as it was" if running else
                                       "Synthesize a CT from the input MR" if ready else
                                       "Select an input MR volume and a model")
        self.ui.applyButton.enabled = running or ready
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running

    # ------------------------------------------------------------------------------------------- models, devices

    def refreshModels(self):
        """Ask a child process for the model list (the model code imports torch)."""
        from MRtoCTSynthesisLib.background import model_list_probe

        self.startProbe(model_list_probe(python=pythonExecutable()),
                        lambda result: self.showModels((result or {}).get("models") or self.models))

    def showModels(self, models):
        """Refill the model combo box; the parameter node's model stays selected (a model file too)."""
        self.models = list(models)
        chosen = self._parameterNode.model if self._parameterNode is not None else None
        items = [(entry["name"] + (" (trained locally)" if entry.get("source") == "local" else
                                   "" if entry.get("path") else " (to download)"), entry["name"],
                  entry.get("description", "")) for entry in self.models]
        if chosen and all(entry["name"] != chosen for entry in self.models) and os.path.isfile(chosen):
            items.append((Path(chosen).name, chosen, chosen))  # a model file chosen earlier
        items.append(("Load from file...", LOAD_FROM_FILE))
        fillComboBox(self.ui.modelComboBox, items, selected=chosen, separatorBefore=LOAD_FROM_FILE)
        entry = next((e for e in self.models if e["name"] == chosen), None)
        self.ui.modelInfoLabel.text = entry.get("description", "") if entry else (chosen or "")

    def onModelChanged(self, index):
        """The model combo box is bound by hand: it is refilled at run time and "Load from file..." is no model."""
        if self._parameterNode is None:
            return
        model = self.ui.modelComboBox.currentData
        if model == LOAD_FROM_FILE:
            model = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose an MRtoCT model file", "",
                                                   "MRtoCT models (*.mrtoct.safetensors);;All files (*)")
        if model:
            self._parameterNode.model = model
        self.showModels(self.models)  # selects the chosen model, or the previous one if no file was chosen

    def onDevicesChanged(self):
        """The precision menu; its "auto" item says what auto chooses on the selected device."""
        chosen = self._parameterNode.precision if self._parameterNode is not None else None
        fillComboBox(self.ui.precisionComboBox, precisionItems(
            self.devices, self.automaticChoices, self.ui.deviceComboBox.currentData or "auto"), selected=chosen)

    # ------------------------------------------------------------------------------------------- run, cancel

    def onApplyButton(self):
        if self._job is not None:
            self.cancelJob()
            return
        p = self._parameterNode
        job = None
        with slicer.util.tryWithErrorDisplay("Failed to start the CT synthesis.", waitCursor=True):
            if not self.checkPythonRequirements(
                    "PyTorch and the required Python packages are needed to synthesize a CT."):
                return
            model = self.resolveModel(p.model)
            if model is None:
                return
            job = self.logic.startBackgroundSynthesis(p.inputVolume, model=model, device=p.device,
                                                      precision=p.precision, qualityMap=p.qualityMap,
                                                      outputVolume=p.outputVolume, inputIsMR=p.inputIsMR)
        if job is None:
            return
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.format = "%p%"
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = "Starting (loading PyTorch and the model)..."
        self.startPolling(job)
        self.updateButtonStates()

    def resolveModel(self, model):
        """A catalog model that is not installed yet is downloaded (after confirmation); returns the model or None."""
        entry = next((e for e in self.models if e["name"] == model), None)
        if entry is None or entry.get("path") or not entry.get("url"):
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

    def cancelBackgroundJob(self, job):
        self.logic.cancelBackgroundSynthesis(job)

    def onJobFinished(self, job):
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        p = self._parameterNode
        try:
            sctVolume = self.logic.finishBackgroundSynthesis(job)
        except Exception as error:
            self.ui.statusLabel.text = f"CT synthesis failed: {str(error).splitlines()[0]}"
            slicer.util.errorDisplay(f"CT synthesis failed.\n\n{str(error).splitlines()[0]}",
                                     detailedText=f"{error}\n\nProcess output:\n" + "\n".join(job.process.log))
            return
        if sctVolume is None:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
            return
        qualityVolumes = self.logic.qualityVolumes(sctVolume)
        with slicer.util.NodeModify(p):
            p.outputVolume = sctVolume
            p.qualityVolume = next(iter(qualityVolumes.values())) if qualityVolumes else None
        self.ui.showQualityMapButton.checked = False
        display.setCTDisplay(sctVolume, p.windowPreset)
        display.showResult(job.inputVolume(), sctVolume, mrOpacity=self.ui.mrOpacitySliderWidget.value, fit=True)
        status = (f"Done: '{sctVolume.GetName()}' in {formatDuration(job.process.finished_at - job.process.started_at)}"
                  f" on {sctVolume.GetAttribute('MRtoCTSynthesis.Device')}.")
        if p.dicomExport:
            folder = p.dicomFolder
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
        sctVolume = self._parameterNode.outputVolume if self._parameterNode is not None else None
        if sctVolume is not None and sctVolume.GetAttribute("MRtoCTSynthesis.Model"):
            display.setCTDisplay(sctVolume, self.ui.windowPresetComboBox.currentData)

    def onShowQualityMap(self, show):
        p = self._parameterNode
        sctVolume, qualityVolume = p.outputVolume, p.qualityVolume
        if sctVolume is None or qualityVolume is None:
            return
        if show:
            display.showQualityMap(sctVolume, qualityVolume)
        else:
            display.showResult(sctVolume.GetNodeReference(SOURCE_REFERENCE), sctVolume,
                               mrOpacity=self.ui.mrOpacitySliderWidget.value)
        self.ui.showQualityMapButton.text = "Hide quality map" if show else "Show quality map"


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MRtoCTSynthesisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SynthesizePhantom()

    def test_SynthesizePhantom(self):
        import numpy as np
        from MRtoCTSynthesisLib.phantom import make_phantom
        from MRtoCTSynthesisLib.synthesis import load_bundle, quality_maps_of

        self.delayDisplay("Starting the test")
        logic = MRtoCTSynthesisLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        phantom = make_phantom("head", 0, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0))
        mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom MR")
        updateVolumeNodeFromSitkImage(mrNode, phantom.mr)
        mrNode.CreateDefaultDisplayNodes()
        before = slicer.util.arrayFromVolume(mrNode).copy()

        with tempfile.TemporaryDirectory() as folder:
            model = smallestSynthesisModel(folder)
            sctNode = logic.synthesize(mrNode, model=model, device="cpu", qualityMap=True)
            expectedMaps = set(quality_maps_of(load_bundle(model)))  # no cycle residual from a one-way model
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
        self.assertEqual(set(logic.qualityVolumes(sctNode)), expectedMaps)
        logic.showResult(mrNode, sctNode, mrOpacity=0.5)
        self.delayDisplay("Test passed")
