"""Segmentation model files (``*.mrtoct-seg.safetensors``): U-Net weights plus JSON metadata, never pickle.

One safetensors file holds the network's state dict and, under the header-metadata key "mrtoct_seg", the metadata:

    {"format": "mrtoct-segmentation-model", "format_version": 1, "engine_version": str, "name": str,
     "description": str, "license": str, "intended_use": str,
     "network": {"architecture": <unet.SEG_NETWORKS name>, "kwargs": {...}},
     "channels": "mr+sct" | "sct" | "mr",
     "label_table": <labels.LabelTable JSON: names, colours, terminology of the output values>,
     "normalization": <preprocessing.Normalization JSON: plane, canvas, windows, MR scaling of the inputs>,
     "synthesis_model": {"name": str, "sha256": str or null} or null  (the model whose G_MR made training MR),
     "training": {...}, "validation_metrics": {...}}

Loading refuses pickle checkpoints (by their magic bytes, without unpickling), unknown architectures, weights that do
not match the declared architecture, and metadata that contradict themselves (channels vs input channels, label table
vs number of classes, a canvas that is not a multiple of 16).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from MRtoCTSynthesisLib import __version__
from MRtoCTSynthesisLib.atomic import write_atomically
from MRtoCTSynthesisLib.modelfile import ModelFileError
from MRtoCTSynthesisLib.preprocessing import Normalization

from .labels import LabelTable, LabelTableError
from .unet import MULTIPLE, SEG_NETWORKS, build_network

FORMAT = "mrtoct-segmentation-model"
FORMAT_VERSION = 1
METADATA_KEY = "mrtoct_seg"
SUFFIX = ".mrtoct-seg.safetensors"
CHANNEL_MODES = {"mr+sct": ("mr", "sct"), "sct": ("sct",), "mr": ("mr",)}
PathLike = Union[str, os.PathLike]


class SegModelFileError(ModelFileError):
    """A segmentation model file or its metadata is missing, unsafe, corrupt or inconsistent."""


def channel_names(mode: str) -> tuple:
    """The input channels of a mode, in network order: MR-domain first, then CT-domain ("mr", "sct")."""
    if mode not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {sorted(CHANNEL_MODES)}, not {mode!r}")
    return CHANNEL_MODES[mode]


def validate_metadata(metadata: Any) -> dict:
    """Check the schema in the module docstring; returns the metadata, raises SegModelFileError naming the key."""
    where = "segmentation model metadata"
    if not isinstance(metadata, dict):
        raise SegModelFileError(f"{where} must be a JSON object")
    if metadata.get("format") != FORMAT:
        raise SegModelFileError(f"{where}: 'format' is {metadata.get('format')!r}, expected {FORMAT!r} "
                                "(is this a synthesis model? segmentation needs a *.mrtoct-seg.safetensors file)")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SegModelFileError(f"{where}: 'format_version' must be an integer >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise SegModelFileError(f"this segmentation model has format_version {version}, newer than this engine "
                                f"supports ({FORMAT_VERSION}, engine {__version__}); update the extension")
    for key in ("engine_version", "name", "description", "license", "intended_use", "channels"):
        if not isinstance(metadata.get(key), str):
            raise SegModelFileError(f"{where}: {key!r} must be a string, got {metadata.get(key)!r}")
    for key in ("network", "label_table", "normalization", "training", "validation_metrics"):
        if not isinstance(metadata.get(key), dict):
            raise SegModelFileError(f"{where}: {key!r} must be an object")
    if metadata["channels"] not in CHANNEL_MODES:
        raise SegModelFileError(f"{where}: 'channels' must be one of {sorted(CHANNEL_MODES)}, "
                                f"got {metadata['channels']!r}")
    network = metadata["network"]
    if not isinstance(network.get("architecture"), str) or not isinstance(network.get("kwargs"), dict):
        raise SegModelFileError(f"{where}: 'network' must have 'architecture' (str) and 'kwargs' (object)")
    if network["architecture"] not in SEG_NETWORKS:
        raise SegModelFileError(f"{where}: unknown architecture {network['architecture']!r}; this engine knows "
                                f"{sorted(SEG_NETWORKS)} (the model may need a newer extension)")
    try:
        table = LabelTable.from_json(metadata["label_table"], f"{where}: label_table")
        norm = Normalization.from_json(metadata["normalization"])
    except (LabelTableError, ValueError) as error:
        raise SegModelFileError(str(error)) from error
    kwargs = network["kwargs"]
    expected_in = len(channel_names(metadata["channels"]))
    if kwargs.get("in_channels") != expected_in:
        raise SegModelFileError(f"{where}: channels {metadata['channels']!r} need in_channels {expected_in}, the "
                                f"network declares {kwargs.get('in_channels')!r}")
    if kwargs.get("n_classes") != table.n_classes:
        raise SegModelFileError(f"{where}: label table {table.name!r} has {table.n_classes} classes (with "
                                f"background), the network declares n_classes {kwargs.get('n_classes')!r}")
    if any(int(v) % MULTIPLE for v in norm.image_size):
        raise SegModelFileError(f"{where}: normalization.image_size {norm.image_size} must be multiples of "
                                f"{MULTIPLE}")
    synthesis = metadata.get("synthesis_model")
    if synthesis is not None and not (isinstance(synthesis, dict) and isinstance(synthesis.get("name"), str)):
        raise SegModelFileError(f"{where}: 'synthesis_model' must be null or an object with a 'name'")
    return metadata


@dataclass
class SegModel:
    """A loaded segmentation model file."""

    metadata: dict
    state_dict: dict
    path: Optional[Path] = None

    @property
    def table(self) -> LabelTable:
        return LabelTable.from_json(self.metadata["label_table"])

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_json(self.metadata["normalization"])

    @property
    def channels(self) -> tuple:
        return channel_names(self.metadata["channels"])

    def build(self, device: Union[str, torch.device] = "cpu") -> nn.Module:
        """The network with its weights (strict), on ``device``, in eval mode."""
        spec = self.metadata["network"]
        net = build_network(spec["architecture"], **spec["kwargs"])
        net.load_state_dict(self.state_dict, strict=True)
        return net.to(device).eval()


def _check_weights(metadata: dict, weights: Mapping[str, torch.Tensor]) -> None:
    spec = metadata["network"]
    try:
        with torch.device("meta"):
            expected = build_network(spec["architecture"], **spec["kwargs"]).state_dict()
    except ValueError as error:
        raise SegModelFileError(str(error)) from error
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs architecture {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(weights)) if tuple(weights[k].shape) != tuple(expected[k].shape)]
    problems = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if items]
    if problems:
        raise SegModelFileError(f"weights do not match architecture {spec['architecture']!r} with {spec['kwargs']}: "
                                + "; ".join(problems))


def save_seg_model(path: PathLike, metadata: Mapping[str, Any], network: Union[nn.Module, Mapping]) -> Path:
    """Validate metadata and weights, then write the file atomically. format/version/engine_version default."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
                "license": "as permitted by the training data", "description": "",
                "intended_use": "Research use only. Not for clinical use.", "training": {},
                "validation_metrics": {}, "synthesis_model": None, **metadata}
    try:
        text = json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise SegModelFileError(f"metadata is not JSON-serialisable ({error})") from error
    metadata = validate_metadata(json.loads(text))
    weights = dict(network.state_dict() if isinstance(network, nn.Module) else network)
    _check_weights(metadata, weights)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    return write_atomically(Path(path), lambda temp: save_file(tensors, str(temp), metadata={METADATA_KEY: text}))


def _check_container(path: Path) -> None:
    if not path.is_file():
        raise SegModelFileError(f"segmentation model file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise SegModelFileError(f"{path} looks like a PyTorch pickle checkpoint (torch.save); pickle files can "
                                "execute code and are refused. Save models with MRtoCTSegmentLib.modelfile."
                                "save_seg_model (safetensors)")
    if head[8:9] != b"{":
        raise SegModelFileError(f"{path} is not a safetensors segmentation model (expected *{SUFFIX})")
    if 8 + int.from_bytes(head[:8], "little") > path.stat().st_size:
        raise SegModelFileError(f"{path} is truncated or corrupt; copy it again")


def load_seg_model(path: PathLike) -> SegModel:
    """Load and validate a segmentation model file; never unpickles."""
    path = Path(path)
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise SegModelFileError(f"{path} is truncated or corrupt ({error})") from error
    if METADATA_KEY not in header:
        hint = " (it is a synthesis model bundle)" if "mrtoct" in header else ""
        raise SegModelFileError(f"{path} has no {METADATA_KEY!r} metadata: not a segmentation model{hint}")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise SegModelFileError(f"{path}: metadata is not valid JSON ({error})") from error
    try:
        validate_metadata(metadata)
        _check_weights(metadata, tensors)
    except SegModelFileError as error:
        raise SegModelFileError(f"{path}: {error}") from error
    return SegModel(metadata, tensors, path)


def load(model: Union[PathLike, SegModel]) -> SegModel:
    return model if isinstance(model, SegModel) else load_seg_model(model)
