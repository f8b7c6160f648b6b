"""Open the three panels (real Widget code, PySide6, a real MRML scene) in a fresh Python and print, as JSON, whether
Slicer's process imported torch or started CUDA doing so. Run by test_panel_open.py in a child process, because the
test process itself has imported torch long before."""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

if __name__ == "__main__":
    import pytest
    from PySide6 import QtWidgets

    import conftest
    import widget_harness

    slicer = conftest._import_slicer_core()
    app = QtWidgets.QApplication([])
    slicer.mrmlScene = slicer.vtkMRMLScene()
    synthesis = conftest.load_module_file(slicer, conftest.MODULE_FILE)
    training = conftest.load_module_file(slicer, conftest.TRAINING_MODULE_FILE)
    segment = conftest.load_module_file(slicer, conftest.REPO / "MRtoCTSegment" / "MRtoCTSegment.py")
    patches = pytest.MonkeyPatch()
    widget_harness.install(patches, slicer, ("MRtoCTSynthesis", "MRtoCTTraining", "MRtoCTSegment", "MRtoCTCommon"))
    widgets = [widget_harness.open_panel(m) for m in (synthesis.MRtoCTSynthesisWidget,
                                                      training.MRtoCTTrainingWidget, segment.MRtoCTSegmentWidget)]
    app.processEvents()
    loaded = "torch" in sys.modules
    cuda = loaded and bool(getattr(sys.modules["torch"].cuda, "is_initialized", lambda: False)())
    for widget in widgets:
        widget.cleanup()
    print(json.dumps({"torch_imported": loaded, "cuda_initialized": cuda}), flush=True)
