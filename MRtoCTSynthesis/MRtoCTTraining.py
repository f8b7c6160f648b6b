"""3D Slicer module "Train MR-to-CT model": train a CycleGAN MR-to-CT model on your own unpaired MR and CT folders.

Three layers (see the extension README):
- the engine: ``MRtoCTSynthesisLib.train`` (the trainer) and ``MRtoCTSynthesisLib.training_process`` (starts it as a
  child process, follows the run folder's events, stops the process tree, resumes, registers the model);
- ``MRtoCTTrainingLogic``: the process and the MRML nodes (loss table, plot series, plot chart); no Qt, so it runs
  headless and from the Python console, blocking (``train``) or not (``startTraining`` + ``pollTraining``);
- ``MRtoCTTrainingWidget``: the panel; follows the run with a timer, so Slicer never freezes.

The trained model is registered as a local model, so the "MR to CT Synthesis" module lists it.
"""
import json
import logging
import math
import os
import sys
import threading
import time
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
if str(MODULE_DIR) not in sys.path:  # the engine package lives next to this file
    sys.path.insert(0, str(MODULE_DIR))

from MRtoCTSlicer import dependencies  # noqa: E402
from MRtoCTSlicer.choices import selectData  # noqa: E402
from MRtoCTSlicer.formatting import formatDuration  # noqa: E402
from MRtoCTSlicer.interpreter import pythonExecutable  # noqa: E402
from MRtoCTSlicer.panel import MRtoCTModuleWidget  # noqa: E402
from MRtoCTSlicer.synthesis_logic import MRtoCTSynthesisLogic  # noqa: E402

DEFAULT_PRESET = "yang2018"
PLANES = ("sagittal", "coronal", "axial")
# Advanced settings: TrainConfig field -> widget name (two for the image size)
SETTING_WIDGETS = {
    "iterations": "iterationsSpinBox",
    "image_size": ("imageHeightSpinBox", "imageWidthSpinBox"),
    "plane": "planeComboBox",
    "batch_size": "batchSizeSpinBox",
    "lr": "learningRateDoubleSpinBox",
    "lambda_cycle": "lambdaCycleDoubleSpinBox",
    "lambda_structure": "lambdaStructureDoubleSpinBox",
    "lambda_gc": "lambdaGCDoubleSpinBox",
    "lambda_identity": "lambdaIdentityDoubleSpinBox",
    "lambda_supervised": "lambdaSupervisedDoubleSpinBox",
    "validation_fraction": "validationFractionDoubleSpinBox",
    "seed": "seedSpinBox",
    "checkpoint_every": "checkpointEverySpinBox",
    "preview_every": "previewEverySpinBox",
}
SETTING_PREFIX = "Setting."
RUN_ATTRIBUTE = "MRtoCTTraining.RunFolder"
NOT_LOSSES = ("iteration", "lr", "seconds")
LOSS_ORDER = ("G_total", "cycle", "structure", "gc", "identity", "supervised", "G_gan_ct", "G_gan_mr", "D_ct", "D_mr")
LOSS_COLORS = {
    "G_total": (0.0, 0.0, 0.0), "cycle": (0.12, 0.47, 0.71), "structure": (1.0, 0.50, 0.05),
    "gc": (0.17, 0.63, 0.17), "identity": (0.58, 0.40, 0.74), "supervised": (0.55, 0.34, 0.29),
    "G_gan_ct": (0.84, 0.15, 0.16), "G_gan_mr": (0.89, 0.47, 0.76), "D_ct": (0.50, 0.50, 0.50),
    "D_mr": (0.74, 0.74, 0.13),
}


#
# Module
#


class MRtoCTTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Train MR-to-CT model"
        self.parent.categories = ["Radiotherapy"]
        self.parent.dependencies = ["MRtoCTSynthesis"]
        self.parent.contributors = ["MRtoCT extension contributors"]
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
# Pure helpers (no Qt)
#


def lossText(losses):
    """'G_total 3.21 · cycle 0.120 · D_ct 0.231' for the losses of an iteration event (the main ones first)."""
    names = [n for n in LOSS_ORDER if n in losses] + sorted(n for n in losses if n not in LOSS_ORDER)
    return " · ".join(f"{name} {losses[name]:.3g}" for name in names)


def progressText(process):
    """'Iteration 1200 of 5000 · 0.21 s/iteration (about 13 min 40 s left)' for a ``TrainingProcess``."""
    if not process.iterations:
        return "Starting (loading PyTorch, reading and caching the volumes)..."
    text = f"Iteration {process.iteration} of {process.iterations}"
    if process.seconds_per_iteration:
        text += f" · {process.seconds_per_iteration:.2f} s/iteration"
    if process.eta_seconds and process.iteration < process.iterations:
        text += f" (about {formatDuration(process.eta_seconds)} left)"
    return text


def eventText(event):
    """One log line for an event other than "iteration"; None for iteration events."""
    kind = event["event"]
    if kind == "start":
        where = f"on {event.get('device')}" + (f" x{event['world_size']}" if event.get("world_size", 1) > 1 else "")
        verb = "resumed at" if event.get("resumed") else "started at"
        return f"Training {verb} iteration {event.get('iteration')} of {event.get('iterations')} {where}"
    if kind == "checkpoint":
        return f"Checkpoint at iteration {event.get('iteration')}"
    if kind == "preview":
        return f"Preview at iteration {event.get('iteration')}"
    if kind == "validation":
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (event.get("metrics") or {}).items())
        return f"Validation at iteration {event.get('iteration')}: {metrics}"
    if kind == "finished":
        return f"Finished after {formatDuration(event.get('seconds'))}: {event.get('model')}"
    if kind == "error":
        return f"Error: {event.get('message')}"
    return None


#
# Widget
#


class MRtoCTTrainingWidget(MRtoCTModuleWidget):
    """The panel; the parameter-node, timer and scene template is ``MRtoCTSlicer.panel.MRtoCTModuleWidget``. Start
    checks the data in a thread (it reads every volume) and then starts the trainer process."""

    POLL_INTERVAL_MSEC = 500

    def __init__(self, parent=None):
        MRtoCTModuleWidget.__init__(self, parent)
        self._previewPath = None
        self._shownRun = None
        self._check = None  # the BackgroundCheck of a Start or Resume click

    def setup(self):
        self.setupPanel("UI/MRtoCTTraining.ui", MRtoCTTrainingLogic())

        self.ui.presetComboBox.clear()
        for name in self.logic.presetNames():
            self.ui.presetComboBox.addItem(name, name)
        self.ui.planeComboBox.clear()
        for plane in PLANES:
            self.ui.planeComboBox.addItem(plane, plane)
        self.ui.progressBar.setVisible(False)

        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        # GUI -> parameter node
        for pathLineEdit in (self.ui.mrFolderPathLineEdit, self.ui.ctFolderPathLineEdit):
            pathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRunFolderChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.processesSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.planeComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        for field, names in SETTING_WIDGETS.items():
            for name in (names if isinstance(names, tuple) else (names,)):
                widget = getattr(self.ui, name)
                if name.endswith("DoubleSpinBox"):
                    widget.connect("valueChanged(double)", self.updateParameterNodeFromGUI)
                elif name.endswith("SpinBox"):
                    widget.connect("valueChanged(int)", self.updateParameterNodeFromGUI)

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
        self._shownRun = None
        MRtoCTModuleWidget.onSceneEndClose(self, caller, event)

    # ------------------------------------------------------------------------------------------- parameter node

    def showParameters(self, p):
        self.ui.mrFolderPathLineEdit.currentPath = p.GetParameter("MRFolder")
        self.ui.ctFolderPathLineEdit.currentPath = p.GetParameter("CTFolder")
        self.ui.runFolderPathLineEdit.currentPath = p.GetParameter("RunFolder")
        selectData(self.ui.presetComboBox, p.GetParameter("Preset"))
        self.ui.presetDescriptionLabel.text = self.logic.presetDescription(p.GetParameter("Preset"))
        selectData(self.ui.deviceComboBox, p.GetParameter("Device"))
        self.ui.processesSpinBox.value = int(p.GetParameter("Processes") or 1)
        for field, value in self.logic.settings(p).items():
            self._showSetting(field, value)
        self.ui.lambdaSupervisedDoubleSpinBox.enabled = p.GetParameter("Preset") == "paired"
        self.updateRunState()

    def storeParameters(self, p):
        p.SetParameter("MRFolder", self.ui.mrFolderPathLineEdit.currentPath)
        p.SetParameter("CTFolder", self.ui.ctFolderPathLineEdit.currentPath)
        p.SetParameter("RunFolder", self.ui.runFolderPathLineEdit.currentPath)
        p.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
        p.SetParameter("Processes", str(self.ui.processesSpinBox.value))
        for field in SETTING_WIDGETS:
            self.logic.setSetting(p, field, self._readSetting(field))

    def _showSetting(self, field, value):
        names = SETTING_WIDGETS[field]
        if field == "image_size":
            self.ui.imageHeightSpinBox.value, self.ui.imageWidthSpinBox.value = int(value[0]), int(value[1])
        elif field == "plane":
            selectData(self.ui.planeComboBox, value)
        else:
            getattr(self.ui, names).value = value

    def _readSetting(self, field):
        if field == "image_size":
            return [int(self.ui.imageHeightSpinBox.value), int(self.ui.imageWidthSpinBox.value)]
        if field == "plane":
            return self.ui.planeComboBox.currentData or PLANES[0]
        widget = getattr(self.ui, SETTING_WIDGETS[field])
        return float(widget.value) if SETTING_WIDGETS[field].endswith("DoubleSpinBox") else int(widget.value)

    def onPresetChanged(self, index):
        if self._updatingGUIFromParameterNode or self._parameterNode is None:
            return
        self.updateParameterNodeFromGUI()
        self.logic.applyPreset(self._parameterNode, self.ui.presetComboBox.currentData)

    def onResetSettings(self):
        if self._parameterNode is not None:
            self.logic.applyPreset(self._parameterNode, self._parameterNode.GetParameter("Preset"))

    def onDevicesChanged(self):
        gpus = sum(1 for device in self.devices if device.startswith("cuda"))
        self.ui.processesSpinBox.maximum = max(1, gpus, os.cpu_count() or 1)

    # ------------------------------------------------------------------------------------------- run folder

    def onRunFolderChanged(self, path):
        if self._updatingGUIFromParameterNode:
            return
        self.updateParameterNodeFromGUI()
        p = self._parameterNode
        if p is None or self._job is not None:
            return
        state = self.logic.runState(p.GetParameter("RunFolder"))
        if state is not None and state.launch:  # a run made earlier: show its data folders if none are chosen
            for key, parameter in (("mr", "MRFolder"), ("ct", "CTFolder")):
                if not p.GetParameter(parameter) and state.launch.get(key):
                    p.SetParameter(parameter, state.launch[key])
        self.showRun(p.GetParameter("RunFolder"))

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
        state = self.logic.runState(p.GetParameter("RunFolder")) if p is not None and not running else None
        if running:
            self.ui.runStateLabel.text = "Training in this folder."
        elif state is None:
            self.ui.runStateLabel.text = "Choose a new or empty folder; its name becomes the model's name."
        else:
            self.ui.runStateLabel.text = state.summary()[0].upper() + state.summary()[1:] + "."
        ready = bool(p and p.GetParameter("MRFolder") and p.GetParameter("CTFolder") and p.GetParameter("RunFolder"))
        self.ui.startButton.enabled = not running and ready and not (state and (state.has_checkpoint or state.finished
                                                                                or state.running_pid))
        self.ui.resumeButton.enabled = not running and bool(state and state.resumable and not state.running_pid)
        self.ui.stopButton.enabled = running
        for widget in (self.ui.dataCollapsibleButton, self.ui.trainingCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        if self.ui.startButton.enabled:
            self.ui.startButton.toolTip = "Check the data, then train a new model in the run folder"
        elif not running and state is not None and (state.has_checkpoint or state.finished):
            self.ui.startButton.toolTip = "The run folder already holds a run: choose a new folder (or Resume)"
        else:
            self.ui.startButton.toolTip = "Choose the MR, CT and run folders"

    # ------------------------------------------------------------------------------------------- start, stop, resume

    def onStartButton(self):
        self._launch(resume=False)

    def onResumeButton(self):
        self._launch(resume=True)

    def _launch(self, resume):
        if self._job is not None or self._check is not None:
            return
        self.updateParameterNodeFromGUI()
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
        self._check = BackgroundCheck(lambda: self.logic.checkTraining(process), process, resume)
        self._pollTimer.start()

    def onPollTimer(self):
        check = self._check
        if check is not None and check.done:
            self._check = None
            self.onDataChecked(check)
        MRtoCTModuleWidget.onPollTimer(self)
        if self._check is not None:
            self._pollTimer.start()

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
        checkpoint = job.process.checkpoint_iteration
        why = f" because {reason}" if reason else ""
        if checkpoint:
            message = (f"Stopped at iteration {job.process.iteration}{why}. Resume continues from the checkpoint at "
                       f"iteration {checkpoint}.")
        else:
            message = f"Stopped{why}, before the first checkpoint: Start begins again."
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
        """The preview PNG (MR | sCT | reconstructed MR | a CT) in the panel, scaled to its width."""
        label = self.ui.previewLabel
        pixmap = qt.QPixmap(path) if path else None
        if pixmap is None or pixmap.isNull():
            if path is None:
                label.setPixmap(qt.QPixmap())
                label.text = ("The preview (MR | synthetic CT | reconstructed MR | a CT) appears here during "
                              "training.")
                self._previewPath = None
            return  # a preview being rewritten: keep the last one
        width = max(200, label.width - 4)
        label.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
        label.toolTip = path
        self._previewPath = path

    def onShowPlot(self):
        p = self._parameterNode
        runFolder = self._job.runFolder if self._job is not None else (p.GetParameter("RunFolder") if p else "")
        if not runFolder:
            return
        _, chartNode = self.logic.lossPlotNodes(runFolder)
        try:
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)
        except Exception as error:
            logging.warning(f"MRtoCTTraining: cannot show the loss plot: {error}")

    def onUseModel(self):
        p = self._parameterNode
        state = self.logic.runState(p.GetParameter("RunFolder")) if p else None
        name = self.logic.modelNameOfRun(p.GetParameter("RunFolder")) if state and state.finished else None
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
# Logic
#


class BackgroundCheck:
    """``function()`` in a daemon thread (the data check reads every volume): ``done``, then ``result`` or
    ``error`` (its message). Polled by the panel's timer, so the click returns at once."""

    def __init__(self, function, process, resume):
        self.process, self.resume = process, resume
        self.result, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            self.result = function()
        except Exception as error:  # reported by the panel
            self.error = str(error) or type(error).__name__

    @property
    def done(self):
        return not self._thread.is_alive()


class TrainingJob:
    """A training run started by ``MRtoCTTrainingLogic.startTraining`` / ``resumeTraining``.

    ``process`` is the ``MRtoCTSynthesisLib.training_process.TrainingProcess`` (iteration, losses, eta_seconds,
    preview, checkpoint_iteration, log, error). ``modelName`` is set once the finished model is registered.
    """

    def __init__(self, process):
        self.process = process
        self.runFolder = str(process.run_dir)
        self.modelName = None
        self.registrationError = None
        self.pendingRows = []

    @property
    def finished(self):
        return self.process.finished

    @property
    def succeeded(self):
        return self.process.succeeded and self.modelName is not None


class MRtoCTTrainingLogic(ScriptedLoadableModuleLogic):
    """Starts, follows, stops and resumes training runs; loss curves as MRML plot nodes. No Qt here.

    Blocking (console, scripts)::

        logic = slicer.util.getModuleLogic("MRtoCTTraining")   # or MRtoCTTrainingLogic()
        job = logic.train("/data/MR", "/data/CT", "/runs/pelvis-yang", preset="yang2018",
                          settings={"iterations": 20000}, device="cuda:0")
        job.modelName   # now listed by MR to CT Synthesis

    Non-blocking (what the panel does): ``startTraining`` (or ``resumeTraining``) -> ``pollTraining(job)`` from a
    timer until ``job.finished``; ``stopTraining(job)`` at any time.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    # ------------------------------------------------------------------------------------------- presets, settings

    @staticmethod
    def presetNames():
        from MRtoCTSynthesisLib.config import PRESET_NAMES

        return list(PRESET_NAMES)

    @staticmethod
    def presetDescription(name):
        from MRtoCTSynthesisLib.training_process import preset_description

        return preset_description(name)

    @staticmethod
    def presetSettings(name):
        """The panel's settings (``SETTING_WIDGETS`` fields) of a preset, JSON-compatible (lists, not tuples)."""
        from MRtoCTSynthesisLib.training_process import preset_settings

        values = preset_settings(name)
        return {field: list(values[field]) if isinstance(values[field], tuple) else values[field]
                for field in SETTING_WIDGETS}

    def setDefaultParameters(self, parameterNode):
        defaults = {"Preset": DEFAULT_PRESET, "Device": "auto", "Processes": "1"}
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)
        if parameterNode.GetParameter("Preset") not in self.presetNames():  # e.g. saved by another version
            parameterNode.SetParameter("Preset", DEFAULT_PRESET)
        presetValues = self.presetSettings(parameterNode.GetParameter("Preset"))
        for field, value in presetValues.items():
            if not parameterNode.GetParameter(SETTING_PREFIX + field):
                self.setSetting(parameterNode, field, value)

    def applyPreset(self, parameterNode, name):
        """Select preset ``name`` and set every Advanced setting to its value."""
        values = self.presetSettings(name)
        wasModified = parameterNode.StartModify()
        parameterNode.SetParameter("Preset", name)
        for field, value in values.items():
            self.setSetting(parameterNode, field, value)
        parameterNode.EndModify(wasModified)

    @staticmethod
    def setSetting(parameterNode, field, value):
        if field not in SETTING_WIDGETS:
            raise ValueError(f"unknown setting {field!r}; known: {sorted(SETTING_WIDGETS)}")
        parameterNode.SetParameter(SETTING_PREFIX + field, json.dumps(value))

    def settings(self, parameterNode):
        """The Advanced settings stored in the parameter node: {TrainConfig field: value}."""
        values = {}
        for field in SETTING_WIDGETS:
            text = parameterNode.GetParameter(SETTING_PREFIX + field)
            if text:
                values[field] = json.loads(text)
        return values

    # ------------------------------------------------------------------------------------------- dependencies

    @staticmethod
    def setupPythonRequirements(askConfirmation=True):
        """What the synthesis needs (PyTorch through the PyTorch extension, the engine's packages), plus matplotlib
        for the trainer's preview and loss pictures. Returns False if the user declined an installation."""
        return dependencies.setupPythonRequirements(
            dependencies.ENGINE_REQUIREMENTS + dependencies.TRAINING_REQUIREMENTS, askConfirmation,
            "Train MR-to-CT model")

    # ------------------------------------------------------------------------------------------- runs

    @staticmethod
    def runState(runFolder):
        """What a run folder holds (``training_process.RunState``), or None for no folder."""
        if not runFolder:
            return None
        from MRtoCTSynthesisLib.training_process import run_state

        return run_state(runFolder)

    def startTraining(self, mrFolder, ctFolder, runFolder, preset=DEFAULT_PRESET, settings=None, device="auto",
                      processes=1, python=None):
        """Check the data and settings, then start a new run in a child process; returns a ``TrainingJob``.

        ``settings``: TrainConfig fields (the panel's Advanced settings, or any other such as ``ngf``); those equal to
        the preset's are not passed on. Raises ValueError / DatasetError (a ValueError) with a clear message before
        anything is created or started: no volumes, a CT in the MR folder, an unreadable file, a bad setting, a run
        folder that already holds a run.
        """
        process = self.newTrainingProcess(mrFolder, ctFolder, runFolder, preset=preset, settings=settings,
                                          device=device, processes=processes, python=python)
        process.start()
        return self._newJob(process)

    def resumeTraining(self, runFolder, mrFolder=None, ctFolder=None, device="auto", processes=1, python=None):
        """Continue a stopped run (also one from an earlier Slicer session) from its last checkpoint. The data
        folders default to those the run was started with; the settings are the run's own (config.json)."""
        process = self.newTrainingProcess(mrFolder, ctFolder, runFolder, device=device, processes=processes,
                                          resume=True, python=python)
        process.start()
        return self._newJob(process)

    @staticmethod
    def newTrainingProcess(mrFolder, ctFolder, runFolder, preset=DEFAULT_PRESET, settings=None, device="auto",
                           processes=1, resume=False, python=None):
        """A ``TrainingProcess`` not started yet (``resume``: the run's own settings; the folders may be None)."""
        from MRtoCTSynthesisLib.training_process import TrainingProcess, config_overrides

        python = python or pythonExecutable()
        if resume:
            return TrainingProcess(runFolder, mrFolder or None, ctFolder or None, device=device, processes=processes,
                                   resume=True, python=python)
        return TrainingProcess(runFolder, mrFolder, ctFolder, preset=preset,
                               overrides=config_overrides(preset, dict(settings or {})), device=device,
                               processes=processes, python=python)

    def processFromParameterNode(self, parameterNode, resume=False, python=None):
        """The panel's run as a ``TrainingProcess`` not started yet."""
        p = parameterNode
        return self.newTrainingProcess(p.GetParameter("MRFolder"), p.GetParameter("CTFolder"),
                                       p.GetParameter("RunFolder"), preset=p.GetParameter("Preset") or DEFAULT_PRESET,
                                       settings=self.settings(p), device=p.GetParameter("Device") or "auto",
                                       processes=int(p.GetParameter("Processes") or 1), resume=resume, python=python)

    @staticmethod
    def checkTraining(process):
        """Everything checkable before training (reads every volume: the panel calls it in a thread); ValueError
        with what to do. Returns the configuration the run will use."""
        from MRtoCTSynthesisLib.training_process import check_training

        return check_training(process.mr, process.ct, process.run_dir, process.preset, process.overrides,
                              process.resume, process.device, process.processes)

    def startCheckedTraining(self, process, config):
        """Start a process that ``checkTraining`` accepted; returns the ``TrainingJob``."""
        process.config = config
        process.start(check=False)
        return self._newJob(process)

    def _newJob(self, process):
        job = TrainingJob(process)
        self.lossPlotNodes(job.runFolder)  # the plot exists from the start (empty until the first iteration)
        return job

    def pollTraining(self, job):
        """Follow a running job (never blocks): returns its new events; updates the loss plot; registers the model
        when the "finished" event arrives."""
        events = job.process.poll()
        rows = job.pendingRows
        for event in events:
            kind = event["event"]
            if kind == "start":  # a resumed run: the losses logged before its checkpoint
                from MRtoCTSynthesisLib.training_process import read_losses

                self.updateLossPlot(job.runFolder, read_losses(job.runFolder, below=int(event.get("iteration", 1))),
                                    reset=True)
                rows.clear()
            elif kind == "iteration":
                rows.append({"iteration": int(event["iteration"]), **(event.get("losses") or {}),
                             "lr": event.get("lr")})
            elif kind == "finished":
                self._registerModel(job, event.get("model"))
        if rows:
            self.updateLossPlot(job.runFolder, rows)
            rows.clear()
        return events

    def _registerModel(self, job, model):
        from MRtoCTSynthesisLib.training_process import register_trained_model

        try:
            job.modelName = register_trained_model(model)
        except Exception as error:
            job.registrationError = str(error)
            logging.error(f"MRtoCTTraining: cannot register the model {model}: {error}")

    def stopTraining(self, job):
        """Kill the job's process tree (torchrun workers included); the last checkpoint stays usable for Resume."""
        job.process.stop()

    def waitForTraining(self, job, timeout=None, interval=0.2):
        """Block until the job ends (or ``timeout`` s pass), following its events; returns the job."""
        deadline = None if timeout is None else time.time() + timeout
        self.pollTraining(job)
        while not job.finished and (deadline is None or time.time() < deadline):
            time.sleep(interval)
            self.pollTraining(job)
        return job

    def train(self, mrFolder, ctFolder, runFolder, preset=DEFAULT_PRESET, settings=None, device="auto",
              processes=1, python=None, timeout=None):
        """Train a model (blocking); returns the finished ``TrainingJob`` (``job.modelName`` is registered).
        Raises RuntimeError if training fails or ``timeout`` s pass (the process is stopped then)."""
        job = self.startTraining(mrFolder, ctFolder, runFolder, preset=preset, settings=settings, device=device,
                                 processes=processes, python=python)
        try:
            self.waitForTraining(job, timeout=timeout)
        finally:
            if not job.finished:
                self.stopTraining(job)
        if not job.succeeded:
            raise RuntimeError(f"training failed: {job.registrationError or job.process.error}")
        return job

    @staticmethod
    def modelNameOfRun(runFolder):
        """The registered name of a finished run's model (None if it is not registered)."""
        from MRtoCTSynthesisLib.modelfile import local_models

        model = (Path(runFolder) / "model.mrtoct.safetensors").resolve()
        return next((name for name, path in local_models().items() if Path(path).resolve() == model), None)

    @staticmethod
    def useModelForSynthesis(name):
        """Select model ``name`` in the MR to CT Synthesis module's parameter node."""
        MRtoCTSynthesisLogic().getParameterNode().SetParameter("Model", name)

    # ------------------------------------------------------------------------------------------- loss plot

    @staticmethod
    def _runKey(runFolder):
        return str(Path(runFolder).expanduser().resolve())

    def lossPlotNodes(self, runFolder, create=True):
        """(table node, plot chart node) of a run's losses, found by the run folder; created if missing."""
        scene = slicer.mrmlScene
        key = self._runKey(runFolder)
        found = {}
        for className in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
            nodes = scene.GetNodesByClass(className)
            for index in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(index)
                if node.GetAttribute(RUN_ATTRIBUTE) == key:
                    found[className] = node
                    break
        if not create or len(found) == 2:
            return found.get("vtkMRMLTableNode"), found.get("vtkMRMLPlotChartNode")
        name = Path(key).name
        tableNode = found.get("vtkMRMLTableNode")
        if tableNode is None:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} losses"))
            tableNode.SetAttribute(RUN_ATTRIBUTE, key)
            column = vtk.vtkDoubleArray()
            column.SetName("iteration")
            tableNode.GetTable().AddColumn(column)
            tableNode.SetLocked(True)  # written by the trainer's events, not by hand
        chartNode = found.get("vtkMRMLPlotChartNode")
        if chartNode is None:
            chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} loss curves"))
            chartNode.SetAttribute(RUN_ATTRIBUTE, key)
            chartNode.SetTitle(f"Training losses: {name}")
            chartNode.SetXAxisTitle("iteration")
            chartNode.SetYAxisTitle("loss")
            chartNode.SetLegendVisibility(True)
        return tableNode, chartNode

    def lossSeriesNodes(self, runFolder):
        """{loss name: plot series node} of a run's chart."""
        _, chartNode = self.lossPlotNodes(runFolder, create=False)
        series = {}
        if chartNode is None:
            return series
        for index in range(chartNode.GetNumberOfPlotSeriesNodes()):
            node = chartNode.GetNthPlotSeriesNode(index)
            if node is not None:
                series[node.GetYColumnName()] = node
        return series

    def updateLossPlot(self, runFolder, rows, reset=False):
        """Append ``rows`` (dicts: iteration, loss values, lr) to the run's loss table (``reset``: replace it) and add
        a plot series for each loss not plotted yet."""
        tableNode, chartNode = self.lossPlotNodes(runFolder)
        table = tableNode.GetTable()
        if reset:
            for index in range(table.GetNumberOfColumns()):
                table.GetColumn(index).SetNumberOfTuples(0)
        names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
        rowCount = table.GetNumberOfRows()
        newNames = []
        for row in rows:
            newNames += [k for k in row if k not in names and k not in newNames and k != "seconds"]
        for name in sorted(newNames, key=lambda n: (n == "lr", LOSS_ORDER.index(n) if n in LOSS_ORDER else 99, n)):
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            column.SetNumberOfTuples(rowCount)
            column.Fill(math.nan)
            table.AddColumn(column)
            names.append(name)
        columns = [table.GetColumnByName(name) for name in names]
        for row in rows:
            for name, column in zip(names, columns):
                value = row.get(name)
                column.InsertNextValue(math.nan if value is None else float(value))
        for column in columns:
            column.Modified()
        table.Modified()
        tableNode.Modified()
        self._addLossSeries(tableNode, chartNode, [n for n in names if n not in NOT_LOSSES])
        return tableNode

    def _addLossSeries(self, tableNode, chartNode, lossNames):
        key = tableNode.GetAttribute(RUN_ATTRIBUTE)
        present = self.lossSeriesNodes(key)
        scene = tableNode.GetScene()
        for name in lossNames:
            if name in present:
                continue
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode",
                                             scene.GenerateUniqueName(f"{Path(key).name} {name}"))
            series.SetAttribute(RUN_ATTRIBUTE, key)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("iteration")
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetLineWidth(2 if name == "G_total" else 1)
            series.SetColor(*LOSS_COLORS.get(name, (0.3, 0.3, 0.3)))
            chartNode.AddAndObservePlotSeriesNodeID(series.GetID())

    def loadRunIntoPlot(self, runFolder):
        """The loss plot of an existing run folder from its losses.csv; returns the number of rows (0: none)."""
        from MRtoCTSynthesisLib.training_process import read_losses

        rows = read_losses(runFolder)
        if rows:
            self.updateLossPlot(runFolder, rows, reset=True)
        return len(rows)


#
# Test (runs inside Slicer: Reload and Test, or ctest through slicer_add_python_unittest)
#


# the smallest networks and slices: a few seconds per run on a CPU
TINY_SETTINGS = {"image_size": [32, 32], "augment_pad": [36, 36], "ngf": 4, "n_blocks": 1, "ndf": 4,
                 "log_every": 1, "preview_every": 3, "validate_every": 1000, "checkpoint_every": 2, "iterations": 4}


class MRtoCTTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainTinyModel()

    def test_TrainTinyModel(self):
        import tempfile

        from MRtoCTSynthesisLib.modelfile import Catalog, local_models, read_metadata
        from MRtoCTSynthesisLib.phantom import write_phantom_dataset

        self.delayDisplay("Starting the test")
        logic = MRtoCTTrainingLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        previousCache = os.environ.get("MRTOCT_MODEL_CACHE")
        with tempfile.TemporaryDirectory() as folder:
            os.environ["MRTOCT_MODEL_CACHE"] = os.path.join(folder, "models")  # keep the user's model list clean
            try:
                write_phantom_dataset(folder, "head", 2, seed=0, shape=(32, 32, 24), spacing=(7.0, 7.0, 7.0))
                run = os.path.join(folder, "tiny-selftest")
                job = logic.train(os.path.join(folder, "mr"), os.path.join(folder, "ct"), run, preset="yang2018",
                                  settings=TINY_SETTINGS, device="cpu", timeout=600)
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
            finally:
                if previousCache is None:
                    os.environ.pop("MRTOCT_MODEL_CACHE", None)
                else:
                    os.environ["MRTOCT_MODEL_CACHE"] = previousCache
        self.delayDisplay("Test passed")
