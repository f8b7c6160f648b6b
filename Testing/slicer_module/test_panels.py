"""The three panels' Widget code run on a real Qt (PySide6, offscreen) and a real MRML scene: the bugs a real Slicer
would hit and CI could not see before. The adapter between PythonQt's and PySide6's conventions, and what it cannot
catch, is described in ``widget_harness.py``."""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
try:
    from PySide6 import QtWidgets  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"PySide6 is not installed ({error}); pip install PySide6-Essentials", allow_module_level=True)

import widget_harness  # noqa: E402
from conftest import REPO, load_module_file  # noqa: E402
from test_segment_logic import mr_node, segmentations_logic, tiny_seg_model  # noqa: E402,F401  (fixtures)
from test_synthesis_logic import oblique_mr  # noqa: E402,F401  (fixture)
from ui_support import qapp  # noqa: E402,F401  (fixture)

HERE = Path(__file__).resolve().parent
SEGMENT_MODULE_FILE = REPO / "MRtoCTSegment" / "MRtoCTSegment.py"


@pytest.fixture
def harness(qapp, module, scene, monkeypatch):
    """The adapter installed; the acceleration probe answers as a one-GPU machine would (a real child process)."""
    from MRtoCTSynthesisLib import background

    segment = sys.modules.get("MRtoCTSegment") or load_module_file(sys.modules["slicer"], SEGMENT_MODULE_FILE)
    recorder = widget_harness.install(monkeypatch, sys.modules["slicer"],
                                      ("MRtoCTSynthesis", "MRtoCTSegment", "MRtoCTTraining", "MRtoCTCommon"))
    if hasattr(background, "acceleration_probe"):
        monkeypatch.setattr(background, "acceleration_probe", functools.partial(
            background.acceleration_probe, module="fake_acceleration", extra_pythonpath=[HERE]))
    recorder.segment = segment
    return recorder


def _idle(widget):
    return not getattr(widget, "_probes", [])


@pytest.fixture
def local_model(tiny_model):
    from MRtoCTSynthesisLib.modelfile import register_local_model

    register_local_model(tiny_model, "my-local-model")
    return "my-local-model"


def test_synthesis_panel_keeps_the_chosen_model_across_module_entry(harness, module, local_model):
    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    assert widget_harness.pump(lambda: _idle(widget) and widget.ui.modelComboBox.findData(local_model) >= 0)
    p = widget.logic.getParameterNode()
    p.model = local_model  # what "Use model" in the training panel does
    widget.exit()
    widget.enter()  # the user opens the module again: the model list is refilled
    assert widget_harness.pump(lambda: _idle(widget))
    widget.ui.qualityMapCheckBox.checked = True  # any later GUI change writes the GUI into the parameter node
    assert p.qualityMap is True
    assert p.model == local_model
    assert widget.ui.modelComboBox.currentData == local_model


def test_synthesis_panel_precision_menu_says_what_auto_chose(harness, module):
    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    combo = widget.ui.precisionComboBox
    assert widget_harness.pump(lambda: _idle(widget) and widget.ui.deviceComboBox.findData("cuda:0") >= 0)
    assert [combo.itemData(i) for i in range(combo.count)] == ["auto", "bfloat16", "float16", "float32"]
    assert combo.itemText(0) == "Automatic: bfloat16 on cuda:0 (cudnn)"
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findData("cpu"))
    assert combo.itemText(0) == "Automatic: float32 on cpu (eager)"
    combo.setCurrentIndex(combo.findData("float16"))
    assert widget.logic.getParameterNode().precision == "float16"


def test_synthesis_panel_runs_in_a_child_and_shows_the_sct(harness, module, scene, mr_node, tiny_model):
    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p = widget.logic.getParameterNode()
    p.inputVolume, p.model, p.device = mr_node, str(tiny_model), "cpu"
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text == "Cancel"
    assert widget_harness.pump(lambda: widget._job is None, timeout=180)
    assert harness.errors == []
    sct = p.outputVolume
    assert sct is not None and sct.GetName() == "T1 pelvis sCT"
    assert widget.ui.statusLabel.text.startswith("Done: 'T1 pelvis sCT' in ")
    assert widget.ui.applyButton.text == "Synthesize CT"


def test_synthesis_panel_input_is_mr_box_lets_a_refused_mr_through(harness, module, scene, oblique_mr, tiny_model):
    """A mask-like MR is refused with the box's name in the message; ticked, the same input is synthesized."""
    import numpy as np
    import SimpleITK as sitk
    from test_synthesis_logic import ras_matrix

    mask = (sitk.GetArrayFromImage(oblique_mr) > 300).astype(np.int16)
    node = sys.modules["slicer"].util.addVolumeFromArray(mask, ras_matrix(oblique_mr), name="mask-like MR")
    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p = widget.logic.getParameterNode()
    p.inputVolume, p.model, p.device = node, str(tiny_model), "cpu"
    assert not widget.ui.inputIsMRCheckBox.checked
    widget.ui.applyButton.click()
    assert widget_harness.pump(lambda: widget._job is None, timeout=180)
    assert "label map or mask" in widget.ui.statusLabel.text and p.outputVolume is None
    widget.ui.inputIsMRCheckBox.checked = True
    assert p.inputIsMR
    widget.ui.applyButton.click()
    assert widget_harness.pump(lambda: widget._job is None, timeout=180)
    assert p.outputVolume is not None and widget.ui.statusLabel.text.startswith("Done: ")


def _two_seg_models(tiny_seg_model, model_cache):
    import shutil

    folder = Path(model_cache) / "seg"
    folder.mkdir(exist_ok=True)
    first, second = folder / "a-first.mrtoct-seg.safetensors", folder / "b-second.mrtoct-seg.safetensors"
    for path in (first, second):
        shutil.copy(tiny_seg_model, path)
    return str(first), str(second)


def test_segment_panel_keeps_both_chosen_models_across_module_entry(harness, tiny_seg_model, model_cache,
                                                                    local_model):
    first, second = _two_seg_models(tiny_seg_model, model_cache)
    widget = widget_harness.open_panel(harness.segment.MRtoCTSegmentWidget)
    assert widget_harness.pump(lambda: _idle(widget) and widget.ui.synthesisModelComboBox.findData(local_model) >= 0)
    p = widget.logic.getParameterNode()
    p.model, p.synthesisModel = second, local_model
    widget.exit()
    widget.enter()
    assert widget_harness.pump(lambda: _idle(widget))
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findData("cpu"))
    assert p.device == "cpu"
    assert p.model == second
    assert p.synthesisModel == local_model
    assert widget.ui.segmentationModelComboBox.currentData == second


def _segment_panel_on(harness, mr_node, model, synthesis):
    widget = widget_harness.open_panel(harness.segment.MRtoCTSegmentWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p = widget.logic.getParameterNode()
    p.inputVolume, p.model, p.synthesisModel, p.device = mr_node, str(model), str(synthesis), "cpu"
    return widget


def _scene_nodes(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_segment_panel_runs_in_a_child_and_cancel_leaves_the_scene_as_it_was(harness, scene, mr_node,
                                                                           tiny_seg_model, tiny_model):
    widget = _segment_panel_on(harness, mr_node, tiny_seg_model, tiny_model)
    before = _scene_nodes(scene)
    started = time.time()
    widget.ui.applyButton.click()
    assert time.time() - started < 2.0, "the click ran the segmentation instead of starting a child process"
    assert widget._job is not None and widget.ui.applyButton.text == "Cancel"
    started = time.time()
    widget.ui.applyButton.click()  # Cancel
    assert time.time() - started < 1.0
    assert widget._job is None
    assert harness.errors == []
    assert widget.ui.statusLabel.text == "Cancelled; the scene was not changed."
    assert _scene_nodes(scene) == before


def test_segment_panel_failure_updates_the_status(harness, scene, mr_node, tiny_model, tmp_path):
    broken = tmp_path / "broken.mrtoct-seg.safetensors"
    broken.write_bytes(b"not a model")
    widget = _segment_panel_on(harness, mr_node, broken, tiny_model)
    before = _scene_nodes(scene)
    widget.ui.applyButton.click()
    assert widget_harness.pump(lambda: widget._job is None, timeout=120)
    assert widget.ui.statusLabel.text.startswith("Segmentation failed: ")
    assert len(harness.errors) == 1 and "Segmentation failed" in harness.errors[0]
    assert _scene_nodes(scene) == before


def test_segment_panel_creates_the_segmentation_from_the_child(harness, scene, mr_node, tiny_seg_model, tiny_model):
    widget = _segment_panel_on(harness, mr_node, tiny_seg_model, tiny_model)
    widget.ui.applyButton.click()
    assert widget_harness.pump(lambda: widget._job is None, timeout=180)
    assert harness.errors == []
    segmentations = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
                     for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert [s.GetName() for s in segmentations] == ["T1 pelvis segmentation"]
    assert segmentations[0].GetSegmentation().GetNumberOfSegments() == 12
    assert widget.ui.statusLabel.text.startswith("Done: 'T1 pelvis segmentation' (12 segments)")


def test_start_training_checks_the_data_in_the_background(harness, module, training_module, tmp_path):
    from MRtoCTSynthesisLib.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path, "head", 2, seed=0, shape=(24, 24, 16), spacing=(9.0, 9.0, 9.0))
    widget = widget_harness.open_panel(training_module.MRtoCTTrainingWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p = widget.logic.getParameterNode()
    p.mrFolder, p.ctFolder, p.runFolder = str(tmp_path / "mr"), str(tmp_path / "ct"), str(tmp_path / "run")
    widget.onStartButton()
    try:
        assert widget._job is None, "the click read every volume and started the trainer itself"
        assert widget.ui.statusLabel.text == "Checking the training data (reading every volume)..."
        assert widget_harness.pump(lambda: widget._job is not None, timeout=120), widget.ui.statusLabel.text
    finally:
        widget.stopJob("the test is over")


# ------------------------------------------------------------------------------------------------ parameter binding


def test_bound_widgets_follow_the_parameters_and_write_them(harness, module):
    """Slicer's GUI connectors (the vendored 5.6.0 wrapper) on the .ui's widgets: node -> widget, widget -> node."""
    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p = widget.logic.getParameterNode()
    other = widget.logic.getParameterNode()  # another wrapper on the same node, as a scene load or the console writes
    other.qualityMap, other.dicomExport, other.dicomFolder, other.windowPreset = True, True, "/data/dicom", "bone"
    assert widget.ui.qualityMapCheckBox.checked and widget.ui.dicomExportCheckBox.checked
    assert widget.ui.dicomFolderPathLineEdit.currentPath == "/data/dicom"
    assert widget.ui.dicomFolderPathLineEdit.enabled
    assert widget.ui.windowPresetComboBox.currentData == "bone"
    widget.ui.dicomExportCheckBox.checked = False
    widget.ui.dicomFolderPathLineEdit.currentPath = ""
    assert (p.dicomExport, p.dicomFolder) == (False, "")  # "" stays "no folder", not "."
    assert not widget.ui.dicomFolderPathLineEdit.enabled


def test_each_widget_is_bound_once_across_module_entries_and_scene_closes(harness, module, scene):
    """Module entry keeps the binding; a closed scene (a new parameter node) replaces it. The tag of
    connectParametersToGui lets the panel undo a binding (connectGui returns none before Slicer 5.10: with it,
    each closed scene would add one more)."""
    from PySide6 import QtCore

    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    checkBox = widget.ui.qualityMapCheckBox.unwrap()

    def receivers():
        return checkBox.receivers(QtCore.SIGNAL("stateChanged(int)"))

    connected = receivers()
    for _ in range(3):
        widget.exit()
        widget.enter()
        scene.Clear()  # StartCloseEvent unbinds, EndCloseEvent binds the new parameter node
    assert receivers() == connected
    p = widget.logic.getParameterNode()
    widget.ui.qualityMapCheckBox.checked = True
    assert p.qualityMap is True and widget._parameterNode.parameterNode is p.parameterNode
    assert widget_harness.pump(lambda: _idle(widget))


def test_training_presets_and_advanced_settings_in_the_bound_widgets(harness, training_module):
    widget = widget_harness.open_panel(training_module.MRtoCTTrainingWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p, logic = widget.logic.getParameterNode(), widget.logic
    spin = {field: getattr(widget.ui, name) for field, name in (
        ("iterations", "iterationsSpinBox"), ("lambda_cycle", "lambdaCycleDoubleSpinBox"),
        ("lambda_gc", "lambdaGCDoubleSpinBox"), ("lr", "learningRateDoubleSpinBox"), ("seed", "seedSpinBox"))}
    for preset in logic.presetNames():
        widget.ui.presetComboBox.setCurrentIndex(widget.ui.presetComboBox.findData(preset))  # the user's choice
        values = logic.presetSettings(preset)
        assert p.preset == preset and logic.settings(p) == values
        assert [widget.ui.imageHeightSpinBox.value, widget.ui.imageWidthSpinBox.value] == values["image_size"]
        assert widget.ui.planeComboBox.currentText == values["plane"]
        for field, box in spin.items():
            assert box.value == pytest.approx(values[field], rel=1e-9), (preset, field)
        assert widget.ui.lambdaSupervisedDoubleSpinBox.enabled == (preset == "paired")
    widget.ui.iterationsSpinBox.value = 1234
    widget.ui.planeComboBox.setCurrentIndex(widget.ui.planeComboBox.findText("axial"))
    assert (p.settings.iterations, p.settings.plane) == (1234, "axial")
    assert widget.ui.batchSizeSpinBox.maximum == 256  # the range is the parameter's (WithinRange)
    widget.ui.resetSettingsButton.click()
    assert logic.settings(p) == logic.presetSettings(p.preset)


def test_training_recipe_menu_fills_the_settings_and_the_run_gets_recipe_and_warm_start(harness, training_module,
                                                                                      tiny_model, tmp_path):
    widget = widget_harness.open_panel(training_module.MRtoCTTrainingWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    p, logic = widget.logic.getParameterNode(), widget.logic
    assert p.recipe == "paper" and widget.ui.recipeComboBox.currentData == "paper"
    widget.ui.recipeComboBox.setCurrentIndex(widget.ui.recipeComboBox.findData("fast"))   # the user's choice
    assert p.recipe == "fast" and (p.settings.batch_size, p.settings.lr) == (4, 1e-3)
    assert widget.ui.batchSizeSpinBox.value == 4
    widget.ui.presetComboBox.setCurrentIndex(widget.ui.presetComboBox.findData("hiasa2018"))
    assert (p.recipe, p.settings.batch_size, p.settings.lambda_gc) == ("fast", 4, 0.3)   # the recipe stays
    widget.ui.initFromPathLineEdit.currentPath = str(tiny_model)
    p.mrFolder, p.ctFolder, p.runFolder = str(tmp_path / "mr"), str(tmp_path / "ct"), str(tmp_path / "run")
    widget.ui.dWarmupSpinBox.value = 250                           # discriminators first, after a warm start
    process = logic.processFromParameterNode(p)
    assert process.overrides["recipe"] == "fast" and process.overrides["init_from"] == str(tiny_model)
    assert p.settings.d_warmup == 250 and process.overrides["d_warmup"] == 250
    widget.ui.dWarmupSpinBox.value = 0
    widget.ui.recipeComboBox.setCurrentIndex(widget.ui.recipeComboBox.findData("paper"))
    widget.ui.initFromPathLineEdit.currentPath = ""
    assert p.initFrom == "" and p.settings.batch_size == 1
    assert not {"recipe", "init_from", "batch_size"} & set(logic.processFromParameterNode(p).overrides)


def test_reload_imports_the_current_package_and_engine(harness, module, monkeypatch):
    """Reload drops MRtoCTSlicer and the engines from sys.modules before Slicer re-executes the module file (here:
    the module file loaded again, as slicer.util.reloadScriptedModule does), so its imports get the current code."""
    from MRtoCTSlicer.panel import RELOADED_PACKAGES

    widget = widget_harness.open_panel(module.MRtoCTSynthesisWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    before = {name: loaded for name, loaded in sys.modules.items() if name.split(".")[0] in RELOADED_PACKAGES}
    base = sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleWidget
    reloaded = []
    monkeypatch.setattr(base, "onReload", lambda self: reloaded.append(
        load_module_file(sys.modules["slicer"], module.MODULE_DIR / "MRtoCTSynthesis.py")), raising=False)
    try:
        widget.onReload()
        panel = sys.modules["MRtoCTSlicer.panel"]
        assert panel is not before["MRtoCTSlicer.panel"]
        assert reloaded[0].MRtoCTSynthesisWidget.__mro__[1] is panel.MRtoCTModuleWidget
        assert sys.modules["MRtoCTSynthesisLib.config"] is not before["MRtoCTSynthesisLib.config"]
    finally:  # the other tests keep the modules they imported
        for name in [name for name in sys.modules if name.split(".")[0] in RELOADED_PACKAGES]:
            del sys.modules[name]
        sys.modules.update(before)
        sys.modules["MRtoCTSynthesis"] = module


def test_parameter_ranges_agree_with_the_ui(harness, training_module):
    """Bound spin boxes take their range from the parameter's WithinRange; the .ui's own range (what Designer shows)
    must say the same."""
    import xml.etree.ElementTree as ET

    from ui_support import bound_widgets

    ui_file = REPO / "MRtoCTSynthesis" / "Resources" / "UI" / "MRtoCTTraining.ui"
    widget = widget_harness.open_panel(training_module.MRtoCTTrainingWidget)
    assert widget_harness.pump(lambda: _idle(widget))
    ui = {w.get("name"): {p.get("name"): p.findtext("*") for p in w.findall("property")}
          for w in ET.parse(ui_file).iter("widget")}
    checked = 0
    for name in bound_widgets(ui_file):
        box = getattr(widget.ui, name)
        if name.endswith("SpinBox") and name != "processesSpinBox":  # processes: narrowed to the devices found
            assert (box.minimum, box.maximum) == pytest.approx(
                (float(ui[name]["minimum"]), float(ui[name]["maximum"]))), name
            checked += 1
    assert checked == 15
