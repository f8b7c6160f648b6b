"""Run a module's real Widget class on a real Qt (PySide6, offscreen) and a real MRML scene (slicer-core).

Slicer's widgets speak PythonQt; PySide6 speaks its own dialect. The adapter here is kept to what the modules use:

- ``wrap(obj)`` wraps a PySide6 object so that a Qt property reads and writes as an attribute
  (``label.text = "x"``, ``combo.currentData``, ``checkBox.checked``), as PythonQt does; everything else (methods,
  new-style signals ``combo.currentIndexChanged.connect(slot)``) is the PySide6 object's own. PythonQt's string
  signals (``obj.connect("clicked(bool)", slot)``) are mapped to the signal of that name. The wrapper's type is
  named after the object's Qt class and is what ``qt.<that class>`` (``ctk.``, ``slicer.qMRML...``) gives, so that
  Slicer's parameterNodeWrapper, which picks a GUI connector by ``type(widget) == qt.QCheckBox``, finds the same
  connector as in Slicer.
- ``qt``: a module with ``QTimer`` (a real QTimer, wrapped), ``Qt``, ``QFileDialog``, ``QPixmap`` and the widget
  types above; ``ctk``: the widget types.
- Small PySide6 stand-ins for Slicer's ``qMRMLNodeComboBox`` (holds a current node, emits
  ``currentNodeChanged``), ``ctkPathLineEdit``, ``ctkSliderWidget`` and ``ctkCollapsibleButton``.
- ``slicer.util.loadUI`` / ``childWidgetVariables`` load the module's .ui with QUiLoader; ``slicer.app`` has what
  the panels call (no layout manager: there are no slice views); ``slicer.util.errorDisplay`` / ``confirmOkCancelDisplay`` record the message instead of
  showing a box.

What this cannot catch: a PythonQt-only difference (PythonQt's overload choice, its conversion of vtk objects
through signals, a property PythonQt names differently), the real ctk/qMRML widgets' behaviour (the node selectors
here do not list the scene's nodes), Slicer's module manager (enter/exit are called by the test) and the
application event loop (the test pumps ``processEvents``); for the parameterNodeWrapper, the GUI connectors of
Slicer versions other than the vendored 5.6.0 and ``connectGui`` / ``findChildren(qt.QWidget)``, which the panels do
not call. The in-Slicer self-tests cover those.
"""
from __future__ import annotations

import functools
import sys
import time
import types
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

import ui_support


def _property_names(obj) -> frozenset:
    return _class_properties(type(obj))


@functools.cache
def _class_properties(cls) -> frozenset:
    """The Qt properties of a PySide6 class. Read from the class's ``staticMetaObject``: the wrapper PySide6 returns
    for ``obj.metaObject()`` can be invalidated with another object of that class (seen as "Internal C++ object
    (QMetaObject) already deleted" in a long test run)."""
    meta = cls.staticMetaObject
    return frozenset(meta.property(i).name() for i in range(meta.propertyCount()))


class PythonQtStyle:
    """A PySide6 object seen with PythonQt's conventions (see the module docstring); ``wrap`` picks the subclass
    named after its Qt class."""

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


_TYPES: dict[str, type] = {}


def qt_type(class_name: str) -> type:
    """The wrapper type of objects of the Qt class ``class_name`` (what ``qt.QCheckBox`` is here)."""
    if class_name not in _TYPES:
        _TYPES[class_name] = type(class_name, (PythonQtStyle,), {})
    return _TYPES[class_name]


def wrap(obj) -> PythonQtStyle:
    return qt_type(type(obj).staticMetaObject.className())(obj)


def _types_module(name: str, **attributes) -> types.ModuleType:
    """A module whose every other attribute is a wrapper type (``qt.QSpinBox``, ``ctk.ctkPathLineEdit``)."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)

    def wrapper_type(attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return qt_type(attribute)

    module.__getattr__ = wrapper_type
    return module


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
    return _types_module("qt", QTimer=lambda *args: wrap(QtCore.QTimer(*args)), Qt=QtCore.Qt,
                         QFileDialog=QtWidgets.QFileDialog, QPixmap=QtGui.QPixmap)


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
    """Put the adapter in place for the widget code of ``module_names``, the MRtoCTSlicer package and Slicer's
    parameterNodeWrapper."""
    toolkits = {"qt": qt_module(), "ctk": _types_module("ctk")}
    for name, module in toolkits.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name, loaded in list(sys.modules.items()):
        if loaded is None or not (name in module_names
                                  or name.startswith(("MRtoCTSlicer", "slicer.parameterNodeWrapper"))):
            continue
        for toolkit, module in toolkits.items():
            if hasattr(loaded, toolkit):
                monkeypatch.setattr(loaded, toolkit, module)
    for widget in ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget"):
        monkeypatch.setattr(slicer, widget, qt_type(widget), raising=False)
    recorder = Recorder()
    monkeypatch.setattr(slicer.util, "errorDisplay", recorder.errorDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", recorder.confirmOkCancelDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: wrap(ui_support.load_panel(Path(path), STAND_INS)),
                        raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda ui: types.SimpleNamespace(**{
        child.objectName(): wrap(child) for child in ui.unwrap().findChildren(QtWidgets.QWidget)
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
