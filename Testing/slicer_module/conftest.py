"""Headless Slicer for the MR to CT Synthesis module's tests.

Real: the MRML scene, node classes, application/colour/volumes/subject-hierarchy logics and ``slicer.util`` from
PyPI ``slicer-core``; the engine; Qt (PySide6) for the .ui panel tests.
Slicer's own ``slicer.parameterNodeWrapper`` (an unmodified copy of v5.6.0 in third_party/, which slicer-core lacks).
Stand-ins (this file): empty ``qt`` and ``ctk`` modules (the Logic must not touch Qt, so any Qt use in it fails
loudly; their class names exist for the wrapper's annotations) and ``slicer.ScriptedLoadableModule`` base classes whose ``getParameterNode`` behaves like Slicer's
(a singleton ``vtkMRMLScriptedModuleNode`` tagged with the module name). See README.md in this folder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
import unittest
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MRtoCTSynthesis"
MODULE_FILE = MODULE_DIR / "MRtoCTSynthesis.py"
TRAINING_MODULE_FILE = MODULE_DIR / "MRtoCTTraining.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MRtoCTSynthesis.ui"
SLICER_CORE_PIN = "slicer-core==5.13.31053.0"
WRAPPER_SOURCE = Path(__file__).resolve().parent / "third_party" / "parameterNodeWrapper"
QMRML_WIDGETS = ("qMRMLNodeComboBox", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget")


def _import_slicer_core():
    """The ``slicer`` package of slicer-core, or pytest.skip with the reason."""
    try:
        import slicer
    except ImportError as error:
        pytest.skip(f"slicer-core is not installed ({error}); pip install {SLICER_CORE_PIN}")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(f"the 'slicer' package found is not slicer-core (the unrelated PyPI 'slicer' shadows it); "
                    f"pip uninstall slicer && pip install {SLICER_CORE_PIN}")
    return slicer


# ------------------------------------------------------------------------------------------------ stand-ins


def _scripted_loadable_module(slicer) -> types.ModuleType:
    """``slicer.ScriptedLoadableModule`` as far as a module's Logic and Test classes need it headless."""
    stand_in = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = self.__class__.__name__.removesuffix("Widget")

    class ScriptedLoadableModuleLogic:
        """Slicer's getParameterNode: one vtkMRMLScriptedModuleNode per scene, singleton-tagged by module name."""

        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__.removesuffix("Logic")
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return slicer.mrmlScene.AddNode(node)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None):
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = stand_in.__name__
        setattr(stand_in, cls.__name__, cls)
    stand_in.__all__ = [cls.__name__ for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                                                  ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)]
    return stand_in


@pytest.fixture(scope="session")
def slicer_core():
    return _import_slicer_core()


class _QtUnavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} used headless: the Logic must not use Qt")


def _no_qt_module(name: str) -> types.ModuleType:
    """An empty ``qt`` / ``ctk`` for the Logic tests: its classes exist (Slicer's parameterNodeWrapper names them in
    annotations and type checks) but using one raises."""
    module = types.ModuleType(name)

    def placeholder(attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        cls = type(attribute, (_QtUnavailable,), {})
        setattr(module, attribute, cls)
        return cls

    module.__getattr__ = placeholder
    return module


def install_parameter_node_wrapper(slicer) -> types.ModuleType:
    """``slicer.parameterNodeWrapper``: Slicer's own, unmodified (v5.6.0, see third_party/README.md), loaded as part
    of slicer-core's ``slicer`` package, which lacks it. Only tests load it; nothing installs it."""
    name = "slicer.parameterNodeWrapper"
    for widget in QMRML_WIDGETS:  # PythonQt classes slicer-core lacks; the wrapper names them (harness: real ones)
        if not hasattr(slicer, widget):
            setattr(slicer, widget, type(widget, (_QtUnavailable,), {}))
    if name not in sys.modules:
        folder = WRAPPER_SOURCE
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
        slicer.parameterNodeWrapper = package
    return sys.modules[name]


def load_module_file(slicer, path: Path) -> types.ModuleType:
    """A Slicer module file (MRtoCTSynthesis.py, MRtoCTTraining.py), imported headless with the stand-ins in
    sys.modules (installed once); registered in sys.modules under its name, as Slicer does."""
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _no_qt_module(name))
    install_parameter_node_wrapper(slicer)
    if not getattr(sys.modules.get("slicer.ScriptedLoadableModule"), "_mrtoct_stand_in", False):
        stand_in = _scripted_loadable_module(slicer)
        stand_in._mrtoct_stand_in = True
        sys.modules["slicer.ScriptedLoadableModule"] = stand_in
        slicer.ScriptedLoadableModule = stand_in
    spec = importlib.util.spec_from_file_location(path.stem, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def load_training_module() -> types.ModuleType:
    """MRtoCTTraining.py imported headless, after the MRtoCTSynthesis.py it imports (also outside pytest)."""
    slicer = _import_slicer_core()
    if "MRtoCTSynthesis" not in sys.modules:
        load_module_file(slicer, MODULE_FILE)
    return load_module_file(slicer, TRAINING_MODULE_FILE)


@pytest.fixture(scope="session")
def module(slicer_core, model_cache):
    """The MRtoCTSynthesis.py module file, imported headless with the stand-ins in sys.modules."""
    return load_module_file(slicer_core, MODULE_FILE)


@pytest.fixture(scope="session")
def training_module(module):
    """The MRtoCTTraining.py module file (it imports MRtoCTSynthesis.py), imported headless."""
    return load_module_file(sys.modules["slicer"], TRAINING_MODULE_FILE)


def new_scene(slicer, segmentations: bool = False):
    """A fresh MRML scene with the module logics registered the way the Slicer application registers them (Colors,
    Volumes, SubjectHierarchy; ``segmentations``: Segmentations too, which registers the representation converters).
    Used by the ``scene`` fixture and by panel_screenshots.py."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    scene._keep_alive = (app, [])  # the logics must live as long as the scene
    logics = [("Colors", slicer.vtkMRMLColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
              ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)]
    for name, cls in logics + ([("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)] if segmentations else []):
        register_module_logic(scene, name, cls())
    return scene


def register_module_logic(scene, name: str, logic):
    """Register a module logic with the scene's application logic, as Slicer does at startup; returns it."""
    app, logics = scene._keep_alive
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(app)
    app.SetModuleLogic(name, logic)
    logics.append((name, logic))
    return logic


def slicer_modules(scene) -> types.SimpleNamespace:
    """``slicer.modules.<name>.logic()`` for the scene's registered logics (slicer.util's segmentation helpers call
    it; slicer-core has no module manager)."""
    return types.SimpleNamespace(**{name.lower(): types.SimpleNamespace(logic=lambda logic=logic: logic)
                                    for name, logic in scene._keep_alive[1]})


@pytest.fixture
def scene(slicer_core):
    """A fresh MRML scene (``new_scene``) as ``slicer.mrmlScene`` for the test."""
    slicer = slicer_core
    scene = new_scene(slicer)
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = previous


@pytest.fixture
def logic(module, scene):
    return module.MRtoCTSynthesisLogic()


# ------------------------------------------------------------------------------------------------ engine data


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """Keep the engine's model cache (local model registry, downloads) out of the user's home."""
    folder = tmp_path_factory.mktemp("model-cache")
    previous = os.environ.get("MRTOCT_MODEL_CACHE")
    os.environ["MRTOCT_MODEL_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MRTOCT_MODEL_CACHE", None)
    else:
        os.environ["MRTOCT_MODEL_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, model_cache) -> Path:
    """A tiny random model file (both generators, so quality maps work): fast on CPU, deterministic."""
    from MRtoCTSynthesisLib.modelfile import save_untrained_model

    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny-test.mrtoct.safetensors", "tiny-test")


@pytest.fixture(scope="session")
def phantom_mr():
    """A small head phantom MR (sitk image, 24 x 28 x 16 voxels)."""
    from MRtoCTSynthesisLib.phantom import make_phantom

    return make_phantom("head", 3, shape=(24, 28, 16), spacing=(8.0, 8.0, 10.0)).mr
