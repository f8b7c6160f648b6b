"""The training panel (.ui) loaded with a real Qt (PySide6, offscreen): every widget the module code uses exists with
the right class, every preset's settings fit its widgets, and the panel renders.
"""
from __future__ import annotations

import os
import sys
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
    assert_rendered, ctkCollapsibleButton, ctkPathLineEdit, qapp, qMRMLWidget, save_panel,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_FILE = REPO / "MRtoCTSynthesis" / "MRtoCTTraining.py"
UI_FILE = REPO / "MRtoCTSynthesis" / "Resources" / "UI" / "MRtoCTTraining.ui"
LIBRARY = REPO / "MRtoCTSynthesis"
# widget-name suffix (case-insensitive, first match wins) -> the class the module code expects
NAME_SUFFIX_CLASSES = [("CollapsibleButton", "ctkCollapsibleButton"), ("PathLineEdit", "ctkPathLineEdit"),
                       ("DoubleSpinBox", "QDoubleSpinBox"), ("SpinBox", "QSpinBox"), ("ComboBox", "QComboBox"),
                       ("ProgressBar", "QProgressBar"), ("PlainTextEdit", "QPlainTextEdit"),
                       ("Button", "QPushButton"), ("Label", "QLabel")]
STAND_INS = (ctkCollapsibleButton, qMRMLWidget, ctkPathLineEdit)


def setting_widgets() -> dict[str, tuple[str, ...]]:
    """The Advanced settings' widgets, TrainConfig field -> widget names, from the .ui's SlicerParameterName
    ("settings.<field>"; image_size is settings.image_height and settings.image_width)."""
    found: dict[str, list[str]] = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        parameter = next((p.findtext("string") for p in widget.findall("property")
                          if p.get("name") == "SlicerParameterName"), "")
        if parameter.startswith("settings."):
            field = parameter.removeprefix("settings.")
            found.setdefault("image_size" if field in ("image_height", "image_width") else field,
                             []).append(widget.get("name"))
    return {field: tuple(names) for field, names in found.items()}


def used_widget_names() -> set[str]:
    """Every widget the module's code uses or its .ui binds to a parameter (``ui_support.used_widget_names``)."""
    return ui_support.used_widget_names(MODULE_FILE)


def ui_widget_classes() -> dict[str, str]:
    return ui_support.ui_widget_classes(UI_FILE)


def expected_class(name: str) -> str:
    return ui_support.expected_class(name, NAME_SUFFIX_CLASSES)


def load_panel(with_stand_ins: bool) -> QtWidgets.QWidget:
    return ui_support.load_panel(UI_FILE, STAND_INS if with_stand_ins else ())


def preset_values() -> dict[str, dict]:
    """Every preset's TrainConfig values (config.py is plain Python)."""
    if str(LIBRARY) not in sys.path:
        sys.path.insert(0, str(LIBRARY))
    from MRtoCTSynthesisLib.config import PRESET_NAMES, preset

    return {name: preset(name).to_dict() for name in PRESET_NAMES}


# ------------------------------------------------------------------------------------------------ tests


def test_every_widget_the_code_uses_is_in_the_ui_with_the_right_class():
    used, classes = used_widget_names(), ui_widget_classes()
    assert len(setting_widgets()) == 15 and len(used) >= 35  # the regexes really find the widgets
    ui_support.assert_used_widgets_in_ui(used, classes, expected_class)


@pytest.mark.parametrize("with_stand_ins", [False, True], ids=["plain Qt", "stand-ins"])
def test_qt_loads_the_panel_and_finds_every_used_widget(qapp, with_stand_ins):
    panel = load_panel(with_stand_ins)
    ui_support.assert_panel_has_used_widgets(panel, used_widget_names(), expected_class, with_stand_ins)
    for name in ("startButton", "stopButton", "resumeButton", "useModelButton"):
        assert not panel.findChild(QtWidgets.QPushButton, name).isEnabled(), f"{name} starts disabled"
    assert panel.findChild(QtWidgets.QPlainTextEdit, "logPlainTextEdit").isReadOnly()


def test_folders_are_chosen_as_folders_and_remembered():
    root = ET.parse(UI_FILE).getroot()
    for name in ("mrFolderPathLineEdit", "ctFolderPathLineEdit", "runFolderPathLineEdit"):
        widget = next(w for w in root.iter("widget") if w.get("name") == name)
        properties = {p.get("name"): p for p in widget.findall("property")}
        assert "ctkPathLineEdit::Dirs" in properties["filters"].findtext("set"), f"{name}: folders only"
        assert properties["settingKey"].findtext("string").startswith("MRtoCTTraining/"), f"{name}: history kept"


def test_the_collapsible_sections():
    root = ET.parse(UI_FILE).getroot()
    collapsed = {w.get("name"): any(p.get("name") == "collapsed" and p.findtext("bool") == "true"
                                    for p in w.findall("property"))
                 for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"}
    assert collapsed == {"dataCollapsibleButton": False, "trainingCollapsibleButton": False,
                         "advancedCollapsibleButton": True, "liveCollapsibleButton": False,
                         "logCollapsibleButton": True}
    advanced = next(w for w in root.iter("widget") if w.get("name") == "advancedCollapsibleButton")
    inside = {w.get("name") for w in advanced.iter("widget")}
    assert {name for names in setting_widgets().values() for name in names} <= inside
    assert {"deviceComboBox", "processesSpinBox"} <= inside


def test_every_preset_value_fits_its_widget(qapp):
    """The ranges and decimals of the Advanced widgets hold each preset's values exactly."""
    panel = load_panel(with_stand_ins=True)
    for preset, values in preset_values().items():
        for field, names in setting_widgets().items():
            value = values[field]
            if field == "plane":
                assert value in ("sagittal", "coronal", "axial")
                continue
            for name, part in zip(names, value if isinstance(value, list) else [value]):
                widget = panel.findChild(QtWidgets.QAbstractSpinBox, name)
                widget.setValue(part)
                assert widget.value() == pytest.approx(part, rel=1e-9, abs=1e-12), (preset, field, name)


# ------------------------------------------------------------------------------------------------ screenshot


def render_panel(path: Path) -> Path:
    """The panel as the .ui defines it (stand-ins for the ctk/qMRML widgets; nothing filled in), written to ``path``.
    Screenshots of the panels after real runs: ``panel_screenshots.py``."""
    return save_panel(load_panel(with_stand_ins=True), path, 440)


def test_panel_renders(qapp, tmp_path):
    assert_rendered(render_panel(tmp_path / "panel.png"), 400, 500)
