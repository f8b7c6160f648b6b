"""The panel (.ui) loaded with a real Qt (PySide6, offscreen): every widget the module code uses exists with the
right class, MRML selectors get the scene, and the panel renders (screenshot).

Run ``python Testing/slicer_module/test_synthesis_ui.py --screenshot PATH`` to write the panel screenshot.
"""
from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
try:
    from PySide6 import QtCore, QtGui, QtWidgets
    from PySide6.QtUiTools import QUiLoader
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"PySide6 is not installed ({error}); pip install PySide6-Essentials", allow_module_level=True)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_FILE = REPO / "MRtoCTSynthesis" / "MRtoCTSynthesis.py"
UI_FILE = REPO / "MRtoCTSynthesis" / "Resources" / "UI" / "MRtoCTSynthesis.ui"
# widget-name suffix (case-insensitive, first match wins) -> the class the module code expects
NAME_SUFFIX_CLASSES = [("CollapsibleButton", "ctkCollapsibleButton"), ("Selector", "qMRMLNodeComboBox"),
                       ("ComboBox", "QComboBox"), ("CheckBox", "QCheckBox"), ("PathLineEdit", "ctkPathLineEdit"),
                       ("SliderWidget", "ctkSliderWidget"), ("ProgressBar", "QProgressBar"),
                       ("Button", "QPushButton"), ("Label", "QLabel")]


def used_widget_names() -> set[str]:
    """Every ``self.ui.<name>`` the module's code uses."""
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))


def ui_widget_classes() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).iter("widget")}


def expected_class(name: str) -> str:
    return next(cls for suffix, cls in NAME_SUFFIX_CLASSES if name.lower().endswith(suffix.lower()))


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


STAND_INS = (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLWidget, ctkPathLineEdit, ctkSliderWidget)


@pytest.fixture(scope="module")
def qapp():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_panel(with_stand_ins: bool) -> QtWidgets.QWidget:
    loader = QUiLoader()
    if with_stand_ins:
        for cls in STAND_INS:
            loader.registerCustomWidget(cls)
    ui_file = QtCore.QFile(str(UI_FILE))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    try:
        panel = loader.load(ui_file)
    finally:
        ui_file.close()
    assert panel is not None, loader.errorString()
    return panel


# ------------------------------------------------------------------------------------------------ tests


def test_every_widget_the_code_uses_is_in_the_ui_with_the_right_class():
    used, classes = used_widget_names(), ui_widget_classes()
    assert len(used) >= 15  # the regex really finds the widgets
    missing = sorted(used - set(classes))
    assert not missing, f"the module uses widgets that the .ui lacks: {missing}"
    wrong = {name: (classes[name], expected_class(name)) for name in used if classes[name] != expected_class(name)}
    assert not wrong, f"widgets with an unexpected class (.ui, expected): {wrong}"


@pytest.mark.parametrize("with_stand_ins", [False, True], ids=["plain Qt", "stand-ins"])
def test_qt_loads_the_panel_and_finds_every_used_widget(qapp, with_stand_ins):
    panel = load_panel(with_stand_ins)
    for name in sorted(used_widget_names()):
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, name
        if with_stand_ins:
            assert widget.metaObject().className() == expected_class(name), name
    selector = panel.findChild(QtWidgets.QWidget, "inputVolumeSelector")
    assert selector.property("nodeTypes") == ["vtkMRMLScalarVolumeNode"]
    assert selector.property("showChildNodeTypes") is False  # no labelmaps as MR input
    output = panel.findChild(QtWidgets.QWidget, "outputVolumeSelector")
    assert output.property("noneDisplay") == "Create new volume" and output.property("noneEnabled") is True


def test_every_mrml_selector_receives_the_scene():
    root = ET.parse(UI_FILE).getroot()
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)" and c.findtext("sender") == "MRtoCTSynthesis"}
    assert selectors and selectors == connected


def render_panel(path: Path) -> Path:
    """The panel after a synthesis (stand-ins for the ctk/qMRML widgets), written to ``path``."""
    panel = load_panel(with_stand_ins=True)
    find = lambda name: panel.findChild(QtWidgets.QWidget, name)  # noqa: E731
    find("inputVolumeSelector").addItem("T1 head")
    find("outputVolumeSelector").addItem("Create new volume")
    models = find("modelComboBox")
    models.addItems(["phantom-head-demo", "pelvis-2024 (trained locally)"])
    models.insertSeparator(models.count())
    models.addItem("Load from file...")
    find("modelInfoLabel").setText("Demonstration model trained on digital head phantoms (paired preset + "
                                   "supervised L1); not for clinical use.")
    find("deviceComboBox").addItems(["Automatic (GPU if available)", "CPU", "GPU 0: NVIDIA H100"])
    find("precisionComboBox").addItems(["Automatic (half precision on GPU)", "Full precision (float32)"])
    find("windowPresetComboBox").addItems(["CT wide (W 2000 / L 400)", "Bone (W 1000 / L 400)",
                                           "Soft tissue (W 400 / L 40)", "Brain (W 80 / L 40)"])
    find("qualityMapCheckBox").setChecked(True)
    find("dicomExportCheckBox").setChecked(True)
    find("dicomFolderPathLineEdit").setProperty("currentPath", "/data/planning/T1_head_sCT")
    find("applyButton").setEnabled(True)
    find("progressBar").setVisible(False)  # shown only while running
    find("statusLabel").setText("Done: 'T1 head sCT' in 14 s on cuda:0. DICOM CT series (192 files) written to "
                                "/data/planning/T1_head_sCT.")
    find("showQualityMapButton").setEnabled(True)
    for button in panel.findChildren(ctkCollapsibleButton):
        button.setCollapsed(button.collapsed)
    panel.adjustSize()
    panel.resize(430, panel.sizeHint().height())
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path))
    return path


def test_panel_renders(qapp, tmp_path):
    path = render_panel(tmp_path / "panel.png")
    image = QtGui.QImage(str(path))
    assert image.width() >= 380 and image.height() >= 400
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20  # text and widgets were drawn, not a blank rectangle


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--screenshot":
        sys.exit(f"usage: {sys.argv[0]} --screenshot PATH")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    print(render_panel(Path(sys.argv[2])))
