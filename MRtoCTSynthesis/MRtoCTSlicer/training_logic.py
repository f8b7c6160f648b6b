"""The "Train MR-to-CT model" logic: starts, follows, stops and resumes training runs (child processes of
``MRtoCTSynthesisLib.training_process``) and keeps their loss curves as MRML table / plot nodes; no Qt."""
import logging
import math
import time
from pathlib import Path

import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies
from .interpreter import pythonExecutable
from .parameters import (  # noqa: F401  (PLANES: part of the logic's API)
    DEFAULT_PRESET, PLANES, SETTING_FIELDS, TrainingParameters, setTrainingSetting, trainingSettings,
    wrapParameterNode,
)
from .synthesis_logic import MRtoCTSynthesisLogic

RUN_ATTRIBUTE = "MRtoCTTraining.RunFolder"
NOT_LOSSES = ("iteration", "lr", "seconds")
LOSS_ORDER = ("G_total", "cycle", "structure", "gc", "identity", "supervised", "G_gan_ct", "G_gan_mr", "D_ct", "D_mr")
LOSS_COLORS = {
    "G_total": (0.0, 0.0, 0.0), "cycle": (0.12, 0.47, 0.71), "structure": (1.0, 0.50, 0.05),
    "gc": (0.17, 0.63, 0.17), "identity": (0.58, 0.40, 0.74), "supervised": (0.55, 0.34, 0.29),
    "G_gan_ct": (0.84, 0.15, 0.16), "G_gan_mr": (0.89, 0.47, 0.76), "D_ct": (0.50, 0.50, 0.50),
    "D_mr": (0.74, 0.74, 0.13),
}



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
    def recipeNames():
        from MRtoCTSynthesisLib.config import RECIPES

        return tuple(RECIPES)

    @staticmethod
    def presetSettings(name, recipe="paper"):
        """The panel's settings (``SETTING_FIELDS``) of a preset under a recipe, JSON-compatible (lists, not tuples)."""
        from MRtoCTSynthesisLib.training_process import preset_settings

        values = preset_settings(name, recipe)
        return {field: list(values[field]) if isinstance(values[field], tuple) else values[field]
                for field in SETTING_FIELDS}

    def getParameterNode(self) -> TrainingParameters:
        """The module's parameters (``parameters.TrainingParameters``); a preset this version lacks (a scene saved by
        another version) becomes the default one."""
        parameters = wrapParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self), TrainingParameters)
        if parameters.preset not in self.presetNames():
            self.applyPreset(parameters, DEFAULT_PRESET)
        return parameters

    def applyPreset(self, parameters, name, recipe=None):
        """Select preset ``name`` (and ``recipe``; None: the chosen one) and set every Advanced setting to its value."""
        recipe = recipe or parameters.recipe
        values = self.presetSettings(name, recipe)
        with slicer.util.NodeModify(parameters):
            parameters.preset, parameters.recipe = name, recipe
            for field, value in values.items():
                setTrainingSetting(parameters, field, value)

    @staticmethod
    def setSetting(parameters, field, value):
        """One Advanced setting by its TrainConfig name; ValueError for an unknown one or a value out of range."""
        setTrainingSetting(parameters, field, value)

    @staticmethod
    def settings(parameters):
        """The Advanced settings: {TrainConfig field: value}."""
        return trainingSettings(parameters)

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

    def resumeTraining(self, runFolder, mrFolder=None, ctFolder=None, device="auto", processes=None, python=None):
        """Continue a stopped run (also one from an earlier Slicer session) from its last checkpoint. The data
        folders and the process count default to those the run was started with; the settings are the run's own
        (config.json)."""
        process = self.newTrainingProcess(mrFolder, ctFolder, runFolder, device=device, processes=processes,
                                          resume=True, python=python)
        process.start()
        return self._newJob(process)

    @staticmethod
    def newTrainingProcess(mrFolder, ctFolder, runFolder, preset=DEFAULT_PRESET, settings=None, device="auto",
                           processes=None, resume=False, python=None):
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
        settings = {**self.settings(p), "recipe": p.recipe, "init_from": p.initFrom}   # defaults are not passed on
        return self.newTrainingProcess(p.mrFolder, p.ctFolder, p.runFolder, preset=p.preset,
                                       settings=settings, device=p.device or "auto", processes=p.processes,
                                       resume=resume, python=python)

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
        MRtoCTSynthesisLogic().getParameterNode().model = name

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
