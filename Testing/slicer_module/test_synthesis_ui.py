"""The panel (.ui) loaded with a real Qt (PySide6, offscreen): every widget the module code uses exists with the
right class, MRML selectors get the scene, and the panel renders (screenshot).

"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
try:
    from PySide6 import QtWidgets
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"PySide6 is not installed ({error}); pip install PySide6-Essentials", allow_module_level=True)

import ui_support  # noqa: E402
from ui_support import (  # noqa: E402,F401  (stand-ins, the qapp fixture)
    assert_rendered, ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget, qapp, qMRMLNodeComboBox, qMRMLWidget,
    save_panel,
)

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
    """Every ``self.ui.<name>`` the module's code uses (its own and the shared MRtoCTSlicer/panel.py)."""
    return ui_support.used_widget_names(MODULE_FILE)


def ui_widget_classes() -> dict[str, str]:
    return ui_support.ui_widget_classes(UI_FILE)


def expected_class(name: str) -> str:
    return ui_support.expected_class(name, NAME_SUFFIX_CLASSES)


STAND_INS = (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLWidget, ctkPathLineEdit, ctkSliderWidget)


def load_panel(with_stand_ins: bool) -> QtWidgets.QWidget:
    return ui_support.load_panel(UI_FILE, STAND_INS if with_stand_ins else ())


# ------------------------------------------------------------------------------------------------ tests


def test_every_widget_the_code_uses_is_in_the_ui_with_the_right_class():
    used, classes = used_widget_names(), ui_widget_classes()
    assert len(used) >= 15  # the regex really finds the widgets
    ui_support.assert_used_widgets_in_ui(used, classes, expected_class)


@pytest.mark.parametrize("with_stand_ins", [False, True], ids=["plain Qt", "stand-ins"])
def test_qt_loads_the_panel_and_finds_every_used_widget(qapp, with_stand_ins):
    panel = load_panel(with_stand_ins)
    ui_support.assert_panel_has_used_widgets(panel, used_widget_names(), expected_class, with_stand_ins)
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
    """The panel as the .ui defines it (stand-ins for the ctk/qMRML widgets; nothing filled in), written to ``path``.
    Screenshots of the panels after real runs: ``panel_screenshots.py``."""
    return save_panel(load_panel(with_stand_ins=True), path, 430)


def test_panel_renders(qapp, tmp_path):
    assert_rendered(render_panel(tmp_path / "panel.png"), 380, 400)
