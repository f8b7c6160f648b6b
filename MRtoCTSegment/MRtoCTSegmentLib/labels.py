"""Label tables: the structures a segmentation model outputs, with names, colours and standard terminology codes.

A table is a JSON file (``Resources/Labels/<name>.json``; schema in ``LabelTable.from_json``), so other anatomies
need only a new file. Each structure has

* ``value``: its voxel value in label maps (1..n, contiguous; 0 is always background),
* ``name`` (an identifier: lower case, digits, underscores) and a ``display_name``,
* ``color``: **RGB in 0-255 integers** (Slicer's ``recommendedDisplayRGBValue`` convention; ``color_float`` gives 0-1),
* DICOM segmentation terminology: ``category`` (CID 7150 Segmentation Property Category) and ``type`` (CID 7151
  Segmentation Property Type), each ``{"CodingSchemeDesignator", "CodeValue", "CodeMeaning"}``, and where each
  code was checked (``code_source``; ``"unverified"`` marks a code nobody has checked against a reference).

A table may also carry a ``source_mapping`` from finer source labels (e.g. the digital phantom's ``cortical_bone`` +
``femur_marrow``) to its structures:

* ``direct``: source label name -> structure name;
* ``nearest``: source label name -> list of source label names; each voxel of the first takes the structure of the
  *nearest* voxel (Euclidean distance in mm) of any listed label. This gives a bone's cortex to the bone whose
  marrow it surrounds (femur = femur_marrow + the cortical shell around it), also where two bones' cortices touch;
  it is the limit of growing each marrow region by dilation until the cortex is used up;
* ``ignore``: source labels that become background.

Every source label must be mapped, ignored or named in ``nearest``, so no voxel is silently dropped.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]
FORMAT = "mrtoct-label-table"
FORMAT_VERSION = 1
LABELS_ENV = "MRTOCT_LABELS_DIR"
_PACKAGE = Path(__file__).resolve().parent
SEARCH_DIRS = (_PACKAGE / "Resources" / "Labels", _PACKAGE.parent / "Resources" / "Labels")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CODE_KEYS = ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")


class LabelTableError(ValueError):
    """A label table (or a mapping of source labels through it) is invalid; the message says where and why."""


@dataclass(frozen=True)
class Code:
    """One coded concept (DICOM code sequence item): scheme (e.g. "SCT" for SNOMED CT), value and meaning."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def from_json(cls, record: Any, where: str) -> "Code":
        if not isinstance(record, dict) or any(not isinstance(record.get(k), str) or not record[k].strip()
                                               for k in CODE_KEYS):
            raise LabelTableError(f"{where} must be an object with non-empty strings {CODE_KEYS}, got {record!r}")
        return cls(record["CodingSchemeDesignator"], record["CodeValue"], record["CodeMeaning"])

    def to_json(self) -> dict:
        return {"CodingSchemeDesignator": self.scheme, "CodeValue": self.value, "CodeMeaning": self.meaning}

    def triplet(self) -> str:
        """Slicer terminology-entry form ``scheme^value^meaning``."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class Structure:
    value: int
    name: str
    display_name: str
    color: tuple                      # (r, g, b) integers 0-255
    category: Code
    type: Code
    code_source: str = "unverified"
    description: str = ""

    @property
    def color_float(self) -> tuple:
        """(r, g, b) in 0-1 (Slicer segment colours, matplotlib)."""
        return tuple(c / 255.0 for c in self.color)

    @property
    def code_verified(self) -> bool:
        return self.code_source.strip().lower() != "unverified"

    def terminology_entry(self) -> str:
        """Slicer's segment ``TerminologyEntry`` tag: category and type from the DICOM master list, no modifiers."""
        return (f"Segmentation category and type - DICOM master list~{self.category.triplet()}~{self.type.triplet()}"
                "~^^~Anatomic codes - DICOM master list~^^~^^")

    def to_json(self) -> dict:
        return {"value": self.value, "name": self.name, "display_name": self.display_name, "color": list(self.color),
                "category": self.category.to_json(), "type": self.type.to_json(), "code_source": self.code_source,
                "description": self.description}


@dataclass
class LabelTable:
    """Structures 1..n of one anatomy (0 = background) and an optional mapping from finer source labels."""

    name: str
    structures: list
    description: str = ""
    source_mapping: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------- reading, writing

    @classmethod
    def from_json(cls, record: Any, where: str = "label table") -> "LabelTable":
        """Validate and build a table from its JSON object.

        {"format": "mrtoct-label-table", "format_version": 1, "name": str, "description": str,
         "color_scale": "0-255",
         "structures": [{"value": int >= 1, "name": identifier, "display_name": str, "color": [r, g, b] (0-255),
                         "category": code, "type": code, "code_source": str, "description": str}, ...],
         "source_mapping": {"kind": str, "direct": {src: structure}, "nearest": {src: [src, ...]},
                            "ignore": [src, ...]}  (optional)}
        """
        if not isinstance(record, dict):
            raise LabelTableError(f"{where} must be a JSON object, got {type(record).__name__}")
        if record.get("format", FORMAT) != FORMAT:
            raise LabelTableError(f"{where}: 'format' is {record.get('format')!r}, expected {FORMAT!r}")
        version = record.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise LabelTableError(f"{where}: format_version {version!r} is not supported (this engine reads "
                                  f"{FORMAT_VERSION})")
        if record.get("color_scale", "0-255") != "0-255":
            raise LabelTableError(f"{where}: 'color_scale' must be '0-255' (colours are 0-255 integers)")
        name = record.get("name")
        if not isinstance(name, str) or not name.strip():
            raise LabelTableError(f"{where}: 'name' must be a non-empty string")
        items = record.get("structures")
        if not isinstance(items, list) or not items:
            raise LabelTableError(f"{where}: 'structures' must be a non-empty list")
        structures = [_structure(item, f"{where}: structures[{i}]") for i, item in enumerate(items)]
        values = sorted(s.value for s in structures)
        if values != list(range(1, len(structures) + 1)):
            raise LabelTableError(f"{where}: structure values must be 1..{len(structures)} without gaps or repeats, "
                                  f"got {values}")
        names = [s.name for s in structures]
        if len(set(names)) != len(names) or "background" in names:
            raise LabelTableError(f"{where}: structure names must be unique and not 'background', got {names}")
        structures.sort(key=lambda s: s.value)
        mapping = record.get("source_mapping")
        table = cls(name, structures, str(record.get("description", "")), None,
                    {k: v for k, v in record.items() if k not in _KNOWN_KEYS})
        if mapping is not None:
            table.source_mapping = _check_mapping(mapping, set(names), f"{where}: source_mapping")
        return table

    def to_json(self) -> dict:
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
                  "description": self.description, "color_scale": "0-255",
                  "structures": [s.to_json() for s in self.structures]}
        if self.source_mapping is not None:
            record["source_mapping"] = self.source_mapping
        record.update(self.extra)
        return record

    def save(self, path: PathLike) -> Path:
        from MRtoCTSynthesisLib.atomic import write_atomically

        text = json.dumps(self.to_json(), indent=1) + "\n"
        return write_atomically(Path(path), lambda temp: temp.write_text(text, encoding="utf-8"))

    # ------------------------------------------------------------------------------------------- queries

    @property
    def n_classes(self) -> int:
        """Network outputs: background + one per structure."""
        return len(self.structures) + 1

    @property
    def names(self) -> list:
        return [s.name for s in self.structures]

    def by_name(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise LabelTableError(f"label table {self.name!r} has no structure {name!r}; it has {self.names}")

    def by_value(self, value: int) -> Structure:
        if not 1 <= int(value) <= len(self.structures):
            raise LabelTableError(f"label table {self.name!r} has no structure with value {value}")
        return self.structures[int(value) - 1]

    def check_label_values(self, array: np.ndarray, where: str = "label map") -> None:
        """Refuse a label map holding values outside 0..n (e.g. unmapped phantom labels)."""
        present = np.unique(array)
        bad = [int(v) for v in present if not 0 <= v <= len(self.structures)]
        if bad:
            raise LabelTableError(f"{where} holds values {bad} that label table {self.name!r} does not define "
                                  f"(0..{len(self.structures)}); map source labels first (source_names / labels.json)")

    def write_color_table(self, path: PathLike) -> Path:
        """Slicer/3D Slicer colour-table text file (``.ctbl``: ``value name r g b a``) so label maps open named."""
        from MRtoCTSynthesisLib.atomic import write_atomically

        lines = ["# Color table written by MRtoCTSegment: value name r g b a (0-255)", "0 background 0 0 0 0"]
        lines += [f"{s.value} {s.name} {s.color[0]} {s.color[1]} {s.color[2]} 255" for s in self.structures]
        text = "\n".join(lines) + "\n"
        return write_atomically(Path(path), lambda temp: temp.write_text(text, encoding="utf-8"), suffix=".ctbl")

    # ------------------------------------------------------------------------------------------- source labels

    def map_source_labels(self, labels: np.ndarray, source_names: Mapping[int, str],
                          spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Source label map (array, any integer type) -> this table's values (uint8/uint16), via ``source_mapping``.

        ``source_names`` maps source values to names (0 is background and need not be listed); ``spacing`` is the
        voxel size per array axis (mm), used by ``nearest`` assignments. The input is not modified.
        """
        if self.source_mapping is None:
            raise LabelTableError(f"label table {self.name!r} has no source_mapping; its label maps must already "
                                  "hold the table's values")
        mapping = self.source_mapping
        names = {int(k): str(v) for k, v in source_names.items() if int(k) != 0}
        known = set(mapping["direct"]) | set(mapping["nearest"]) | set(mapping["ignore"])
        unknown = sorted(set(names.values()) - known)
        if unknown:
            raise LabelTableError(f"source labels {unknown} are not mapped by label table {self.name!r} "
                                  f"(it maps {sorted(known)}); extend its source_mapping")
        labels = np.asarray(labels)
        present = set(np.unique(labels).tolist()) - {0}
        undeclared = sorted(v for v in present if v not in names)
        if undeclared:
            raise LabelTableError(f"label map holds values {undeclared} that the source label names do not list")
        dtype = np.uint8 if len(self.structures) < 256 else np.uint16
        lut = np.zeros(max([int(labels.max()) if labels.size else 0, *names]) + 1, dtype)
        value_of = {s.name: s.value for s in self.structures}
        for value, name in names.items():
            if name in mapping["direct"]:
                lut[value] = value_of[mapping["direct"][name]]
        out = lut[labels]
        id_of = {name: value for value, name in names.items()}
        for name, sources in mapping["nearest"].items():
            if name not in id_of:
                continue
            region = labels == id_of[name]
            if not region.any():
                continue
            seeds = np.isin(labels, [id_of[s] for s in sources if s in id_of])
            if not seeds.any():
                raise LabelTableError(f"source label {name!r} must take the structure of the nearest of {sources}, "
                                      "but none of them is present in this label map")
            from scipy.ndimage import distance_transform_edt

            _, index = distance_transform_edt(~seeds, sampling=tuple(float(s) for s in spacing), return_indices=True)
            out[region] = out[tuple(i[region] for i in index)]
        return out

    def map_image(self, image, source_names: Mapping[int, str]):
        """SimpleITK label image -> a new uint8 image of this table's values on the same grid."""
        import SimpleITK as sitk

        array = sitk.GetArrayViewFromImage(image)
        mapped = self.map_source_labels(array, source_names, image.GetSpacing()[::-1])
        out = sitk.GetImageFromArray(mapped)
        out.CopyInformation(image)
        return out


_KNOWN_KEYS = {"format", "format_version", "name", "description", "color_scale", "structures", "source_mapping"}


def _structure(item: Any, where: str) -> Structure:
    if not isinstance(item, dict):
        raise LabelTableError(f"{where} must be an object")
    value, name = item.get("value"), item.get("name")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LabelTableError(f"{where}: 'value' must be an integer >= 1, got {value!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise LabelTableError(f"{where}: 'name' must be an identifier (lower case letters, digits, _), got {name!r}")
    color = item.get("color")
    if (not isinstance(color, list) or len(color) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
        raise LabelTableError(f"{where} ({name}): 'color' must be [r, g, b] integers in 0-255, got {color!r}")
    source = item.get("code_source", "unverified")
    if not isinstance(source, str) or not source.strip():
        raise LabelTableError(f"{where} ({name}): 'code_source' must say where the codes were checked or "
                              "'unverified'")
    return Structure(value, name, str(item.get("display_name") or name.replace("_", " ")), tuple(color),
                     Code.from_json(item.get("category"), f"{where} ({name}).category"),
                     Code.from_json(item.get("type"), f"{where} ({name}).type"), source,
                     str(item.get("description", "")))


def _check_mapping(mapping: Any, structure_names: set, where: str) -> dict:
    if not isinstance(mapping, dict):
        raise LabelTableError(f"{where} must be an object")
    direct = mapping.get("direct", {})
    nearest = mapping.get("nearest", {})
    ignore = mapping.get("ignore", [])
    if not isinstance(direct, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in direct.items()):
        raise LabelTableError(f"{where}.direct must map source label names to structure names")
    bad = sorted(set(direct.values()) - structure_names)
    if bad:
        raise LabelTableError(f"{where}.direct maps to unknown structures {bad}")
    if not isinstance(nearest, dict) or not all(isinstance(k, str) and isinstance(v, list) and v
                                                and all(isinstance(s, str) for s in v) for k, v in nearest.items()):
        raise LabelTableError(f"{where}.nearest must map source label names to non-empty lists of source labels")
    for name, sources in nearest.items():
        missing = [s for s in sources if s not in direct]
        if missing or name in direct:
            raise LabelTableError(f"{where}.nearest[{name!r}]: its sources must be mapped directly (not {missing}) "
                                  "and it must not be mapped directly itself")
    if not isinstance(ignore, list) or not all(isinstance(s, str) for s in ignore):
        raise LabelTableError(f"{where}.ignore must be a list of source label names")
    overlap = (set(direct) | set(nearest)) & set(ignore)
    if overlap:
        raise LabelTableError(f"{where}: labels {sorted(overlap)} are both mapped and ignored")
    return {"kind": str(mapping.get("kind", "")), "direct": dict(direct), "nearest": dict(nearest),
            "ignore": list(ignore), **{k: v for k, v in mapping.items() if k not in ("kind", "direct", "nearest",
                                                                                       "ignore")}}


# ----------------------------------------------------------------------------------------------- finding tables


def table_path(name: str) -> Path:
    """Path of the built-in table ``name`` (``head``, ``pelvis``): $MRTOCT_LABELS_DIR, then the Resources/Labels
    folder inside or beside the package."""
    dirs = ([Path(os.environ[LABELS_ENV])] if os.environ.get(LABELS_ENV) else []) + list(SEARCH_DIRS)
    for folder in dirs:
        candidate = folder / f"{name}.json"
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for folder in dirs if folder.is_dir() for p in folder.glob("*.json")})
    raise LabelTableError(f"no label table named {name!r}; built-in tables: {available} (or give a JSON file path)")


def load_label_table(table: Union[str, PathLike, dict, LabelTable]) -> LabelTable:
    """A table from a LabelTable, a JSON object, a ``.json`` path or a built-in name (``head``, ``pelvis``)."""
    if isinstance(table, LabelTable):
        return table
    if isinstance(table, dict):
        return LabelTable.from_json(table)
    path = Path(table)
    if not path.suffix.lower() == ".json" and not path.exists():
        path = table_path(str(table))
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise LabelTableError(f"label table file not found: {path}") from error
    except json.JSONDecodeError as error:
        raise LabelTableError(f"{path} is not valid JSON: {error}") from error
    return LabelTable.from_json(record, str(path))


def read_source_names(path: PathLike) -> dict:
    """A ``labels.json`` (source label value -> name, as written by the phantom generator) as {int: str}."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise LabelTableError(f"cannot read source label names from {path}: {error}") from error
    if not isinstance(record, dict):
        raise LabelTableError(f"{path} must map label values to names")
    try:
        return {int(k): str(v) for k, v in record.items()}
    except ValueError as error:
        raise LabelTableError(f"{path}: keys must be integer label values ({error})") from error
