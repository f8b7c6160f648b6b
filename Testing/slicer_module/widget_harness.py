"""Run a module's real Widget class on a real Qt (PySide6, offscreen) and a real MRML scene (slicer-core).

Slicer's widgets speak PythonQt; PySide6 speaks its own dialect. The adapter here is kept to what the modules use:

- ``PythonQtStyle(obj)`` wraps a PySide6 object so that a Qt property reads and writes as an attribute
  (``label.text = "x"``, ``combo.currentData``, ``checkBox.checked``), as PythonQt does; everything else (methods,
  new-style signals ``combo.currentIndexChanged.connect(slot)``) is the PySide6 object's own. PythonQt's string
  signals (``obj.connect("clicked(bool)", slot)``) are mapped to the signal of that name.
- ``qt``: a module with ``QTimer`` (a real QTimer, wrapped), ``Qt``, ``QFileDialog`` and ``QPixmap``.
- Small PySide6 stand-ins for Slicer's ``qMRMLNodeComboBox`` (holds a current node, emits
  ``currentNodeChanged``), ``ctkPathLineEdit``, ``ctkSliderWidget`` and ``ctkCollapsibleButton``.
- ``slicer.util.loadUI`` / ``childWidgetVariables`` load the module's .ui with QUiLoader; ``slicer.app`` has what
  the panels call (no layout manager: there are no slice views); ``slicer.util.errorDisplay`` / ``confirmOkCancelDisplay`` record the message instead of
  showing a box.

What this cannot catch: a PythonQt-only difference (PythonQt's overload choice, its conversion of vtk objects
through signals, a property PythonQt names differently), the real ctk/qMRML widgets' behaviour (the node selectors
here do not list the scene's nodes), Slicer's module manager (enter/exit are called by the test) and the
application event loop (the test pumps ``processEvents``). The in-Slicer self-tests cover those.
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

import ui_support


def _property_names(obj) -> set:
    meta = obj.metaObject()
    return {meta.property(i).name() for i in range(meta.propertyCount())}


class PythonQtStyle:
    """A PySide6 object seen with PythonQt's conventions (see the module docstring)."""

    def __init__(self, obj):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_properties", _property_names(obj))

    def __getattr__(self, name):
        if name in self._properties:
            return self._obj.property(name)
        return getattr(self._obj, name)

    def __setattr__(self, name, value):
        if name in self._properties:
            self._obj.setProperty(name, value)
        else:
            object.__setattr__(self, name, value)

    def connect(self, signature, slot):
        """PythonQt's ``obj.connect("valueChanged(int)", slot)``."""
        getattr(self._obj, signature.split("(")[0]).connect(slot)

    def unwrap(self):
        return self._obj


class qMRMLNodeComboBox(ui_support.qMRMLNodeComboBox):
    """Holds a current MRML node; ``currentNodeChanged`` carries it."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node, self._baseName = None, ""

    def setMRMLScene(self, scene):
        self.scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.clear()
            self.addItem(node.GetName() if node is not None else "None")
            self.currentNodeChanged.emit(node)

    def getCurrentNodeID(self):
        return self._node.GetID() if self._node is not None else None

    def getBaseName(self):
        return self._baseName

    def setBaseName(self, name):
        self._baseName = name

    currentNodeID = QtCore.Property(str, getCurrentNodeID)
    baseName = QtCore.Property(str, getBaseName, setBaseName)


class ctkPathLineEdit(ui_support.ctkPathLineEdit):
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.comboBox.editTextChanged.connect(self.currentPathChanged)

    currentPath = QtCore.Property(str, ui_support.ctkPathLineEdit.getCurrentPath,
                                  ui_support.ctkPathLineEdit.setCurrentPath)


class ctkSliderWidget(ui_support.ctkSliderWidget):
    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.spinBox.valueChanged.connect(self.valueChanged)


class qMRMLWidget(ui_support.qMRMLWidget):
    def setMRMLScene(self, scene):
        for selector in self.findChildren(qMRMLNodeComboBox):
            selector.setMRMLScene(scene)


STAND_INS = (ui_support.ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLWidget, ctkPathLineEdit, ctkSliderWidget)


def qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = lambda *args: PythonQtStyle(QtCore.QTimer(*args))
    qt.Qt = QtCore.Qt
    qt.QFileDialog = QtWidgets.QFileDialog
    qt.QPixmap = QtGui.QPixmap
    return qt


class Recorder:
    """Stands in for Slicer's message boxes: records what would have been shown."""

    def __init__(self):
        self.errors, self.questions = [], []

    def errorDisplay(self, text, *args, **kwargs):
        self.errors.append(text)

    def confirmOkCancelDisplay(self, text, *args, **kwargs):
        self.questions.append(text)
        return True


def install(monkeypatch, slicer, module_names=()) -> Recorder:
    """Put the adapter in place for the widget code of ``module_names`` (and the MRtoCTSlicer package)."""
    qt = qt_module()
    monkeypatch.setitem(sys.modules, "qt", qt)
    for name, loaded in list(sys.modules.items()):
        if loaded is not None and (name in module_names or name.startswith("MRtoCTSlicer")) and hasattr(loaded, "qt"):
            monkeypatch.setattr(loaded, "qt", qt)
    recorder = Recorder()
    monkeypatch.setattr(slicer.util, "errorDisplay", recorder.errorDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", recorder.confirmOkCancelDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: PythonQtStyle(ui_support.load_panel(Path(path), STAND_INS)),
                        raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda ui: types.SimpleNamespace(**{
        child.objectName(): PythonQtStyle(child) for child in ui.unwrap().findChildren(QtWidgets.QWidget)
        if child.objectName()}), raising=False)
    app = QtWidgets.QApplication.instance()
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        processEvents=app.processEvents, connect=lambda *a: None, disconnect=lambda *a: None,
        setOverrideCursor=lambda *a: None, restoreOverrideCursor=lambda *a: None, testingEnabled=lambda: False,
        layoutManager=lambda: None),  # no slice views: setSliceViewerLayers still sets the scene's composite nodes
        raising=False)
    base = sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleWidget

    def setup(self):
        self.panelWidget = QtWidgets.QWidget()  # Slicer's module panel; kept alive with the widget
        layout = QtWidgets.QVBoxLayout(self.panelWidget)
        self.layout = types.SimpleNamespace(addWidget=lambda w, *a: layout.addWidget(getattr(w, "unwrap", lambda: w)()),
                                            addStretch=layout.addStretch)

    def resourcePath(self, relative):
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / relative)

    monkeypatch.setattr(base, "setup", setup, raising=False)
    monkeypatch.setattr(base, "resourcePath", resourcePath, raising=False)
    return recorder


def open_panel(widget_class):
    """The module's widget, set up and entered, as Slicer does when the user opens the module."""
    widget = widget_class(parent=types.SimpleNamespace(isEntered=True))
    widget.setup()
    widget.enter()
    return widget


def pump(until, timeout=60.0):
    """Process Qt events (timers fire) until ``until()`` is true; False on timeout."""
    app = QtWidgets.QApplication.instance()
    deadline = time.time() + timeout
    while time.time() < deadline:
        app.processEvents()
        if until():
            return True
        time.sleep(0.02)
    return False
