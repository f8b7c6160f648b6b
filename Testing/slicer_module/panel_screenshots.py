"""Screenshots of the three panels after real runs: the modules' real Widget code on PySide6 (offscreen) with a real
MRML scene (slicer-core), driven through its buttons; every status line, progress and preview in the pictures is
what that run printed. The ctk/qMRML widgets are the small stand-ins of ``widget_harness.py`` (node selectors show
the current node's name only), so the pictures are renderings of the panels, not screenshots of Slicer.

    QT_QPA_PLATFORM=offscreen python Testing/slicer_module/panel_screenshots.py --out Resources/Screenshots

Runs (CPU, a few minutes): Synthesize CT with the bundled demo model on the Sample Data head phantom; Segment with
an untrained tiny U-Net (no segmentation model is bundled, so its segments are meaningless; the run is real);
Train with the yang2018 preset on 2 tiny phantoms for 6 iterations (tiny networks).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCREENSHOT_WIDTH = 440


def _grab(widget, path):
    import ui_support

    path.parent.mkdir(parents=True, exist_ok=True)
    ui_support.save_panel(widget.panelWidget, path, SCREENSHOT_WIDTH)
    print(f"{path}: {widget.ui.statusLabel.text}")


def _run(widget, button, timeout):
    import widget_harness

    button.click()
    if not widget_harness.pump(lambda: widget._job is not None or not getattr(widget, "_check", None), timeout=60):
        raise RuntimeError(widget.ui.statusLabel.text)
    if not widget_harness.pump(lambda: widget._job is None and not getattr(widget, "_check", None), timeout=timeout):
        raise RuntimeError(f"no result in {timeout} s: {widget.ui.statusLabel.text}")


def main(out: Path) -> None:
    import pytest
    from PySide6 import QtWidgets

    import conftest
    import widget_harness

    slicer = conftest._import_slicer_core()
    app = QtWidgets.QApplication([])  # noqa: F841  (kept for the widgets' lifetime)
    scene = slicer.mrmlScene = conftest.new_scene(slicer, segmentations=True)
    slicer.modules = conftest.slicer_modules(scene)
    synthesis = conftest.load_module_file(slicer, conftest.MODULE_FILE)
    training = conftest.load_module_file(slicer, conftest.TRAINING_MODULE_FILE)
    segment = conftest.load_module_file(slicer, conftest.REPO / "MRtoCTSegment" / "MRtoCTSegment.py")
    recorder = widget_harness.install(pytest.MonkeyPatch(), slicer, ("MRtoCTSynthesis", "MRtoCTTraining",
                                                                     "MRtoCTSegment"))
    from MRtoCTSlicer.sampledata import loadPhantomMR
    from MRtoCTSlicer.selftest_data import TINY_TRAINING_SETTINGS, tinySegmentationModels

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MRTOCT_MODEL_CACHE"] = os.path.join(folder, "models")  # the user's model list stays as it is
        mr = loadPhantomMR()

        widget = widget_harness.open_panel(synthesis.MRtoCTSynthesisWidget)
        widget_harness.pump(lambda: not widget._probes, timeout=120)
        p = widget.logic.getParameterNode()
        p.inputVolume, p.device, p.qualityMap = mr, "cpu", True
        _run(widget, widget.ui.applyButton, 600)
        _grab(widget, out / "MRtoCTSynthesis_panel.png")

        models = Path(folder) / "seg"
        models.mkdir()
        seg_model, synthesis_model = tinySegmentationModels(models)
        widget = widget_harness.open_panel(segment.MRtoCTSegmentWidget)
        widget_harness.pump(lambda: not widget._probes, timeout=120)
        p = widget.logic.getParameterNode()
        p.inputVolume, p.model, p.synthesisModel, p.device = mr, seg_model, "phantom-head-demo", "cpu"
        _run(widget, widget.ui.applyButton, 600)
        _grab(widget, out / "MRtoCTSegment_panel.png")

        from MRtoCTSynthesisLib.phantom import write_phantom_dataset

        write_phantom_dataset(folder, "head", 2, seed=0, shape=(32, 32, 24), spacing=(7.0, 7.0, 7.0))
        widget = widget_harness.open_panel(training.MRtoCTTrainingWidget)
        widget_harness.pump(lambda: not widget._probes, timeout=120)
        p = widget.logic.getParameterNode()
        p.mrFolder, p.ctFolder = os.path.join(folder, "mr"), os.path.join(folder, "ct")
        p.runFolder = os.path.join(folder, "head-yang2018-tiny")
        for field, value in {**TINY_TRAINING_SETTINGS, "iterations": 6}.items():
            if field in training.SETTING_FIELDS:
                widget.logic.setSetting(p, field, value)
        overrides = {k: v for k, v in TINY_TRAINING_SETTINGS.items() if k not in training.SETTING_FIELDS}
        original = widget.logic.settings
        widget.logic.settings = lambda node: {**original(node), **overrides}  # tiny networks (not in the panel)
        _run(widget, widget.ui.startButton, 900)
        widget.ui.logCollapsibleButton.collapsed = False
        _grab(widget, out / "MRtoCTTraining_panel.png")
    if recorder.errors:
        raise RuntimeError(f"message boxes during the runs: {recorder.errors}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    started = time.time()
    main(parser.parse_args().out)
    print(f"{time.time() - started:.0f} s")
