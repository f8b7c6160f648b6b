"""3D Slicer module "MR to CT Segment": bones and muscles from an MR through its synthetic CT (Hiasa 2018).

Three layers, as in "MR to CT Synthesis":
- the engine, ``MRtoCTSegmentLib`` (pure Python, no Slicer): MR (+ sCT) -> label map on the MR's grid;
- ``MRtoCTSegmentLogic``: MRML nodes in, a segmentation node out; blocking, usable from the Python console;
- ``MRtoCTSegmentWidget``: the panel (template ``MRtoCTCommon.MRtoCTModuleWidget``). It runs the blocking logic
  and keeps Slicer responsive by processing events from the progress callback, so "Cancel" stops the run.

Heavy packages (torch, SimpleITK, the engine) are imported only when used.
"""
import logging
import os
import sys
from pathlib import Path

import qt

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

MODULE_DIR = Path(__file__).resolve().parent
# installed: every module file and engine package sits in one folder; source tree: MRtoCTSynthesis is a sibling
for _folder in (MODULE_DIR, MODULE_DIR.parent / "MRtoCTSynthesis"):
    if _folder.is_dir() and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import MRtoCTCommon  # noqa: E402  (the widget template and dependency helpers shared by the MRtoCT modules)
import MRtoCTSynthesis  # noqa: E402  (node <-> SimpleITK converters, synthesis models, devices, requirements)

LOAD_FROM_FILE = "__load_from_file__"
SEG_MODEL_SUFFIX = ".mrtoct-seg.safetensors"
RESULT_ATTRIBUTES = ("Model", "SynthesisModel", "Device", "Seconds")
SOURCE_REFERENCE = "MRtoCTSegment.source"


#
# Module
#


class MRtoCTSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MR to CT Segment"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRtoCT extension contributors"]
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


class MRtoCTSegmentWidget(MRtoCTCommon.MRtoCTModuleWidget):
    """The panel. The run is the blocking ``MRtoCTSegmentLogic.segment`` (no ``mrtoct segment`` background process:
    its CLI writes files for a batch, not one segmentation node); the progress callback processes Qt events so the
    Cancel button and the progress bar stay live."""

    def __init__(self, parent=None):
        MRtoCTCommon.MRtoCTModuleWidget.__init__(self, parent)
        self._cancelRequested = False

    def setup(self):
        self.setupPanel("UI/MRtoCTSegment.ui", MRtoCTSegmentLogic())

        self.populateModelComboBoxes()
        self.populateDeviceComboBox()
        self.ui.progressBar.setVisible(False)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.sctVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.segmentationModelComboBox.connect("currentIndexChanged(int)", self.onSegmentationModelChanged)
        self.ui.synthesisModelComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

    def stopRunningJob(self, reason):
        self._cancelRequested = True

    def enter(self):
        MRtoCTCommon.MRtoCTModuleWidget.enter(self)
        self.populateModelComboBoxes()

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        MRtoCTCommon.MRtoCTModuleWidget.initializeParameterNode(self)
        if not self._parameterNode.GetNodeReference("InputVolume"):
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.SetNodeReferenceID("InputVolume", firstVolume.GetID())

    def showParameters(self, p):
        self.ui.inputVolumeSelector.setCurrentNode(p.GetNodeReference("InputVolume"))
        self.ui.sctVolumeSelector.setCurrentNode(p.GetNodeReference("SCTVolume"))
        self._selectModelFile(p.GetParameter("Model"))
        self._selectData(self.ui.synthesisModelComboBox, p.GetParameter("SynthesisModel"))
        self._selectData(self.ui.deviceComboBox, p.GetParameter("Device"))
        self.ui.synthesisModelComboBox.enabled = p.GetNodeReference("SCTVolume") is None
        self.ui.modelInfoLabel.text = self.logic.modelDescription(p.GetParameter("Model"))
        self.updateButtonStates()

    def storeParameters(self, p):
        p.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        p.SetNodeReferenceID("SCTVolume", self.ui.sctVolumeSelector.currentNodeID)
        model = self.ui.segmentationModelComboBox.currentData
        if model and model != LOAD_FROM_FILE:
            p.SetParameter("Model", model)
        p.SetParameter("SynthesisModel", self.ui.synthesisModelComboBox.currentData or "")
        p.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")

    def updateButtonStates(self):
        running = self._job is not None
        p = self._parameterNode
        ready = bool(p and p.GetNodeReference("InputVolume") and p.GetParameter("Model"))
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.applyButton.toolTip = ("Stop the segmentation; the scene is left as it was" if running else
                                       "Segment bones and muscles of the input MR" if ready else
                                       "Select an input MR volume and a segmentation model")
        self.ui.applyButton.enabled = running or ready
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = not running

    # ------------------------------------------------------------------------------------------- models, device

    def populateModelComboBoxes(self):
        combo = self.ui.segmentationModelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for path in self.logic.availableModels():
                combo.addItem(Path(path).name[:-len(SEG_MODEL_SUFFIX)], str(path))
                combo.setItemData(combo.count - 1, str(path), qt.Qt.ToolTipRole)
            combo.insertSeparator(combo.count)
            combo.addItem("Load from file...", LOAD_FROM_FILE)
        finally:
            combo.blockSignals(wasBlocked)
        combo = self.ui.synthesisModelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem("The one the segmentation model was trained with", "")
            try:
                synthesisModels = MRtoCTSynthesis.MRtoCTSynthesisLogic.availableModels()
            except Exception as error:  # a broken registry must not break the panel
                logging.error(f"MRtoCTSegment: cannot list synthesis models: {error}")
                synthesisModels = []
            for entry in synthesisModels:
                combo.addItem(entry["name"], entry["name"])
        finally:
            combo.blockSignals(wasBlocked)

    def _selectModelFile(self, model):
        combo = self.ui.segmentationModelComboBox
        if not model:
            return
        index = combo.findData(model)
        if index < 0 and os.path.isfile(model):  # a file chosen with "Load from file..."
            combo.insertItem(combo.count - 2, Path(model).name, model)
            index = combo.findData(model)
        if index >= 0:
            combo.setCurrentIndex(index)

    def onSegmentationModelChanged(self, index):
        if self._updatingGUIFromParameterNode:
            return
        if self.ui.segmentationModelComboBox.currentData == LOAD_FROM_FILE:
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose a segmentation model file", "",
                                                  f"MRtoCT segmentation models (*{SEG_MODEL_SUFFIX});;All files (*)")
            if path and self._parameterNode is not None:
                self._parameterNode.SetParameter("Model", path)
            self.updateGUIFromParameterNode()
            return
        self.updateParameterNodeFromGUI()

    def populateDeviceComboBox(self):
        self.fillDeviceComboBox(self.logic.availableDevices())

    # ------------------------------------------------------------------------------------------- run, cancel

    def onApplyButton(self):
        if self._job is not None:
            self._cancelRequested = True
            self.ui.statusLabel.text = "Cancelling..."
            return
        self.updateParameterNodeFromGUI()
        p = self._parameterNode
        self._cancelRequested = False
        self._job = "running"
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = "Starting (loading PyTorch and the models)..."
        self.updateButtonStates()
        segmentation = None
        try:
            with slicer.util.tryWithErrorDisplay("Segmentation failed.", waitCursor=True):
                if not self.checkPythonRequirements(
                        "PyTorch and the required Python packages are needed to segment."):
                    return
                segmentation = self.logic.segment(
                    p.GetNodeReference("InputVolume"), model=p.GetParameter("Model"),
                    synthesisModel=p.GetParameter("SynthesisModel") or None, sctNode=p.GetNodeReference("SCTVolume"),
                    device=p.GetParameter("Device"), progress=self.onProgress, cancel=lambda: self._cancelRequested)
        except Exception as error:
            if type(error).__name__ != "SegmentationCancelled":
                raise
        finally:
            self._job = None
            self.ui.progressBar.setVisible(False)
            self.updateButtonStates()
        if segmentation is None:
            self.ui.statusLabel.text = ("Cancelled; the scene was not changed." if self._cancelRequested else
                                        "Segmentation failed.")
            return
        self.ui.statusLabel.text = (f"Done: '{segmentation.GetName()}' "
                                    f"({segmentation.GetSegmentation().GetNumberOfSegments()} segments) in "
                                    f"{MRtoCTSynthesis.formatDuration(float(segmentation.GetAttribute('MRtoCTSegment.Seconds')))}"
                                    f" on {segmentation.GetAttribute('MRtoCTSegment.Device')}.")

    def onProgress(self, fraction, message):
        self.ui.progressBar.setValue(int(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def onPollJob(self):  # the run is not polled: the progress callback updates the panel
        self._pollTimer.stop()


#
# Logic
#


class MRtoCTSegmentLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, a segmentation node out. No Qt here: everything runs headless and from the Python console::

        logic = slicer.util.getModuleLogic("MRtoCTSegment")   # or MRtoCTSegmentLogic()
        seg = logic.segment(mrNode, model="/models/pelvis.mrtoct-seg.safetensors", synthesisModel="pelvis-2024")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def setDefaultParameters(self, parameterNode):
        models = self.availableModels()
        if not parameterNode.GetParameter("Model") and models:
            parameterNode.SetParameter("Model", str(models[0]))
        if not parameterNode.GetParameter("Device"):
            parameterNode.SetParameter("Device", "auto")

    # ------------------------------------------------------------------------------------------- dependencies, models

    @staticmethod
    def setupPythonRequirements(askConfirmation=True):
        """The synthesis module's requirements are the engine's (torch, safetensors, ...): install what is missing."""
        return MRtoCTSynthesis.MRtoCTSynthesisLogic().setupPythonRequirements(askConfirmation=askConfirmation)

    @staticmethod
    def availableDevices():
        return MRtoCTSynthesis.MRtoCTSynthesisLogic.availableDevices()

    @staticmethod
    def modelFolders():
        """Where segmentation model files are looked for: the module's Resources/Models and the model cache."""
        folders = [MODULE_DIR / "Resources" / "Models"]
        cache = os.environ.get("MRTOCT_MODEL_CACHE") or str(Path.home() / ".cache" / "mrtoct" / "models")
        folders.append(Path(cache))
        return folders

    @classmethod
    def availableModels(cls):
        """Segmentation model files (``*.mrtoct-seg.safetensors``) found in ``modelFolders()`` (searched recursively)."""
        found = []
        for folder in cls.modelFolders():
            if folder.is_dir():
                found.extend(sorted(folder.rglob(f"*{SEG_MODEL_SUFFIX}")))
        return found

    @staticmethod
    def modelDescription(model):
        """One line about a segmentation model file for the panel; never raises."""
        if not model:
            return ""
        try:
            from MRtoCTSegmentLib.modelfile import load_seg_model

            metadata = load_seg_model(model).metadata
            return (f"{metadata['name']}: {metadata['description']} (channels {metadata['channels']}, "
                    f"license: {metadata['license']})")
        except Exception as error:
            return f"Cannot read this model: {error}"

    # ------------------------------------------------------------------------------------------- blocking segmentation

    def segment(self, mrNode, model, synthesisModel=None, sctNode=None, device="auto", batchSize=8, progress=None,
                cancel=None):
        """Segment ``mrNode`` (blocking); returns a new ``vtkMRMLSegmentationNode`` named "<MR name> segmentation".

        ``sctNode``: an existing sCT (resampled onto the MR grid by the engine if needed); without it the sCT is
        synthesized with ``synthesisModel`` (None: the one recorded in the segmentation model). The segmentation has
        the MR's reference geometry and parent transform and one segment per structure of the model's label table
        (name, colour, terminology), shown in 2D and 3D. ``cancel()`` returning True raises SegmentationCancelled.
        The input nodes are never modified; on error or cancel the scene is unchanged.
        """
        from MRtoCTSegmentLib.segment import segment

        MRtoCTSynthesis.MRtoCTSynthesisLogic._checkNodes(mrNode, None)
        mr = MRtoCTSynthesis.sitkImageFromVolumeNode(mrNode)
        sct = MRtoCTSynthesis.sitkImageFromVolumeNode(sctNode) if sctNode is not None else None
        result = segment(mr, str(model) if isinstance(model, Path) else model, synthesis_model=synthesisModel,
                         sct=sct, device=device, batch_size=batchSize, progress=progress, cancel=cancel)
        return self.createSegmentationNode(mrNode, result, {
            "Model": result.model_name, "SynthesisModel": "" if sctNode is not None else str(synthesisModel or ""),
            "Device": result.device, "Seconds": f"{result.seconds:.2f}"})

    @staticmethod
    def createSegmentationNode(mrNode, result, attributes=None):
        """A segmentation node from an engine result (labels on the MR's grid + label table)."""
        import numpy as np
        import SimpleITK as sitk

        labels = sitk.GetArrayFromImage(result.labels)  # (K, J, I), like arrayFromVolume
        dimensions = tuple(mrNode.GetImageData().GetDimensions())
        if labels.shape[::-1] != dimensions:
            raise RuntimeError(f"the engine returned the labels on another grid than the MR ({labels.shape[::-1]} "
                               f"voxels instead of {dimensions})")
        scene = mrNode.GetScene()
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                   scene.GenerateUniqueName(f"{mrNode.GetName()} segmentation"))
        try:
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(mrNode)
            segmentationNode.SetAndObserveTransformNodeID(mrNode.GetTransformNodeID())
            segmentation = segmentationNode.GetSegmentation()
            wasModifying = segmentationNode.StartModify()
            for structure in result.table.structures:
                segmentId = segmentation.AddEmptySegment(structure.name, structure.display_name,
                                                         list(structure.color_float))
                segmentation.GetSegment(segmentId).SetTag("TerminologyEntry", structure.terminology_entry())
                mask = (labels == structure.value).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, mrNode)
            segmentationNode.EndModify(wasModifying)
            for key, value in (attributes or {}).items():
                segmentationNode.SetAttribute(f"MRtoCTSegment.{key}", str(value))
            segmentationNode.SetNodeReferenceID(SOURCE_REFERENCE, mrNode.GetID())
            segmentationNode.CreateClosedSurfaceRepresentation()
            display = segmentationNode.GetDisplayNode()
            display.SetVisibility2D(True)
            display.SetVisibility3D(True)
            MRtoCTSynthesis.MRtoCTSynthesisLogic._placeBesideInSubjectHierarchy(mrNode, [segmentationNode])
        except BaseException:
            scene.RemoveNode(segmentationNode)
            raise
        return segmentationNode


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MRtoCTSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()

    @staticmethod
    def _tinyModels(folder):
        """A tiny random synthesis model and a tiny random "mr+sct" pelvis segmentation model (fast on CPU)."""
        from MRtoCTSegmentLib.labels import load_label_table
        from MRtoCTSegmentLib.modelfile import save_seg_model
        from MRtoCTSegmentLib.unet import UNet2D
        from MRtoCTSynthesisLib.modelfile import save_untrained_model
        from MRtoCTSynthesisLib.preprocessing import Normalization

        synthesis = save_untrained_model(Path(folder) / "tiny-self-test.mrtoct.safetensors", "tiny-self-test")
        table = load_label_table("pelvis")
        norm = Normalization("axial", (32, 32), (-1000.0, 3500.0), (0.0, 3500.0))
        segMetadata = {"name": "tiny-seg-self-test", "description": "untrained U-Net for the self test",
                       "license": "Apache-2.0", "intended_use": "testing only",
                       "network": {"architecture": "unet2d", "kwargs": {
                           "in_channels": 2, "n_classes": table.n_classes, "base": 2, "norm": "batch",
                           "dropout": 0.0}},
                       "channels": "mr+sct", "label_table": table.to_json(), "normalization": norm.to_json()}
        model = save_seg_model(Path(folder) / f"tiny-seg-self-test{SEG_MODEL_SUFFIX}", segMetadata,
                               UNet2D(2, table.n_classes, 2))
        return str(model), str(synthesis)

    def test_SegmentPhantom(self):
        import tempfile

        import numpy as np
        from MRtoCTSynthesisLib.phantom import make_phantom

        self.delayDisplay("Starting the test")
        logic = MRtoCTSegmentLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        phantom = make_phantom("pelvis", 0, shape=(40, 32, 20), spacing=(8.0, 8.0, 8.0))
        mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom MR")
        MRtoCTSynthesis.updateVolumeNodeFromSitkImage(mrNode, phantom.mr)
        before = slicer.util.arrayFromVolume(mrNode).copy()
        with tempfile.TemporaryDirectory() as folder:
            model, synthesis = self._tinyModels(folder)
            segmentationNode = logic.segment(mrNode, model=model, synthesisModel=synthesis, device="cpu")
        self.delayDisplay("Segmented")
        self.assertEqual(segmentationNode.GetName(), "phantom MR segmentation")
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 12)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(mrNode), before)
        self.delayDisplay("Test passed")
