"""3D Slicer module "Train MR-to-CT model": train a CycleGAN MR-to-CT model on your own unpaired MR and CT folders.

This file declares the module, its panel (``MRtoCTTrainingWidget``) and its self-test. The logic
(``MRtoCTSlicer.training_logic.MRtoCTTrainingLogic``: the trainer process of ``MRtoCTSynthesisLib.training_process``
and the loss plot nodes; no Qt) and the rest of the Slicer layer are in the ``MRtoCTSlicer`` package. The panel checks
the data in a thread and follows the trainer from a timer, so Slicer never freezes.

The trained model is registered as a local model, so the "MR to CT Synthesis" module lists it.
"""
import logging
import os
import sys
import time
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

MODULE_DIR = Path(__file__).resolve().parent
if str(MODULE_DIR) not in sys.path:  # the engine package lives next to this file
    sys.path.insert(0, str(MODULE_DIR))

from MRtoCTSlicer.choices import fillComboBox  # noqa: E402
from MRtoCTSlicer.formatting import formatDuration  # noqa: E402
from MRtoCTSlicer.panel import MRtoCTModuleWidget  # noqa: E402
from MRtoCTSlicer.preview import showPreview  # noqa: E402
from MRtoCTSlicer.selftest_data import TINY_TRAINING_SETTINGS, separateModelCache  # noqa: E402
from MRtoCTSlicer.training_logic import (  # noqa: E402,F401  (the logic is part of this module's console API)
    SETTING_FIELDS, MRtoCTTrainingLogic,
)
from MRtoCTSlicer.training_text import eventText, lossText, progressText, runControls, stopText  # noqa: E402


#
# Module
#


class MRtoCTTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Train MR-to-CT model"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = ["MRtoCTSynthesis"]
        self.parent.contributors = ["MR to CT Synthesis developers"]
        self.parent.helpText = """
Train an MR-to-CT model on your own data: choose a folder of MR volumes and a folder of CT volumes (unpaired: they
need not come from the same patients), a preset (conventional CycleGAN, Yang 2018 structure-constrained, Hiasa 2018
gradient-consistency, or paired), and a run folder, then click <b>Start</b>. Losses, a preview and the remaining time
update while it trains; <b>Stop</b> keeps the last checkpoint and <b>Resume</b> continues from it, also after
restarting Slicer. The finished model appears in the model list of <b>MR to CT Synthesis</b>.<br>
<b>Models you train are for research use only.</b>
"""
        self.parent.acknowledgementText = """
Implements H. Yang et al., "Unpaired brain MR-to-CT synthesis using a structure-constrained CycleGAN", DLMIA 2018,
and Y. Hiasa et al., "Cross-modality image synthesis from unpaired data using CycleGAN: effects of gradient
consistency loss and training data size", SASHIMI 2018.
"""

#
# Widget
#


class MRtoCTTrainingWidget(MRtoCTModuleWidget):
    """The panel over ``parameters.TrainingParameters``; the binding, timer and scene template is
    ``MRtoCTSlicer.panel.MRtoCTModuleWidget``. Start checks the data in a thread (it reads every volume) and then
    starts the trainer process."""

    POLL_INTERVAL_MSEC = 500

    def __init__(self, parent=None):
        MRtoCTModuleWidget.__init__(self, parent)
        self._shownRun = None  # the run folder whose losses and preview the panel shows
        self._runFolderSeen = None  # the run folder parameter last reacted to

    def setup(self):
        self.setupPanel("UI/MRtoCTTraining.ui", MRtoCTTrainingLogic(), dataComboBoxes={"device": "deviceComboBox"})
        self.showPresets(None)
        self.ui.progressBar.setVisible(False)

        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)
        # the widgets with a SlicerParameterName (.ui) and the device menu are bound by setParameterNode; the preset
        # and recipe menus are actions (they rewrite the Advanced settings), bound by hand
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.recipeComboBox.connect("currentIndexChanged(int)", self.onRecipeChanged)

        # buttons
        self.ui.resetSettingsButton.connect("clicked(bool)", self.onResetSettings)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlot)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)

        self.initializeParameterNode()
        self.refreshDevices()

    def cleanup(self):
        """The module widget is destroyed (Slicer is closing): stop the run; its last checkpoint can be resumed."""
        self.stopJob("Slicer is closing")
        slicer.app.disconnect("aboutToQuit()", self.onAboutToQuit)
        self.removeObservers()

    def onAboutToQuit(self):
        self.stopJob("Slicer is closing")

    def stopRunningJob(self, reason):
        self.stopJob(reason)

    def onSceneEndClose(self, caller, event):
        self._shownRun = self._runFolderSeen = None
        MRtoCTModuleWidget.onSceneEndClose(self, caller, event)

    # ------------------------------------------------------------------------------------------- parameter node

    def showParameters(self, p):
        self.showPresets(p.preset)
        fillComboBox(self.ui.recipeComboBox, [(name, name) for name in self.logic.recipeNames()], selected=p.recipe)
        self.ui.presetDescriptionLabel.text = self.logic.presetDescription(p.preset)
        self.ui.lambdaSupervisedDoubleSpinBox.enabled = p.preset == "paired"
        if p.runFolder != self._runFolderSeen:
            self._runFolderSeen = p.runFolder
            self.onRunFolderChanged(p)
        self.updateRunState()

    def showPresets(self, selected):
        fillComboBox(self.ui.presetComboBox, [(name, name) for name in self.logic.presetNames()], selected=selected)

    def onPresetChanged(self, index):
        """The user chose a preset (refills are silent): select it and set every Advanced setting to its value."""
        if self._parameterNode is not None:
            self.logic.applyPreset(self._parameterNode, self.ui.presetComboBox.currentData)

    def onRecipeChanged(self, index):
        """The user chose a recipe: set every Advanced setting to the preset's value under it."""
        if self._parameterNode is not None:
            self.logic.applyPreset(self._parameterNode, self._parameterNode.preset,
                                   self.ui.recipeComboBox.currentData)

    def onResetSettings(self):
        if self._parameterNode is not None:
            self.logic.applyPreset(self._parameterNode, self._parameterNode.preset)

    def onDevicesChanged(self):
        gpus = sum(1 for device in self.devices if device.startswith("cuda"))
        self.ui.processesSpinBox.maximum = max(1, gpus, os.cpu_count() or 1)

    # ------------------------------------------------------------------------------------------- run folder

    def onRunFolderChanged(self, p):
        """Another run folder: a run made earlier there shows its data folders (if none are chosen), losses and
        preview."""
        if self._job is not None:
            return
        state = self.logic.runState(p.runFolder)
        if state is not None and state.launch:
            with slicer.util.NodeModify(p):
                p.mrFolder = p.mrFolder or state.launch.get("mr") or ""
                p.ctFolder = p.ctFolder or state.launch.get("ct") or ""
        self.showRun(p.runFolder)

    def showRun(self, runFolder):
        """Show what a run folder already holds: its loss curves and last preview."""
        if not runFolder or runFolder == self._shownRun or not os.path.isdir(runFolder):
            return
        self._shownRun = runFolder
        try:
            self.logic.loadRunIntoPlot(runFolder)
            from MRtoCTSynthesisLib.training_process import TrainingProcess

            self.ui.lossesLabel.text = lossText(TrainingProcess.replay(runFolder).losses)
        except Exception as error:  # an unreadable run folder must not break the panel
            logging.warning(f"MRtoCTTraining: cannot read the run in {runFolder}: {error}")
        preview = Path(runFolder) / "preview.png"
        self.showPreview(str(preview) if preview.is_file() else None)

    def updateRunState(self):
        p = self._parameterNode
        running = self._job is not None
        state = self.logic.runState(p.runFolder) if p is not None and not running else None
        controls = runControls(state, bool(p and p.mrFolder and p.ctFolder and p.runFolder), running)
        self.ui.runStateLabel.text = controls["text"]
        self.ui.startButton.enabled, self.ui.startButton.toolTip = controls["start"], controls["startTip"]
        self.ui.resumeButton.enabled, self.ui.stopButton.enabled = controls["resume"], running
        for widget in (self.ui.dataCollapsibleButton, self.ui.trainingCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running

    # ------------------------------------------------------------------------------------------- start, stop, resume

    def onStartButton(self):
        self._launch(resume=False)

    def onResumeButton(self):
        self._launch(resume=True)

    def _launch(self, resume):
        if self._job is not None or self._check is not None:
            return
        process = None
        with slicer.util.tryWithErrorDisplay("Failed to start the training.", waitCursor=True):
            if not self.checkPythonRequirements(
                    "PyTorch and the required Python packages are needed to train a model."):
                return
            process = self.logic.processFromParameterNode(self._parameterNode, resume=resume)
        if process is None:
            self.ui.statusLabel.text = "Not started."
            return
        self.ui.statusLabel.text = "Checking the training data (reading every volume)..."
        self.ui.startButton.enabled = self.ui.resumeButton.enabled = False
        self.startCheck(lambda: self.logic.checkTraining(process), self.onDataChecked, process=process,
                        resume=resume)

    def onDataChecked(self, check):
        """The data check (run in a thread) is over: start the trainer, or say what is wrong."""
        if check.error is not None:
            self.ui.statusLabel.text = f"Not started: {check.error}"
            self.updateRunState()
            slicer.util.errorDisplay(f"Failed to start the training.\n\n{check.error}")
            return
        job = None
        with slicer.util.tryWithErrorDisplay("Failed to start the training.", waitCursor=True):
            job = self.logic.startCheckedTraining(check.process, check.result)
        if job is None:
            self.updateRunState()
            return
        self._shownRun = job.runFolder
        self.ui.logPlainTextEdit.clear()
        self.ui.logPlainTextEdit.appendPlainText(" ".join(job.process.command()[3:]))
        self.ui.lossesLabel.text = ""
        self.ui.useModelButton.enabled = False
        if not check.resume:
            self.showPreview(None)
        self.ui.progressBar.setRange(0, 0)  # busy until the trainer reports its first iteration
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = progressText(job.process)
        self.startPolling(job)
        self.updateRunState()
        self.onShowPlot()

    def pollJob(self, job):
        events = self.logic.pollTraining(job)
        process = job.process
        for line in process.new_log_lines():
            self.ui.logPlainTextEdit.appendPlainText(line)
        for event in events:
            text = eventText(event)
            if text:
                self.ui.logPlainTextEdit.appendPlainText(text)
            if event["event"] == "preview":
                self.showPreview(event.get("path"))
        if process.iterations:
            self.ui.progressBar.setRange(0, int(process.iterations))
            self.ui.progressBar.setValue(int(process.iteration))
            self.ui.progressBar.format = "%v / %m iterations"
        self.ui.statusLabel.text = progressText(process)
        if process.losses:
            self.ui.lossesLabel.text = lossText(process.losses)
        return process.finished

    def onStopButton(self):
        self.stopJob()

    def stopJob(self, reason=None):
        """Stop the running training (the whole process tree); the last checkpoint can be resumed."""
        job = self._job
        if job is None:
            return
        try:
            self.logic.stopTraining(job)
            self.logic.pollTraining(job)
        except Exception as error:
            logging.error(f"MRtoCTTraining: stopping the training failed: {error}")
        self._job = None
        message = stopText(job.process, reason)
        try:
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = message
            self.ui.logPlainTextEdit.appendPlainText(message)
            self.updateRunState()
        except Exception:  # the panel is being destroyed
            pass
        logging.info(f"MRtoCTTraining: {message}")

    def onJobFinished(self, job):
        self.ui.progressBar.setVisible(False)
        self.updateRunState()
        process = job.process
        for line in process.new_log_lines():
            self.ui.logPlainTextEdit.appendPlainText(line)
        if job.modelName:
            duration = formatDuration(process.finished_at - process.started_at)
            self.ui.statusLabel.text = (f"Finished in {duration}: model '{job.modelName}' is in the model list of "
                                        "MR to CT Synthesis.")
            self.ui.useModelButton.enabled = True
            self.refreshSynthesisModels()
            return
        if job.registrationError:
            self.ui.statusLabel.text = "The model was trained but could not be registered."
            slicer.util.errorDisplay(f"The model {process.model} was trained but could not be added to the model "
                                     f"list:\n\n{job.registrationError}")
            return
        self.ui.statusLabel.text = "Training failed."
        error = process.error or "unknown error"
        slicer.util.errorDisplay(f"Training failed.\n\n{error.splitlines()[0]}",
                                 detailedText=f"{error}\n\n{process.error_traceback or ''}\nProcess output:\n"
                                              + "\n".join(process.log))

    # ------------------------------------------------------------------------------------------- results

    def showPreview(self, path):
        showPreview(self.ui.previewLabel, path)

    def onShowPlot(self):
        p = self._parameterNode
        runFolder = self._job.runFolder if self._job is not None else (p.runFolder if p else "")
        if not runFolder:
            return
        _, chartNode = self.logic.lossPlotNodes(runFolder)
        try:
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)
        except Exception as error:
            logging.warning(f"MRtoCTTraining: cannot show the loss plot: {error}")

    def onUseModel(self):
        p = self._parameterNode
        state = self.logic.runState(p.runFolder) if p else None
        name = self.logic.modelNameOfRun(p.runFolder) if state and state.finished else None
        if not name:
            return
        self.refreshSynthesisModels()
        self.logic.useModelForSynthesis(name)
        slicer.util.selectModule("MRtoCTSynthesis")

    def refreshSynthesisModels(self):
        """Let an open Synthesize CT panel list the new model now."""
        try:
            synthesisWidget = slicer.modules.mrtoctsynthesis.widgetRepresentation().self()
            synthesisWidget.refreshModels()
        except Exception as error:
            logging.warning(f"MRtoCTTraining: cannot refresh the Synthesize CT model list: {error}")

#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


class MRtoCTTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainTinyModel()
        if getattr(slicer, "app", None) is not None:  # the panel exists only in the application
            self.setUp()
            self.test_PanelStartAndStop()

    def test_TrainTinyModel(self):
        import tempfile

        from MRtoCTSynthesisLib.modelfile import Catalog, local_models, read_metadata
        from MRtoCTSynthesisLib.phantom import write_phantom_dataset

        self.delayDisplay("Starting the test")
        logic = MRtoCTTrainingLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        with tempfile.TemporaryDirectory() as folder, separateModelCache(os.path.join(folder, "models")):
            write_phantom_dataset(folder, "head", 2, seed=0, shape=(32, 32, 24), spacing=(7.0, 7.0, 7.0))
            run = os.path.join(folder, "tiny-selftest")
            job = logic.train(os.path.join(folder, "mr"), os.path.join(folder, "ct"), run, preset="yang2018",
                              settings=TINY_TRAINING_SETTINGS, device="cpu", timeout=600)
            self.delayDisplay(f"Trained '{job.modelName}'")

            self.assertEqual(job.modelName, "tiny-selftest")
            model = Path(run) / "model.mrtoct.safetensors"
            self.assertEqual(Path(local_models()[job.modelName]).resolve(), model.resolve())
            self.assertIn(job.modelName, [m["name"] for m in Catalog().list_models() if m["source"] == "local"])
            metadata = read_metadata(model)
            self.assertEqual(metadata["training"]["iterations"], 4)
            self.assertEqual(metadata["preset"], "yang2018")
            tableNode, chartNode = logic.lossPlotNodes(run, create=False)
            self.assertEqual(tableNode.GetTable().GetNumberOfRows(), 4)
            self.assertIn("structure", logic.lossSeriesNodes(run))  # the Yang preset's MIND loss is plotted
            self.assertGreaterEqual(chartNode.GetNumberOfPlotSeriesNodes(), 6)
            self.assertTrue((Path(run) / "preview.png").is_file())
        self.delayDisplay("Test passed")

    def test_PanelStartAndStop(self):
        """The panel's real buttons (in Slicer only): Start checks the data in a thread, then trains; Stop ends it."""
        import tempfile

        from MRtoCTSynthesisLib.phantom import write_phantom_dataset

        slicer.util.selectModule("MRtoCTTraining")
        widget = slicer.util.getModuleWidget("MRtoCTTraining")
        with tempfile.TemporaryDirectory() as folder:
            write_phantom_dataset(folder, "head", 2, seed=0, shape=(32, 32, 24), spacing=(7.0, 7.0, 7.0))
            p = widget.logic.getParameterNode()
            p.mrFolder, p.ctFolder = os.path.join(folder, "mr"), os.path.join(folder, "ct")
            p.runFolder = os.path.join(folder, "panel-run")
            widget.ui.startButton.click()
            deadline = time.time() + 120
            while widget._job is None and time.time() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertIsNotNone(widget._job, widget.ui.statusLabel.text)
            widget.ui.stopButton.click()
            self.assertIsNone(widget._job)
        self.delayDisplay("Panel test passed")
