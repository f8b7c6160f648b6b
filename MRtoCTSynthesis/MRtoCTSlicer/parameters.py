"""The three modules' parameters as Slicer ``parameterNodeWrapper`` classes: typed, validated (ranges, choices), with
defaults, saved with the scene as the module's ``vtkMRMLScriptedModuleNode``. A widget whose ``SlicerParameterName``
dynamic property in the .ui names a parameter is bound to it by the panel (``panel.MRtoCTModuleWidget``).

Everything used here exists unchanged in Slicer 5.6 and later. Two connectors Slicer lacks:
- ``PathLineEditToStrConnector`` (registered): a ctkPathLineEdit bound to a ``str``, "" meaning "none chosen". Slicer's
  own binds ``pathlib.Path``, whose empty value reads back as ".".
- ``ComboBoxDataToStrConnector`` (not registered: Slicer's ``QComboBoxToStringableConnector`` claims every QComboBox
  bound to a ``str``): a combo box filled at run time (devices, precisions with what "auto" chose, window presets),
  each item's data the value. The panel passes it to ``connectParametersToGui`` itself.

Parameter nodes saved by the versions before these wrappers (capitalised names, "true"/"false", JSON settings) are
migrated on first use: each old entry moves to its new name with its value converted (``wrapParameterNode``).
"""
import json
from typing import Annotated

import ctk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import (
    Choice, GuiConnector, WithinRange, parameterNodeGuiConnector, parameterNodeWrapper, parameterPack,
    unannotatedType,
)

from MRtoCTSynthesisLib import DEFAULT_MODEL
from MRtoCTSynthesisLib.config import PRECISIONS, PRESET_NAMES, RECIPES, preset

from .display import CT_WINDOW_PRESETS, DEFAULT_WINDOW_PRESET

DEFAULT_PRESET = "yang2018"
PLANES = ("sagittal", "coronal", "axial")
_PRESET = preset(DEFAULT_PRESET)
COUNT = WithinRange(1, 10_000_000)
WEIGHT = WithinRange(0.0, 1000.0)


# ------------------------------------------------------------------------------------------------ the parameters


@parameterNodeWrapper
class SynthesisParameters:
    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    qualityVolume: vtkMRMLScalarVolumeNode  # the first quality map of the last sCT (no widget)
    model: str = DEFAULT_MODEL  # a catalog name or a model file
    inputIsMR: bool = False  # skip the label-map / stored-CT input check (synthesis.check_mr_input)
    device: str = "auto"
    precision: Annotated[str, Choice(PRECISIONS)] = "auto"
    windowPreset: Annotated[str, Choice(tuple(CT_WINDOW_PRESETS))] = DEFAULT_WINDOW_PRESET
    qualityMap: bool = False
    dicomExport: bool = False
    dicomFolder: str = ""


@parameterNodeWrapper
class SegmentParameters:
    inputVolume: vtkMRMLScalarVolumeNode
    sctVolume: vtkMRMLScalarVolumeNode  # an existing sCT; none: synthesize one on the fly
    model: str = ""  # a segmentation model file; the logic chooses the first one found
    synthesisModel: str = ""  # "": the one the segmentation model was trained with
    device: str = "auto"


@parameterPack
class TrainingSettings:
    """The panel's Advanced settings; the names are ``TrainConfig`` fields (image_size is height and width)."""

    iterations: Annotated[int, COUNT] = _PRESET.iterations
    image_height: Annotated[int, WithinRange(16, 2048)] = _PRESET.image_size[0]
    image_width: Annotated[int, WithinRange(16, 2048)] = _PRESET.image_size[1]
    plane: Annotated[str, Choice(PLANES)] = _PRESET.plane
    batch_size: Annotated[int, WithinRange(1, 256)] = _PRESET.batch_size
    lr: Annotated[float, WithinRange(1e-6, 1.0)] = _PRESET.lr
    lambda_cycle: Annotated[float, WEIGHT] = _PRESET.lambda_cycle
    lambda_structure: Annotated[float, WEIGHT] = _PRESET.lambda_structure
    lambda_gc: Annotated[float, WEIGHT] = _PRESET.lambda_gc
    lambda_identity: Annotated[float, WEIGHT] = _PRESET.lambda_identity
    lambda_supervised: Annotated[float, WEIGHT] = _PRESET.lambda_supervised
    validation_fraction: Annotated[float, WithinRange(0.0, 0.9)] = _PRESET.validation_fraction
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = _PRESET.seed
    checkpoint_every: Annotated[int, COUNT] = _PRESET.checkpoint_every
    preview_every: Annotated[int, COUNT] = _PRESET.preview_every
    d_warmup: Annotated[int, WithinRange(0, 10_000_000)] = _PRESET.d_warmup


SETTING_FIELDS = ("iterations", "image_size", "plane", "batch_size", "lr", "lambda_cycle", "lambda_structure",
                  "lambda_gc", "lambda_identity", "lambda_supervised", "validation_fraction", "seed",
                  "checkpoint_every", "preview_every", "d_warmup")  # the TrainConfig fields of TrainingSettings


@parameterNodeWrapper
class TrainingParameters:
    mrFolder: str
    ctFolder: str
    runFolder: str
    preset: Annotated[str, Choice(PRESET_NAMES)] = DEFAULT_PRESET
    recipe: Annotated[str, Choice(tuple(RECIPES))] = "paper"  # network and optimiser over the preset's (config.RECIPES)
    initFrom: str = ""  # a model file whose generators start the run (a warm start); "": from scratch
    device: str = "auto"
    processes: Annotated[int, WithinRange(1, 64)] = 1
    settings: TrainingSettings


def trainingSettings(parameters: TrainingParameters) -> dict:
    """The Advanced settings as TrainConfig fields: {field: value}, image_size as [height, width]."""
    pack = parameters.settings
    return {name: [pack.image_height, pack.image_width] if name == "image_size" else pack.getValue(name)
            for name in SETTING_FIELDS}


def setTrainingSetting(parameters: TrainingParameters, field: str, value) -> None:
    """Set one Advanced setting by its TrainConfig name (validated: a value out of range raises ValueError)."""
    if field not in SETTING_FIELDS:
        raise ValueError(f"unknown setting {field!r}; known: {sorted(SETTING_FIELDS)}")
    if field == "image_size":
        parameters.settings.image_height, parameters.settings.image_width = int(value[0]), int(value[1])
    else:
        parameters.settings.setValue(field, value)


# ------------------------------------------------------------------------------------------------ connectors


class _OneSignalConnector(GuiConnector):
    """A connector to one widget whose signal ``SIGNAL`` tells that its value changed."""

    SIGNAL = ""

    @classmethod
    def create(cls, widget, datatype):
        return cls(widget) if cls.canRepresent(widget, datatype) else None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        getattr(self._widget, self.SIGNAL).connect(self.changed)

    def _disconnect(self):
        getattr(self._widget, self.SIGNAL).disconnect(self.changed)

    def widget(self):
        return self._widget


@parameterNodeGuiConnector
class PathLineEditToStrConnector(_OneSignalConnector):
    """A ctkPathLineEdit bound to a ``str`` parameter; "" is "none chosen"."""

    SIGNAL = "currentPathChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkPathLineEdit and unannotatedType(datatype) == str

    def read(self) -> str:
        return self._widget.currentPath

    def write(self, value: str) -> None:
        if value != self._widget.currentPath:  # rewriting the same path would move the cursor while typing
            self._widget.currentPath = value


class ComboBoxDataToStrConnector(_OneSignalConnector):
    """A combo box whose items are filled at run time, each item's data the value. A value that is not listed (a device
    the probe has not reported yet) leaves the combo box as it is."""

    SIGNAL = "currentIndexChanged"

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return unannotatedType(datatype) == str and hasattr(widget, "findData")

    def read(self) -> str:
        return self._widget.currentData or ""

    def write(self, value: str) -> None:
        index = self._widget.findData(value)
        if index >= 0:
            self._widget.currentIndex = index


# ------------------------------------------------------------------------------------------------ older scenes


def _renamed(name, convert=str):
    return lambda text: {name: convert(text)}


def _boolean(text):
    return "True" if text == "true" else "False"


def _setting(field):
    """A "Setting.<field>" JSON value of the old training panel as the pack's parameter(s)."""
    def convert(text):
        value = json.loads(text)
        if field == "image_size":
            return {"settings.image_height": str(int(value[0])), "settings.image_width": str(int(value[1]))}
        return {f"settings.{field}": str(value)}
    return convert


LEGACY_REFERENCES = {  # old node reference role -> new parameter
    SynthesisParameters: {"InputVolume": "inputVolume", "OutputVolume": "outputVolume",
                          "QualityVolume": "qualityVolume"},
    SegmentParameters: {"InputVolume": "inputVolume", "SCTVolume": "sctVolume"},
    TrainingParameters: {},
}
LEGACY_PARAMETERS = {  # old parameter -> its value(s) under the new names
    SynthesisParameters: {"Model": _renamed("model"), "Device": _renamed("device"),
                          "Precision": _renamed("precision"), "WindowPreset": _renamed("windowPreset"),
                          "QualityMap": _renamed("qualityMap", _boolean),
                          "DicomExport": _renamed("dicomExport", _boolean), "DicomFolder": _renamed("dicomFolder")},
    SegmentParameters: {"Model": _renamed("model"), "SynthesisModel": _renamed("synthesisModel"),
                        "Device": _renamed("device")},
    TrainingParameters: {"MRFolder": _renamed("mrFolder"), "CTFolder": _renamed("ctFolder"),
                         "RunFolder": _renamed("runFolder"), "Preset": _renamed("preset"),
                         "Device": _renamed("device"), "Processes": _renamed("processes"),
                         **{f"Setting.{field}": _setting(field) for field in SETTING_FIELDS}},
}


def takeLegacyEntries(node, parametersClass) -> tuple[dict, dict]:
    """Remove what an older version of the module saved in ``node``; returns it under ``parametersClass``'s names:
    ({parameter: referenced node ID}, {parameter: value as the wrapper stores it}). An unreadable value is dropped."""
    references, values = {}, {}
    wasModified = node.StartModify()
    try:
        for old, new in LEGACY_REFERENCES[parametersClass].items():
            nodeID = node.GetNodeReferenceID(old)
            if nodeID is not None:
                references[new] = nodeID
                node.RemoveNodeReferenceIDs(old)
        for old, convert in LEGACY_PARAMETERS[parametersClass].items():
            if node.HasParameter(old):
                try:
                    values.update(convert(node.GetParameter(old)))
                except (ValueError, TypeError, IndexError):
                    pass
                node.UnsetParameter(old)
    finally:
        node.EndModify(wasModified)
    return references, values


def wrapParameterNode(node, parametersClass):
    """``parametersClass`` over the module's parameter node. What an older version saved there is migrated: each old
    entry moves to its new name, value converted, unless the new name is already set."""
    present = set(node.GetParameterNames())
    references, values = takeLegacyEntries(node, parametersClass)
    parameters = parametersClass(node)  # writes the defaults of what is missing (a parameter pack as a whole)
    with slicer.util.NodeModify(node):
        for name, nodeID in references.items():
            if name not in present:
                node.SetNodeReferenceID(name, nodeID)
        for name, text in values.items():
            if name not in present:
                node.SetParameter(name, text)
    return parameters
