"""Model bundle format (``*.mrtoct.safetensors``) and the model catalog.

A bundle is ONE safetensors file: the weights of each network under prefixed keys ("G_CT.<param>" always,
"G_MR.<param>" optionally, used by the quality map) and the JSON metadata (schema in ``validate_metadata``) as a
string under the header-metadata key "mrtoct", and the SHA-256 of the tensors (``weights_digest``) under
"mrtoct_weights_sha256", checked at every load (files saved before it existed load with a note), so damage to a
model given by path is found like damage to a catalog model. safetensors holds raw tensors only, so loading a model
can never run code: pickle checkpoints (torch.save) are recognised by their magic bytes and refused, never unpickled.

The catalog (Resources/Models/catalog.json) names released models with their sha256; a name resolves to the file
bundled next to the catalog or to the user cache (``model_cache_dir()``), always after a hash check. Models trained
locally are registered by name in ``<cache>/local_models.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .atomic import write_atomically
from .config import are_extra_planes
from .networks import NETWORKS, build_network

log = logging.getLogger(__name__)

FORMAT = "mrtoct-model"
FORMAT_VERSION = 1
METADATA_KEY = "mrtoct"
WEIGHTS_HASH_KEY = "mrtoct_weights_sha256"  # header metadata beside METADATA_KEY: weights_digest, by save_model
SUFFIX = ".mrtoct.safetensors"
PLANES = ("sagittal", "axial", "coronal")
CATALOG_VERSION = 1
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "Resources" / "Models" / "catalog.json"
CACHE_ENV = "MRTOCT_MODEL_CACHE"
LOCAL_MODELS_FILE = "local_models.json"
_CHUNK = 1 << 20
_CATALOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PathLike = Union[str, os.PathLike]
StateDict = Mapping[str, torch.Tensor]


class ModelFileError(ValueError):
    """A model file, its metadata or the catalog is missing, unsafe, corrupt or inconsistent."""


class NewerFormatError(ModelFileError):
    """The model file was written by a newer engine (a valid file this engine cannot read)."""


# ----------------------------------------------------------------------------------------------- metadata


def _field(mapping: Mapping[str, Any], key: str, types: Union[type, tuple], where: str) -> Any:
    """mapping[key] checked against types (bool is not accepted as a number); errors name ``where.key``."""
    if key not in mapping:
        raise ModelFileError(f"{where}: missing key {key!r}")
    value, types = mapping[key], types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(t.__name__ for t in types)
        raise ModelFileError(f"{where}: {key!r} must be {expected}, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair_of(value: Any, key: str, positive: bool = False, ascending: bool = False, integer: bool = False) -> None:
    """Check a two-element list of finite numbers ([lo, hi] windows, [H, W] sizes, [sy, sx] spacings)."""
    ok = isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
    ok = ok and (not integer or all(isinstance(v, int) for v in value))
    ok = ok and (not positive or min(value) > 0) and (not ascending or value[0] < value[1])
    if not ok:
        rule = ", ".join(name for name, flag in (("integers", integer), ("positive", positive),
                                                 ("lo < hi", ascending)) if flag)
        raise ModelFileError(f"model metadata: {key!r} must be a list of two finite numbers ({rule}), got {value!r}")


# Sane ranges of the values that decide allocations and outputs (issue 20): a damaged or hostile card must be refused
# with a message, not end in an allocator error, a hang or 1e29 HU. Generous: every real model is far inside them.
LIMITS = {"ct_window": (-2000.0, 6000.0),          # HU a CT can hold (air -1000, metal implants ~ 3000-4000)
          "mr_window": (-1e6, 1e6),                # MR units after scaling (presets: [0, 100] and [0, 3500])
          "image_size": (16, 4096),                # canvas pixels per side
          "pixel_spacing_mm": (0.05, 20.0)}
NETWORK_LIMITS = {"in_channels": (1, 8), "out_channels": (1, 8), "ngf": (1, 512), "ndf": (1, 512),
                  "n_blocks": (0, 64), "n_layers": (1, 8)}
NETWORK_CHOICES = {"norm": ("instance", "batch", "none")}


def _within(values: Any, key: str, unit: str = "") -> None:
    lo, hi = LIMITS[key]
    if any(not lo <= v <= hi for v in values):
        raise ModelFileError(f"model metadata: {key!r} is {values!r}, outside the sane range [{lo:g}, {hi:g}]{unit}; "
                             "the model file is damaged or not made by this engine: use another copy")


def _check_network_kwargs(kwargs: dict, where: str) -> None:
    """Integer widths, depths and channel counts in NETWORK_LIMITS, string choices in NETWORK_CHOICES."""
    for key, value in kwargs.items():
        if key in NETWORK_LIMITS:
            lo, hi = NETWORK_LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ModelFileError(f"{where}: {key!r} must be an integer in [{lo}, {hi}], got {value!r}; the model "
                                     "file is damaged or not made by this engine: use another copy")
        elif key in NETWORK_CHOICES and value not in NETWORK_CHOICES[key]:
            raise ModelFileError(f"{where}: {key!r} must be one of {NETWORK_CHOICES[key]}, got {value!r}")


def validate_metadata(metadata: Any) -> dict:
    """Check the bundle metadata schema (format_version 1); returns it unchanged, raises ModelFileError naming the key.

    {"format": "mrtoct-model", "format_version": 1, "engine_version": str, "name": str, "description": str,
     "license": str, "intended_use": str,
     "networks": {"G_CT": {"architecture": <NETWORKS name>, "kwargs": {...}}, "G_MR": {...} (optional)},
     "preset": str, "loss_weights": {str: number}, "mr_window": [lo, hi], "ct_window": [lo, hi],
     "mr_normalization": {...}, "plane": "sagittal" | "axial" | "coronal", "extra_planes": [plane, ...] (optional),
     "image_size": [H, W],
     "pixel_spacing_mm": [sy, sx] or null, "training": {...}, "validation_metrics": {...}}
    Extra keys are kept (forward compatible within a format version).
    """
    where = "model metadata"
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{where} must be a JSON object, got {type(metadata).__name__}")
    if _field(metadata, "format", str, where) != FORMAT:
        raise ModelFileError(f"{where}: 'format' is {metadata['format']!r}, expected {FORMAT!r}")
    version = _field(metadata, "format_version", int, where)
    if version > FORMAT_VERSION:
        raise NewerFormatError(f"this model file has format_version {version}, newer than this engine supports "
                             f"({FORMAT_VERSION}, engine {__version__}); update the MRtoCTSynthesis extension")
    if version < 1:
        raise ModelFileError(f"{where}: 'format_version' must be >= 1, got {version}")
    for key in ("engine_version", "name", "description", "license", "intended_use", "preset", "plane"):
        _field(metadata, key, str, where)
    for key in ("networks", "loss_weights", "mr_normalization", "training", "validation_metrics"):
        _field(metadata, key, dict, where)
    if not metadata["name"].strip():
        raise ModelFileError(f"{where}: 'name' must not be empty")
    if metadata["plane"] not in PLANES:
        raise ModelFileError(f"{where}: 'plane' must be one of {PLANES}, got {metadata['plane']!r}")
    extra = metadata.get("extra_planes", [])
    if not isinstance(extra, list) or not are_extra_planes(extra, metadata["plane"]):
        raise ModelFileError(f"{where}: 'extra_planes' must be a list of planes other than 'plane' "
                             f"({metadata['plane']!r}), each once, got {extra!r}")
    bad_weights = {k: v for k, v in metadata["loss_weights"].items() if not _is_number(v)}
    if bad_weights:
        raise ModelFileError(f"{where}: 'loss_weights' values must be finite numbers, got {bad_weights}")
    for key in ("mr_window", "ct_window"):
        _pair_of(_field(metadata, key, list, where), key, ascending=True)
        _within(metadata[key], key, " HU" if key == "ct_window" else "")
    _check_mr_normalization(metadata["mr_normalization"], where)
    _pair_of(_field(metadata, "image_size", list, where), "image_size", positive=True, integer=True)
    _within(metadata["image_size"], "image_size", " pixels")
    spacing = _field(metadata, "pixel_spacing_mm", (list, type(None)), where)
    if spacing is not None:
        _pair_of(spacing, "pixel_spacing_mm", positive=True)
        _within(spacing, "pixel_spacing_mm", " mm")
    networks = metadata["networks"]
    if "G_CT" not in networks:
        raise ModelFileError(f"{where}: 'networks' must contain 'G_CT' (the MR-to-CT generator), "
                             f"has {sorted(networks)}")
    for name, spec in networks.items():
        net_where = f"{where}: networks[{name!r}]"
        if not name or "." in name:
            raise ModelFileError(f"{net_where}: network names must be non-empty and contain no '.'")
        if not isinstance(spec, dict):
            raise ModelFileError(f"{net_where} must be an object with 'architecture' and 'kwargs'")
        architecture = _field(spec, "architecture", str, net_where)
        _check_network_kwargs(_field(spec, "kwargs", dict, net_where), net_where)
        if architecture not in NETWORKS:
            raise ModelFileError(f"{net_where}: unknown architecture {architecture!r}; this engine knows "
                                 f"{sorted(NETWORKS)} (the model may need a newer extension)")
    return metadata


def _check_mr_normalization(record: dict, where: str) -> None:
    """The robust-scaling values, where present: percentile null or in (0, 100], value finite and > 0, n4 a bool
    (a value <= 0 would map every MR voxel to the bottom of the window: -1000 HU everywhere)."""
    percentile, value, n4 = record.get("percentile"), record.get("value"), record.get("n4", False)
    if percentile is not None and not (_is_number(percentile) and 0 < percentile <= 100):
        raise ModelFileError(f"{where}: mr_normalization 'percentile' must be null or a number in (0, 100], "
                             f"got {percentile!r}")
    if "value" in record and not (_is_number(value) and value > 0):
        raise ModelFileError(f"{where}: mr_normalization 'value' must be a finite number > 0, got {value!r}")
    if not isinstance(n4, bool):
        raise ModelFileError(f"{where}: mr_normalization 'n4' must be true or false, got {n4!r}")


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the stored tensors in key order: each key, dtype, shape and raw bytes (what a flipped bit in the
    weights changes, wherever the file came from)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_finite(state_dicts: Mapping[str, StateDict]) -> None:
    """NaN or inf weights (a diverged training) give an sCT of one constant value: refuse them."""
    for name, weights in state_dicts.items():
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ModelFileError(f"network {name!r} has NaN or infinite weights in {bad[:3]}"
                                 f"{' ...' if len(bad) > 3 else ''}: the training diverged or the file is damaged; "
                                 "use an earlier checkpoint or another model")


def _check_weights(metadata: dict, state_dicts: Mapping[str, StateDict]) -> None:
    """Weights must match each declared architecture exactly: same networks, keys and shapes."""
    declared, given = set(metadata["networks"]), set(state_dicts)
    if declared != given:
        raise ModelFileError(f"weights are for networks {sorted(given)} but the metadata declares {sorted(declared)}")
    for name, spec in metadata["networks"].items():
        try:
            with torch.device("meta"):  # shapes only, no memory
                expected = build_network(spec["architecture"], **spec["kwargs"]).state_dict()
        except ValueError as error:
            raise ModelFileError(f"network {name!r}: {error}") from error
        weights = state_dicts[name]
        not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        shapes = [f"{k}: file {tuple(weights[k].shape)} vs architecture {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(weights) - set(not_tensors))
                  if weights[k].shape != expected[k].shape]
        problems = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
                    for label, items in (("values that are not tensors", not_tensors), ("missing keys", missing),
                                         ("unexpected keys", unexpected), ("shape mismatch", shapes)) if items]
        if problems:
            raise ModelFileError(f"weights of network {name!r} do not match architecture {spec['architecture']!r} "
                                 f"with {spec['kwargs']}: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------- bundle files


@dataclass
class ModelBundle:
    """A loaded model file: validated metadata and CPU state dicts per network name ("G_CT", "G_MR")."""

    metadata: dict
    state_dicts: dict[str, dict[str, torch.Tensor]]
    path: Optional[Path] = None

    def build(self, name: str = "G_CT", device: Union[str, torch.device] = "cpu") -> nn.Module:
        """The network ``name`` with its weights loaded (strict), on ``device``, in eval mode."""
        if name not in self.state_dicts:
            raise ModelFileError(f"model {self.metadata['name']!r} has no network {name!r}; it has "
                                 f"{sorted(self.state_dicts)}")
        spec = self.metadata["networks"][name]
        net = build_network(spec["architecture"], **spec["kwargs"])
        net.load_state_dict(self.state_dicts[name], strict=True)
        return net.to(device).eval()


def average_weights(bundles: Sequence[ModelBundle], shares: Sequence[float], network: str = "G_CT") -> StateDict:
    """The weighted mean sum_i share_i * w_i of one network's weights over models fine-tuned from one start (a model
    soup, Wortsman et al. 2022: one network's cost, often better than any ingredient); integer buffers (batch-norm
    step counts) from the first. The models must share the network's architecture; shares are >= 0 and sum to 1."""
    if len(bundles) < 2 or len(bundles) != len(shares):
        raise ModelFileError(f"averaging needs two or more models and one share each, got {len(bundles)} models and "
                             f"{len(shares)} shares")
    if min(shares) < 0 or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ModelFileError(f"the shares of a weight average must be >= 0 and sum to 1, got {list(shares)}")
    specs = [b.metadata["networks"].get(network) for b in bundles]
    if any(spec != specs[0] for spec in specs) or specs[0] is None:
        raise ModelFileError(f"only models with the same {network!r} architecture can be averaged, got {specs}")
    first = bundles[0].state_dicts[network]
    return {key: (sum(share * b.state_dicts[network][key].double() for b, share in zip(bundles, shares))
                  .to(value.dtype) if value.is_floating_point() else value)
            for key, value in first.items()}


def save_model(path: PathLike, metadata: Mapping[str, Any],
               networks: Mapping[str, Union[nn.Module, StateDict]]) -> Path:
    """Validate metadata and weights, then write the bundle atomically, read back in full; returns the path.

    "format", "format_version" and "engine_version" default to this engine's. ``networks`` maps network names
    (as in metadata["networks"]) to modules or state dicts. Convention: name files ``<name>.mrtoct.safetensors``.
    """
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__, **metadata}
    try:
        text = json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"model metadata is not JSON-serialisable ({error}); use plain str, int, float, "
                             "list, dict and None values (e.g. float(x) for numpy numbers)") from error
    metadata = validate_metadata(json.loads(text))
    state_dicts = {name: dict(net.state_dict() if isinstance(net, nn.Module) else net)
                   for name, net in networks.items()}
    _check_weights(metadata, state_dicts)
    tensors = {f"{name}.{key}": value.detach().to("cpu").contiguous()
               for name, weights in state_dicts.items() for key, value in weights.items()}
    header = {METADATA_KEY: text, WEIGHTS_HASH_KEY: weights_digest(tensors)}
    return write_atomically(Path(path), lambda temp: save_file(tensors, str(temp), metadata=header),
                            verify=lambda temp: _read(temp, with_weights=True))  # complete, checksum intact


def _check_container(path: Path) -> None:
    """Refuse, from the first bytes only, anything that is not a complete-looking safetensors file."""
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if head[8:9] == b"{":  # safetensors: u64 little-endian header length, then the JSON header
        header_length = int.from_bytes(head[:8], "little")
        if 8 + header_length > size:
            raise ModelFileError(f"{path} is truncated or corrupt: its header needs {8 + header_length} bytes but "
                                 f"the file has {size}; download or copy it again")
        return
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise ModelFileError(
            f"{path} looks like a PyTorch pickle checkpoint (torch.save); pickle files can execute code and are "
            "refused. Convert it to safetensors in a Python session you trust: "
            "state = torch.load(path, weights_only=True), then "
            "MRtoCTSynthesisLib.modelfile.save_model('<name>.mrtoct.safetensors', metadata, {'G_CT': state})")
    raise ModelFileError(f"{path} is not a safetensors model file (expected a *{SUFFIX} bundle)")


def _read(path: PathLike, with_weights: bool) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    path = Path(path)
    _check_container(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()} if with_weights else {}
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path} is truncated or corrupt ({error}); download or copy it again") from error
    if METADATA_KEY not in header:
        raise ModelFileError(f"{path} is a safetensors file without {METADATA_KEY!r} metadata: it is not an "
                             "MRtoCT model bundle (save models with modelfile.save_model)")
    try:
        metadata = validate_metadata(json.loads(header[METADATA_KEY]))
    except NewerFormatError:
        raise
    except (json.JSONDecodeError, ModelFileError) as error:
        raise ModelFileError(f"{path}: the model file is damaged or was not written by this engine: its "
                             f"{METADATA_KEY!r} metadata is invalid ({error}). Copy or download it again (a catalog "
                             "model: delete it from the cache and resolve it again), or export it again with "
                             "modelfile.save_model") from error
    if with_weights and WEIGHTS_HASH_KEY in header and weights_digest(tensors) != header[WEIGHTS_HASH_KEY]:
        raise ModelFileError(f"{path}: the weights do not match the checksum recorded when the model was saved: the "
                             "file is damaged. Copy or download it again")
    if with_weights and WEIGHTS_HASH_KEY not in header:
        log.info("%s has no weights checksum (saved by an older engine): damage to its weights cannot be detected; "
                 "save it again with modelfile.save_model to add one", path)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, param = key.partition(".")
        state_dicts.setdefault(name, {})[param] = tensor
    return metadata, state_dicts


def read_metadata(path: PathLike) -> dict:
    """The validated metadata of a bundle without reading its weights (cheap: for model lists and info panels)."""
    return _read(path, with_weights=False)[0]


def load_model(path: PathLike) -> ModelBundle:
    """Load and fully validate a bundle (container, metadata, weights checksum, weights vs architecture, finite
    weights); never unpickles."""
    metadata, state_dicts = _read(path, with_weights=True)
    try:
        _check_weights(metadata, state_dicts)
        _check_finite(state_dicts)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    return ModelBundle(metadata, state_dicts, Path(path))


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- cache, local models


def model_cache_dir() -> Path:
    """Folder for downloaded/installed models: $MRTOCT_MODEL_CACHE, else ~/.cache/mrtoct/models."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mrtoct" / "models").expanduser()


def local_models() -> dict[str, Path]:
    """Locally trained models registered in <cache>/local_models.json: name -> absolute path."""
    registry = model_cache_dir() / LOCAL_MODELS_FILE
    if not registry.is_file():
        return {}
    try:
        entries = json.loads(registry.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFileError(f"cannot read the local model registry {registry} ({error}); fix or delete it and "
                             "register the models again") from error
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise ModelFileError(f"{registry} must map model names to file paths; fix or delete it")
    return {name: Path(value) for name, value in entries.items()}


def register_local_model(path: PathLike, name: Optional[str] = None) -> str:
    """Register a (validated) bundle under ``name`` (default: its metadata name) so model lists show it."""
    path = Path(path).expanduser().resolve()
    name = name or read_metadata(path)["name"]
    entries = {key: str(value) for key, value in local_models().items()}
    entries[name] = str(path)
    text = json.dumps(entries, indent=2, sort_keys=True)
    write_atomically(model_cache_dir() / LOCAL_MODELS_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))
    return name


# ----------------------------------------------------------------------------------------------- catalog


def _read_catalog(path: Path) -> dict[str, dict]:
    """Validated catalog entries by name: {"version": 1, "models": [{"name", "description", "file" and/or "url",
    "sha256", "size_bytes", "license", "metrics"}]}."""
    if not path.is_file():
        raise ModelFileError(f"model catalog not found: {path}")
    try:
        catalog = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFileError(f"cannot read the model catalog {path}: {error}") from error
    where = f"catalog {path}"
    if not isinstance(catalog, dict):
        raise ModelFileError(f"{where} must be a JSON object")
    if _field(catalog, "version", int, where) != CATALOG_VERSION:
        raise ModelFileError(f"{where} has version {catalog['version']}; this engine reads version "
                             f"{CATALOG_VERSION}: update the extension")
    entries: dict[str, dict] = {}
    for index, entry in enumerate(_field(catalog, "models", list, where)):
        entry_where = f"{where}: models[{index}]"
        if not isinstance(entry, dict):
            raise ModelFileError(f"{entry_where} must be an object")
        for key in ("name", "description", "sha256", "license"):
            _field(entry, key, str, entry_where)
        if _field(entry, "size_bytes", int, entry_where) < 0:
            raise ModelFileError(f"{entry_where}: 'size_bytes' must be >= 0")
        if not _CATALOG_NAME.match(entry["name"]):
            raise ModelFileError(f"{entry_where}: name {entry['name']!r} must use letters, digits, '.', '_', '-'")
        if not _SHA256.match(entry["sha256"]):
            raise ModelFileError(f"{entry_where}: 'sha256' must be 64 lowercase hex digits")
        for key in ("file", "url"):
            if key in entry:
                _field(entry, key, str, entry_where)
        if "file" not in entry and "url" not in entry:
            raise ModelFileError(f"{entry_where}: needs a 'file' (relative to the catalog) or a 'url'")
        if not isinstance(entry.setdefault("metrics", {}), dict):
            raise ModelFileError(f"{entry_where}: 'metrics' must be an object")
        if entry["name"] in entries:
            raise ModelFileError(f"{where}: model name {entry['name']!r} appears twice")
        entries[entry["name"]] = entry
    return entries


def _hash_mismatch(name: str, origin: str, actual: str, expected: str) -> ModelFileError:
    return ModelFileError(
        f"{origin} has sha256 {actual} but the catalog expects {expected} for model {name!r}: the file is corrupt, "
        "incomplete or a different version. Delete it and download it again, or install the right file with "
        "install_from_file")


class Catalog:
    """Released models (catalog.json) plus locally registered ones; resolves names to verified files."""

    def __init__(self, path: PathLike = DEFAULT_CATALOG) -> None:
        self.path = Path(path)
        self.models = _read_catalog(self.path)

    def _entry(self, name: str) -> dict:
        if name not in self.models:
            raise ModelFileError(f"unknown model {name!r}; the catalog has {sorted(self.models)}")
        return self.models[name]

    def _locations(self, entry: dict) -> list[Path]:
        """Where a catalog model may be: bundled next to the catalog, then the cache."""
        cached = model_cache_dir() / f"{entry['name']}{SUFFIX}"
        return ([self.path.parent / entry["file"]] if "file" in entry else []) + [cached]

    def list_models(self) -> list[dict]:
        """Catalog entries and local models, each with "source" ("catalog" | "local") and "path" (None if absent).

        A local model whose name is also in the catalog is listed, but ``resolve`` gives the catalog one.
        """
        listed = [{**entry, "source": "catalog",
                   "path": next((str(p) for p in self._locations(entry) if p.is_file()), None)}
                  for entry in self.models.values()]
        listed += [{"name": name, "source": "local", "path": str(path) if path.is_file() else None}
                   for name, path in sorted(local_models().items())]
        return listed

    def resolve(self, name_or_path: PathLike, download: bool = False) -> Path:
        """An existing file path as is; a catalog name to its bundled/cached file (sha256-verified, downloaded
        first if ``download`` and it has a URL); else a registered local model."""
        candidate = Path(name_or_path).expanduser()
        if candidate.is_file():
            return candidate
        name = str(name_or_path)
        if name in self.models:
            entry = self.models[name]
            for path in self._locations(entry):
                if path.is_file():
                    actual = sha256_of(path)
                    if actual != entry["sha256"]:
                        raise _hash_mismatch(name, str(path), actual, entry["sha256"])
                    return path
            if download and "url" in entry:
                return self.download(name)
            how = f"download it with Catalog.download({name!r}) from {entry['url']}" if "url" in entry else \
                f"restore the bundled file {self.path.parent / entry.get('file', '')}"
            raise ModelFileError(f"model {name!r} is not installed; {how}, or install a copy of the file with "
                                 f"Catalog.install_from_file({name!r}, path)")
        local = local_models()
        if name in local:
            if not local[name].is_file():
                raise ModelFileError(f"local model {name!r} is registered at {local[name]} but that file is gone; "
                                     "register the model again with register_local_model")
            return local[name]
        raise ModelFileError(f"no file {name!r} and no model of that name; available models: "
                             f"{sorted(set(self.models) | set(local))}")

    def _install(self, entry: dict, source: BinaryIO, origin: str,
                 total: int, progress: Optional[Callable[[int, int], None]]) -> Path:
        """Stream source into the cache, hashing on the way; the file appears only if its sha256 matches."""
        def write(temp: Path) -> None:
            digest, done = hashlib.sha256(), 0
            with open(temp, "wb") as out:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            if digest.hexdigest() != entry["sha256"]:
                raise _hash_mismatch(entry["name"], origin, digest.hexdigest(), entry["sha256"])

        return write_atomically(model_cache_dir() / f"{entry['name']}{SUFFIX}", write)

    def install_from_file(self, name: str, path: PathLike) -> Path:
        """Copy a local copy of catalog model ``name`` into the cache after checking its sha256 (offline sites)."""
        entry = self._entry(name)
        source = Path(path).expanduser()
        if not source.is_file():
            raise ModelFileError(f"cannot install {name!r}: no file at {source}")
        with open(source, "rb") as f:
            return self._install(entry, f, str(source), source.stat().st_size, None)

    def download(self, name: str, progress: Optional[Callable[[int, int], None]] = None,
                 timeout: float = 60.0) -> Path:
        """Download catalog model ``name`` from its URL (https, http or file) into the cache; sha256-verified,
        atomic. ``progress(bytes_done, bytes_total)`` is called after every chunk."""
        entry = self._entry(name)
        url = entry.get("url")
        if url is None:
            raise ModelFileError(f"model {name!r} has no download URL; it ships with the extension")
        if urllib.parse.urlparse(url).scheme not in ("https", "http", "file"):
            raise ModelFileError(f"model {name!r}: refusing URL {url!r} (only https, http and file URLs)")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or entry["size_bytes"])
                return self._install(entry, response, url, total, progress)
        except OSError as error:  # URLError, timeouts, connection resets
            raise ModelFileError(f"could not download model {name!r} from {url} ({error}); check the network, or "
                                 "fetch the file another way and use Catalog.install_from_file") from error


# ----------------------------------------------------------------------------------------------- model card notes

ANATOMY_HU = (-1000.0, 3000.0)  # air to dense cortical bone and teeth: a CT window covering this caps nothing


def range_note(metadata: Mapping[str, Any]) -> str:
    """The warning a user must see when the model's CT window caps every sCT inside the HU range of anatomy ("" if
    the window covers ANATOMY_HU). The generator's tanh output maps onto the window, so no sCT value can leave it
    (e.g. Hiasa's [-150, 350] HU). For the model card, ``mrtoct synthesize`` and the Slicer panel."""
    low, high = (float(v) for v in metadata["ct_window"])
    capped = []
    if low > ANATOMY_HU[0]:
        capped.append(f"below {low:g} HU (air, fat) read {low:g}")
    if high < ANATOMY_HU[1]:
        capped.append(f"above {high:g} HU (bone) read {high:g}")
    if not capped:
        return ""
    return (f"This model's CT window [{low:g}, {high:g}] HU caps every sCT to that range: tissues "
            f"{' and '.join(capped)} HU, so its HU are not valid there (not for dose or bone density).")


def model_range_note(model: PathLike) -> str:
    """``range_note`` of a model file, catalog name or local model name."""
    return range_note(read_metadata(Catalog().resolve(model)))


def save_untrained_model(path: PathLike, name: str = "untrained", ngf: int = 4, n_blocks: int = 1,
                         plane: str = "sagittal", image_size: tuple = (32, 32),
                         pixel_spacing_mm: Optional[tuple] = None, seed: int = 0,
                         generators: tuple = ("G_CT", "G_MR"), generator: str = "resnet") -> Path:
    """A valid model file whose generators are randomly initialised (torch's default, seeded), with Yang's windows.

    For self-tests and tests (tiny: fast, deterministic) and for cost benchmarks (a paper-size network costs the same
    trained or not). Its card says it is untrained.
    """
    from .preprocessing import Normalization, normalization_metadata

    from .networks import generator_spec

    torch.manual_seed(seed)
    spec = generator_spec(generator, ngf, n_blocks, "instance")
    norm = Normalization(plane, tuple(image_size), (-1000.0, 3500.0), (0.0, 3500.0), 99.5, 3000.0, False,
                         None if pixel_spacing_mm is None else tuple(pixel_spacing_mm))
    metadata = {"name": name, "description": "untrained: randomly initialised generators", "license": "CC0-1.0",
                "intended_use": "tests, self-tests and cost benchmarks only", "preset": "yang2018",
                "networks": {g: spec for g in generators}, "loss_weights": {}, **normalization_metadata(norm),
                "training": {}, "validation_metrics": {}}
    return save_model(path, metadata, {g: build_network(spec["architecture"], **spec["kwargs"]) for g in generators})
