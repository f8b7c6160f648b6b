"""3D Slicer module "MR to CT Segment": bones and muscles from an MR through its synthetic CT (Hiasa 2018).

This file declares the module, its panel (``MRtoCTSegmentWidget``) and its self-test. The logic
(``MRtoCTSlicer.segment_logic.MRtoCTSegmentLogic``) and the rest of the Slicer layer are in the ``MRtoCTSlicer``
package (installed by the MR to CT Synthesis module, on which this one depends); the engine is ``MRtoCTSegmentLib``.
The panel runs ``mrtoct segment`` in a child process and follows it from a timer.
"""
import sys
from pathlib import Path

import qt

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

MODULE_DIR = Path(__file__).resolve().parent
# installed: every module file and package sits in one folder; source tree: MRtoCTSynthesis is a sibling
for _folder in (MODULE_DIR, MODULE_DIR.parent / "MRtoCTSynthesis"):
    if _folder.is_dir() and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from MRtoCTSlicer.choices import fillComboBox  # noqa: E402
from MRtoCTSlicer.formatting import formatDuration  # noqa: E402
from MRtoCTSlicer.interpreter import pythonExecutable  # noqa: E402
from MRtoCTSlicer.nodes import updateVolumeNodeFromSitkImage  # noqa: E402
from MRtoCTSlicer.panel import MRtoCTModuleWidget  # noqa: E402
from MRtoCTSlicer.selftest_data import tinySegmentationModels  # noqa: E402
from MRtoCTSlicer.segment_logic import (  # noqa: E402,F401  (the logic is part of this module's console API)
    SEG_MODEL_SUFFIX, SOURCE_REFERENCE, MRtoCTSegmentLogic,
)

LOAD_FROM_FILE = "__load_from_file__"


#
# Module
#


class MRtoCTSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR to CT Segment"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = ["MRtoCTSynthesis"]
        self.parent.contributors = ["MR to CT Synthesis developers"]
        self.parent.helpText = """
Segment bones and muscles from an MR volume through its synthetic CT (Hiasa 2018): the sCT is synthesized on the fly
with the chosen synthesis model (or an existing sCT is used), then a 2D U-Net labels the MR + sCT. The result is a
segmentation with the MR's geometry, one named, coloured segment per structure with standard terminology.<br>
<b>Models trained on digital phantoms are not for clinical use.</b>
"""
        self.parent.acknowledgementText = """
Implements the segmentation part of Y. Hiasa et al., "Cross-modality image synthesis from unpaired data using
CycleGAN: effects of gradient consistency loss and training data size", SASHIMI 2018. Module layout follows the
TotalSegmentator Slicer extension.
"""


#
# Widget
#


class MRtoCTSegmentWidget(MRtoCTModuleWidget):
    """The panel over ``parameters.SegmentParameters``: Segment starts ``mrtoct segment`` in a child process; Cancel
    kills it and leaves the scene as it was; a failure shows its message in the status line and a message box."""

    def __init__(self, parent=None):
        MRtoCTModuleWidget.__init__(self, parent)
        self.segmentationModels, self.synthesisModels = [], []

    def setup(self):
        self.setupPanel("UI/MRtoCTSegment.ui", MRtoCTSegmentLogic(), dataComboBoxes={
            "synthesisModel": "synthesisModelComboBox", "device": "deviceComboBox"})
        self.ui.progressBar.setVisible(False)
        # the widgets with a SlicerParameterName (.ui) and the combo boxes above are bound by setParameterNode
        self.ui.segmentationModelComboBox.currentIndexChanged.connect(self.onSegmentationModelChanged)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.initializeParameterNode()
        self.refreshDevices()

    def enter(self):
        MRtoCTModuleWidget.enter(self)
        self.refreshModels()

    def stopRunningJob(self, reason):
        self.cancelJob()

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        MRtoCTModuleWidget.initializeParameterNode(self)
        self.setFirstScalarVolumeAsInput()

    def showParameters(self, p):
        self.showModelChoices()
        self.ui.synthesisModelComboBox.enabled = p.sctVolume is None
        self.ui.modelInfoLabel.text = p.model
        self.updateButtonStates()

    def updateButtonStates(self):
        running = self._job is not None
        p = self._parameterNode
        ready = bool(p and p.inputVolume and p.model)
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.applyButton.toolTip = ("Stop the segmentation; the scene is left as it was" if running else
                                       "Segment bones and muscles of the input MR" if ready else
                                       "Select an input MR volume and a segmentation model")
        self.ui.applyButton.enabled = running or ready
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = not running

    # ------------------------------------------------------------------------------------------- models

    def refreshModels(self):
        """Segmentation model files (a folder scan, cheap) now; synthesis models from a child process."""
        from MRtoCTSynthesisLib.background import model_list_probe

        self.segmentationModels = [str(path) for path in self.logic.availableModels()]
        self.showModelChoices()
        self.startProbe(model_list_probe(python=pythonExecutable()), self.onSynthesisModelsListed)

    def onSynthesisModelsListed(self, result):
        if result is not None:
            self.synthesisModels = [entry["name"] for entry in result.get("models", [])]
        self.showModelChoices()

    def showModelChoices(self):
        """Refill both model combo boxes; the parameter node's choices stay selected."""
        p = self._parameterNode
        chosen = p.model if p is not None else None
        files = list(self.segmentationModels)
        if chosen and chosen not in files:
            files.append(chosen)  # a file chosen with "Load from file..." or restored with the scene
        items = [(Path(path).name[:-len(SEG_MODEL_SUFFIX)] if path.endswith(SEG_MODEL_SUFFIX) else Path(path).name,
                  path, path) for path in files] + [("Load from file...", LOAD_FROM_FILE)]
        fillComboBox(self.ui.segmentationModelComboBox, items, selected=chosen, separatorBefore=LOAD_FROM_FILE)
        synthesis = p.synthesisModel if p is not None else ""
        names = list(self.synthesisModels) + ([synthesis] if synthesis and synthesis not in self.synthesisModels else [])
        fillComboBox(self.ui.synthesisModelComboBox, [("The one the segmentation model was trained with", "")]
                     + [(name, name) for name in names], selected=synthesis or "")

    def onSegmentationModelChanged(self, index):
        """Bound by hand: the combo box is refilled at run time and "Load from file..." is no model."""
        if self._parameterNode is None:
            return
        model = self.ui.segmentationModelComboBox.currentData
        if model == LOAD_FROM_FILE:
            model = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose a segmentation model file", "",
                                                   f"MRtoCT segmentation models (*{SEG_MODEL_SUFFIX});;All files (*)")
        if model:
            self._parameterNode.model = model
        self.showModelChoices()  # selects the chosen model, or the previous one if no file was chosen

    # ------------------------------------------------------------------------------------------- run, cancel

    def onApplyButton(self):
        if self._job is not None:
            self.cancelJob()
            return
        p = self._parameterNode
        job = None
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            if not self.checkPythonRequirements("PyTorch and the required Python packages are needed to segment."):
                return
            job = self.logic.startBackgroundSegmentation(p.inputVolume, p.model,
                                                         synthesisModel=p.synthesisModel or None,
                                                         sctNode=p.sctVolume, device=p.device)
        if job is None:
            return
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = "Starting (loading PyTorch and the models)..."
        self.startPolling(job)
        self.updateButtonStates()

    def cancelBackgroundJob(self, job):
        self.logic.cancelBackgroundSegmentation(job)

    def onJobFinished(self, job):
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        try:
            segmentation = self.logic.finishBackgroundSegmentation(job)
        except Exception as error:
            self.ui.statusLabel.text = f"Segmentation failed: {str(error).splitlines()[0]}"
            slicer.util.errorDisplay(f"Segmentation failed.\n\n{str(error).splitlines()[0]}",
                                     detailedText=f"{error}\n\nProcess output:\n" + "\n".join(job.process.log))
            return
        if segmentation is None:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
            return
        self.ui.statusLabel.text = (f"Done: '{segmentation.GetName()}' "
                                    f"({segmentation.GetSegmentation().GetNumberOfSegments()} segments) in "
                                    f"{formatDuration(job.process.finished_at - job.process.started_at)}"
                                    f" on {job.process.device}.")


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MRtoCTSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()
        if getattr(slicer, "app", None) is not None:  # the panel exists only in the application
            self.setUp()
            self.test_PanelCancelLeavesTheScene()

    def test_SegmentPhantom(self):
        import tempfile

        import numpy as np
        from MRtoCTSynthesisLib.phantom import make_phantom

        self.delayDisplay("Starting the test")
        logic = MRtoCTSegmentLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        phantom = make_phantom("pelvis", 0, shape=(40, 32, 20), spacing=(8.0, 8.0, 8.0))
        mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom MR")
        updateVolumeNodeFromSitkImage(mrNode, phantom.mr)
        before = slicer.util.arrayFromVolume(mrNode).copy()
        with tempfile.TemporaryDirectory() as folder:
            model, synthesis = tinySegmentationModels(folder)
            segmentationNode = logic.segment(mrNode, model=model, synthesisModel=synthesis, device="cpu")
        self.delayDisplay("Segmented")
        self.assertEqual(segmentationNode.GetName(), "phantom MR segmentation")
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 12)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(mrNode), before)
        self.delayDisplay("Test passed")

    def test_PanelCancelLeavesTheScene(self):
        """The panel's real buttons (in Slicer only): Segment starts a child process, Cancel leaves the scene."""
        import tempfile

        from MRtoCTSynthesisLib.phantom import make_phantom

        slicer.util.selectModule("MRtoCTSegment")
        widget = slicer.util.getModuleWidget("MRtoCTSegment")
        phantom = make_phantom("pelvis", 1, shape=(40, 32, 20), spacing=(8.0, 8.0, 8.0))
        mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "panel MR")
        updateVolumeNodeFromSitkImage(mrNode, phantom.mr)
        with tempfile.TemporaryDirectory() as folder:
            model, synthesis = tinySegmentationModels(folder)
            p = widget.logic.getParameterNode()
            p.inputVolume, p.model, p.synthesisModel, p.device = mrNode, model, synthesis, "cpu"
            nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
            widget.ui.applyButton.click()
            self.assertIsNotNone(widget._job)
            self.assertEqual(widget.ui.applyButton.text, "Cancel")
            widget.ui.applyButton.click()
            self.assertIsNone(widget._job)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
            self.assertEqual(widget.ui.statusLabel.text, "Cancelled; the scene was not changed.")
        self.delayDisplay("Panel test passed")
