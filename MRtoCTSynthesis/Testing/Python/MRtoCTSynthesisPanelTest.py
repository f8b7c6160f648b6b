"""The MR to CT Synthesis panel inside the running Slicer application (registered with ctest by CMake).

The headless pytest suite (Testing/slicer_module in the repository) cannot drive the panel, because it needs Slicer's
Qt (PythonQt); this test does: it clicks "Synthesize CT", follows the background process until the sCT appears,
and checks that "Cancel" leaves the scene as it was.
"""
import tempfile
import time
import unittest

import slicer


class MRtoCTSynthesisPanelTest(unittest.TestCase):
    TIMEOUT_SECONDS = 300

    def setUp(self):
        import MRtoCTSynthesis
        from MRtoCTSynthesisLib.phantom import make_phantom

        slicer.mrmlScene.Clear()
        slicer.util.selectModule("MRtoCTSynthesis")
        self.widget = slicer.util.getModuleWidget("MRtoCTSynthesis")
        self.assertTrue(self.widget.logic.setupPythonRequirements(askConfirmation=False))
        self.folder = tempfile.TemporaryDirectory()
        model = MRtoCTSynthesis.smallestSynthesisModel(self.folder.name)
        phantom = make_phantom("head", 1, shape=(40, 40, 24), spacing=(5.0, 5.0, 6.0))
        self.mrNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "panel MR")
        MRtoCTSynthesis.updateVolumeNodeFromSitkImage(self.mrNode, phantom.mr)
        self.mrNode.CreateDefaultDisplayNodes()
        parameters = self.widget.logic.getParameterNode()
        parameters.inputVolume, parameters.outputVolume, parameters.model = self.mrNode, None, model
        parameters.device, parameters.qualityMap, parameters.dicomExport = "cpu", True, False

    def tearDown(self):
        self.widget.cancelJob()
        self.folder.cleanup()

    def _waitUntilIdle(self):
        deadline = time.time() + self.TIMEOUT_SECONDS
        while self.widget._job is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertIsNone(self.widget._job, "the background synthesis did not finish in time")

    def test_background_synthesis_creates_the_sct(self):
        self.widget.ui.applyButton.click()
        self.assertIsNotNone(self.widget._job)
        self.assertEqual(self.widget.ui.applyButton.text, "Cancel")
        self._waitUntilIdle()
        self.assertEqual(self.widget.ui.applyButton.text, "Synthesize CT")
        sctNode = slicer.mrmlScene.GetFirstNodeByName("panel MR sCT")
        self.assertIsNotNone(sctNode)
        self.assertEqual(sctNode.GetImageData().GetDimensions(), self.mrNode.GetImageData().GetDimensions())
        self.assertEqual(self.widget.logic.getParameterNode().outputVolume, sctNode)
        self.assertTrue(self.widget.ui.showQualityMapButton.enabled)

    def test_cancel_leaves_the_scene_unchanged(self):
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        self.widget.ui.applyButton.click()
        self.assertIsNotNone(self.widget._job)
        workDir = self.widget._job.workDir
        self.widget.ui.applyButton.click()  # the button reads "Cancel" now
        self.assertIsNone(self.widget._job)
        self.assertEqual(self.widget.ui.applyButton.text, "Synthesize CT")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertFalse(workDir.exists())
