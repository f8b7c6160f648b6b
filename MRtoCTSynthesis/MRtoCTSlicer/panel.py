"""The panel template of the three modules (PythonQt conventions): the .ui, the parameter node bound to the GUI
(Slicer's parameterNodeWrapper, ``parameters``), one timer that follows the background job and the child-process probes, scene-close
handling, and a Reload that also reloads this package and the engines.

Nothing heavy runs in a slot: the job is a child process (``MRtoCTSynthesisLib.background``) polled every
``POLL_INTERVAL_MSEC``; the device list, what ``auto`` precision chooses and the model list come from short child
processes (``JsonCommand`` probes), so opening a panel neither imports torch nor starts CUDA in Slicer's process.
"""
import logging
import sys

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.parameterNodeWrapper import SlicerParameterNamePropertyName
from slicer.util import VTKObservationMixin

from .backgroundcheck import BackgroundCheck
from .choices import deviceItems, fillComboBox
from .formatting import etaText
from .interpreter import pythonExecutable
from .parameters import ComboBoxDataToStrConnector

RELOADED_PACKAGES = ("MRtoCTSlicer", "MRtoCTSynthesisLib", "MRtoCTSegmentLib")


class MRtoCTModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """A subclass calls ``setupPanel`` from its ``setup`` and provides ``showParameters(parameters)`` (what the bound
    widgets do not show: model lists, labels, button states; called after every change), ``onJobFinished(job)``,
    ``stopRunningJob(reason)`` and either ``cancelBackgroundJob(job)`` (a file job: the default ``pollJob`` and
    ``cancelJob`` serve it) or its own ``pollJob(job)`` (new updates of the running job; called by the timer).
    Its Logic provides ``getParameterNode`` (the module's parameterNodeWrapper) and ``setupPythonRequirements``."""

    POLL_INTERVAL_MSEC = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None  # the module's parameterNodeWrapper (``parameters``)
        self._parameterNodeGuiTag = None
        self._dataComboBoxes = {}
        self._updatingGUIFromParameterNode = False
        self._job = None
        self._probes = []  # (JsonCommand, callback(result or None))
        self._check = None  # a BackgroundCheck (a file check run in a thread) and the callback of its end
        self._pollTimer = None
        self.devices, self.automaticChoices = ["auto", "cpu"], {}

    def setupPanel(self, uiFile, logic, dataComboBoxes=None):
        """The module's .ui in the panel (``self.ui``), the logic, the poll timer and the scene observers.
        ``dataComboBoxes``: {parameter: name of a combo box filled at run time, each item's data the value}."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(uiFile))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self._dataComboBoxes = {name: getattr(self.ui, widget) for name, widget in (dataComboBoxes or {}).items()}
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MSEC)
        self._pollTimer.timeout.connect(self.onPollTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self):
        self.stopRunningJob("Slicer is closing")
        for probe, _ in self._probes:
            probe.cancel()
        self._probes = []
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        """The panel is hidden: its own updates stop (a running job still finishes into the parameters). The widgets
        stay bound: binding again on every entry would leave one VTK observer behind each time in Slicer < 5.12,
        whose ``disconnectGui`` does not remove it."""
        self._stopObservingParameters()

    def onSceneStartClose(self, caller, event):
        self.stopRunningJob("the scene was closed")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onReload(self):
        """Reload and Test: drop this package and the engines from ``sys.modules`` first, so the module file's
        imports load their current code too (Slicer's Reload re-executes only the module file)."""
        for name in list(sys.modules):
            if name.split(".")[0] in RELOADED_PACKAGES:
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameters):
        """Bind the panel to ``parameters`` (the module's parameterNodeWrapper, or None): the widgets with a
        ``SlicerParameterName`` in the .ui and the run-time combo boxes follow it and write into it. Parameters over
        the node the widgets are bound to already keep that binding.

        ``connectParametersToGui`` rather than ``connectGui``: before Slicer 5.10 ``connectGui`` returns no tag, so
        ``disconnectGui`` could not undo it and each new parameter node (a scene closed) would bind the widgets once
        more."""
        current = self._parameterNode
        if parameters is None or current is None or parameters.parameterNode is not current.parameterNode:
            self._unbindParameters()
            self._parameterNode = parameters
            if parameters is None:
                return
            widgets = {widget.property(SlicerParameterNamePropertyName): widget for widget in vars(self.ui).values()
                       if widget.property(SlicerParameterNamePropertyName)}
            widgets.update({name: ComboBoxDataToStrConnector(combo) for name, combo in self._dataComboBoxes.items()})
            self._parameterNodeGuiTag = parameters.connectParametersToGui(widgets)
            self.onDevicesChanged()  # a connector may have reset a range the device list narrows
        node = self._parameterNode.parameterNode
        if not self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode):
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def _unbindParameters(self):
        self._stopObservingParameters()
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None

    def _stopObservingParameters(self):
        node = self._parameterNode.parameterNode if self._parameterNode is not None else None
        if node is not None and self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode):
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            self.showParameters(self._parameterNode)
        finally:
            self._updatingGUIFromParameterNode = False

    def setFirstScalarVolumeAsInput(self):
        """Parameters without an input get the scene's first grey-level volume."""
        if self._parameterNode is not None and self._parameterNode.inputVolume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = volume

    # ------------------------------------------------------------------------------------------- job and probes

    def startPolling(self, job):
        self._job = job
        self._pollTimer.start()

    def startProbe(self, probe, callback):
        """Start a ``JsonCommand`` child; ``callback(result)`` (None if it failed) runs from the timer when it ends."""
        try:
            probe.start()
        except OSError as error:
            logging.warning(f"{self.moduleName}: cannot start {probe.command()[0]}: {error}")
            callback(None)
            return
        self._probes.append((probe, callback))
        self._pollTimer.start()

    def startCheck(self, function, callback, **context):
        """``function()`` in a thread; ``callback(check)`` (``check.result`` or ``check.error``, and ``context`` as
        attributes) runs from the timer when it ends."""
        self._check = (BackgroundCheck(function, **context), callback)
        self._pollTimer.start()

    def onPollTimer(self):
        if self._check is not None and self._check[0].done:
            (check, callback), self._check = self._check, None
            callback(check)
        for probe, callback in list(self._probes):
            probe.poll()
            if probe.finished:
                self._probes.remove((probe, callback))
                if probe.result is None:
                    logging.info(f"{self.moduleName}: {' '.join(probe.arguments)} gave no answer: {probe.log_tail(5)}")
                callback(probe.result)
        job = self._job
        if job is not None:
            try:
                finished = self.pollJob(job)
            except Exception as error:
                self.stopRunningJob("the panel lost track of it")
                slicer.util.errorDisplay(f"Lost track of the background process: {error}")
                return
            if finished and self._job is job:
                self._job = None
                self.onJobFinished(job)
        if self._job is None and not self._probes and self._check is None:
            self._pollTimer.stop()

    def pollJob(self, job):
        """A file job's (synthesis, segmentation) newest update in the progress bar and the status line; True once
        it has ended. The training panel has its own."""
        updates = job.process.poll()
        if updates:
            self.ui.progressBar.setValue(int(100 * updates[-1]["progress"]))
            self.ui.progressBar.format = "%p%" + etaText(updates[-1])
            self.ui.statusLabel.text = updates[-1]["message"]
        return job.process.finished

    def cancelJob(self):
        """Cancel the running job (``cancelBackgroundJob``, the subclass' hook); the scene stays as it was."""
        job, self._job = self._job, None
        if job is None:
            return
        self.cancelBackgroundJob(job)
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        self.updateButtonStates()

    def refreshDevices(self):
        """Ask a child process which devices torch sees and what ``auto`` precision chooses on each."""
        from MRtoCTSynthesisLib.background import acceleration_probe

        self.startProbe(acceleration_probe(python=pythonExecutable()), self.onAccelerationAnswer)

    def onAccelerationAnswer(self, result):
        from MRtoCTSynthesisLib.background import acceleration_choices

        self.devices, self.automaticChoices = acceleration_choices(result)
        selected = self._parameterNode.device if self._parameterNode is not None else None
        fillComboBox(self.ui.deviceComboBox, deviceItems(self.devices), selected=selected or "auto")
        self.onDevicesChanged()

    def onDevicesChanged(self):
        """Called when the device list has been refilled (e.g. to update the precision menu)."""

    def checkPythonRequirements(self, missingText):
        """Before a run: install what is missing (after confirmation); then ask for the devices again (torch may have
        just been installed). False, with ``missingText`` in the status line, if the user declined."""
        self.ui.statusLabel.text = "Checking Python packages..."
        if not self.logic.setupPythonRequirements(askConfirmation=True):
            self.ui.statusLabel.text = missingText
            return False
        if len(self.devices) <= 2:
            self.refreshDevices()
        return True

    # ------------------------------------------------------------------------------------------- subclass hooks

    def showParameters(self, parameters):
        raise NotImplementedError

    def cancelBackgroundJob(self, job):
        raise NotImplementedError

    def onJobFinished(self, job):
        raise NotImplementedError

    def stopRunningJob(self, reason):
        raise NotImplementedError
