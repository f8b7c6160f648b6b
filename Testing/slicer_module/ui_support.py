"""Shared by the panel tests (test_synthesis_ui.py, test_training_ui.py): PySide6 stand-ins for the ctk/qMRML
widgets, loading a module's .ui with them, the ``self.ui.<name>`` uses of a module file (and of the shared
the shared panel template MRtoCTSlicer/panel.py), and rendering a panel to a screenshot.

Import it after PySide6 is known to be importable (the test files skip first).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtUiTools import QUiLoader

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MRtoCTSynthesis"
# the panel template all three module widgets inherit: the widgets it reaches through self.ui count for every panel
COMMON_FILE = MODULE_DIR / "MRtoCTSlicer" / "panel.py"


def used_widget_names(module_file: Path) -> set[str]:
    """Every widget the module file's code uses: ``self.ui.<name>`` there and in the shared panel template
    (MRtoCTSlicer/panel.py), the combo boxes it names in ``dataComboBoxes={...}``, and the widgets its .ui binds to a
    parameter (``SlicerParameterName``)."""
    source = module_file.read_text(encoding="utf-8")
    names = {name for text in (source, COMMON_FILE.read_text(encoding="utf-8"))
             for name in re.findall(r"self\.ui\.(\w+)", text)}
    for block in re.findall(r"dataComboBoxes=\{([^}]*)\}", source):
        names |= set(re.findall(r':\s*"(\w+)"', block))
    ui_file = module_file.parent / "Resources" / "UI" / f"{module_file.stem}.ui"
    return names | set(bound_widgets(ui_file))


def bound_widgets(ui_file: Path) -> dict[str, str]:
    """{widget name: parameter} of the widgets with a ``SlicerParameterName`` dynamic property in the .ui."""
    return {widget.get("name"): parameter for widget in ET.parse(ui_file).iter("widget")
            for prop in widget.findall("property") if prop.get("name") == "SlicerParameterName"
            for parameter in [prop.findtext("string")]}


def ui_widget_classes(ui_file: Path) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(ui_file).iter("widget")}


def expected_class(name: str, name_suffix_classes) -> str:
    """The class the module code expects for a widget name: the first (suffix, class) whose suffix ends the name."""
    return next(cls for suffix, cls in name_suffix_classes if name.lower().endswith(suffix.lower()))


# ------------------------------------------------------------------------------------------------ stand-ins


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """Slicer's collapsible section: a header bar with an arrow; collapsed hides the contents."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text, self._collapsed = "", False
        self.setStyleSheet("QGroupBox { border: 1px solid #b0b0b0; border-radius: 3px; margin-top: 1.4em; "
                           "padding-top: 4px; } QGroupBox::title { subcontrol-origin: margin; left: 6px; "
                           "font-weight: bold; }")

    def getText(self):
        return self._text

    def setText(self, text):
        self._text = text
        self._refresh()

    def getCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        self._refresh()

    def _refresh(self):
        self.setTitle(("\u25b8 " if self._collapsed else "\u25be ") + self._text)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.setMaximumHeight(28 if self._collapsed else 16777215)

    text = QtCore.Property(str, getText, setText)
    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Node selector: a combo box listing node names."""


class qMRMLWidget(QtWidgets.QWidget):
    pass


class ctkPathLineEdit(QtWidgets.QWidget):
    """Editable path combo box with a browse button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.comboBox = QtWidgets.QComboBox(self)
        self.comboBox.setEditable(True)
        self.browseButton = QtWidgets.QToolButton(self)
        self.browseButton.setText("...")
        layout.addWidget(self.comboBox, 1)
        layout.addWidget(self.browseButton)

    def getCurrentPath(self):
        return self.comboBox.currentText()

    def setCurrentPath(self, path):
        self.comboBox.setEditText(path)

    currentPath = QtCore.Property(str, getCurrentPath, setCurrentPath)


class ctkSliderWidget(QtWidgets.QWidget):
    """Slider with a spin box, on a double range."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self.spinBox = QtWidgets.QDoubleSpinBox(self)
        self.spinBox.setDecimals(2)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spinBox)
        self._sync()

    def _sync(self):
        lo, hi = self.spinBox.minimum(), self.spinBox.maximum()
        self.slider.setRange(0, 100)
        self.slider.setValue(int(round(100 * (self.spinBox.value() - lo) / ((hi - lo) or 1))))

    def _getter(name):
        return lambda self: getattr(self.spinBox, name)()

    def _setter(name):
        def set_(self, value):
            getattr(self.spinBox, "set" + name[0].upper() + name[1:])(value)
            self._sync()
        return set_

    minimum = QtCore.Property(float, _getter("minimum"), _setter("minimum"))
    maximum = QtCore.Property(float, _getter("maximum"), _setter("maximum"))
    singleStep = QtCore.Property(float, _getter("singleStep"), _setter("singleStep"))
    value = QtCore.Property(float, _getter("value"), _setter("value"))
    pageStep = QtCore.Property(float, lambda self: 0.25, lambda self, v: None)


@pytest.fixture(scope="module")
def qapp():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_panel(ui_file: Path, stand_ins=()) -> QtWidgets.QWidget:
    """The .ui loaded by QUiLoader; ``stand_ins``: custom widget classes registered first."""
    loader = QUiLoader()
    for cls in stand_ins:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(ui_file))
    assert file.open(QtCore.QFile.ReadOnly)
    try:
        panel = loader.load(file)
    finally:
        file.close()
    assert panel is not None, loader.errorString()
    return panel


def save_panel(panel: QtWidgets.QWidget, path: Path, width: int) -> Path:
    """The panel (collapsible sections applied) at ``width`` pixels and its natural height, written to ``path``."""
    for button in panel.findChildren(ctkCollapsibleButton):
        button.setCollapsed(button.collapsed)
    panel.adjustSize()
    panel.resize(width, panel.sizeHint().height())
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path))
    return path


def assert_rendered(path: Path, min_width: int, min_height: int) -> None:
    """The screenshot has at least that size, and text and widgets were drawn (not a blank rectangle)."""
    image = QtGui.QImage(str(path))
    assert image.width() >= min_width and image.height() >= min_height
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20


def assert_used_widgets_in_ui(used: set[str], classes: dict[str, str], expected) -> None:
    """Every used widget name is in the .ui (``classes``: name -> class) with the class ``expected(name)``."""
    missing = sorted(used - set(classes))
    assert not missing, f"the module uses widgets that the .ui lacks: {missing}"
    wrong = {name: (classes[name], expected(name)) for name in used if classes[name] != expected(name)}
    assert not wrong, f"widgets with an unexpected class (.ui, expected): {wrong}"


def assert_panel_has_used_widgets(panel: QtWidgets.QWidget, used: set[str], expected, with_stand_ins: bool) -> None:
    """Qt finds every used widget in the loaded panel; with the stand-ins, each has the class ``expected(name)``."""
    for name in sorted(used):
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, name
        if with_stand_ins:
            assert widget.metaObject().className() == expected(name), name
