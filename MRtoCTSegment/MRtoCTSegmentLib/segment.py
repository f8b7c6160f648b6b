"""MR (+ its synthetic CT) -> label map on exactly the MR's grid, slice-wise with a trained U-Net.

Steps (each undone in reverse): the sCT is G_CT(MR) from a synthesis model (or one the caller gives, resampled onto
the MR grid if needed) -> each channel through the segmentation model's normalisation (canonical orientation,
MR scaling / CT window) -> slices along its plane -> in-plane resize/pad to its canvas -> U-Net softmax in batches
-> probabilities cropped and resized back (bilinear) -> argmax. On an axis-aligned MR the canonical grid is a
permutation of the MR's voxels and the argmax is taken there; on an oblique MR each class probability is resampled
(linearly) onto the MR grid before the argmax, so no label is resampled with nearest neighbour twice.

The result names its structures by the model's label table (names, colours, terminology); ``write_outputs`` writes
a NIfTI label map, a Slicer ``.seg.nrrd`` (segment names, colours, terminology), one mask per structure, optional
probability maps and a CSV of structure volumes.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.atomic import write_atomically
from MRtoCTSynthesisLib.claim import claimed
from MRtoCTSynthesisLib.dataset import volume_stem
from MRtoCTSynthesisLib.modelfile import ModelFileError
from MRtoCTSynthesisLib.preprocessing import CT_BACKGROUND_HU
from MRtoCTSynthesisLib.synthesis import SynthesisCancelled, load_bundle, pick_device, run_per_file

from . import data as D
from .labels import LabelTable
from .modelfile import SegModel, load
from .translate import synthesize_ct

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
SegModelLike = Union[str, os.PathLike, SegModel]


class SegmentationCancelled(SynthesisCancelled):
    """The caller's cancel flag was raised; nothing was returned or written."""


@dataclass
class SegmentationResult:
    labels: sitk.Image                                 # uint8 (uint16 for > 255 structures) on the MR's grid
    table: LabelTable
    probabilities: dict = field(default_factory=dict)  # structure name (and "background") -> float32 image
    sct: Optional[sitk.Image] = None                   # the sCT channel used (generated or given)
    model_name: str = ""
    device: str = "cpu"
    seconds: float = 0.0


def _on_grid(image: sitk.Image, reference: sitk.Image, default: float, name: str) -> sitk.Image:
    if V.Geometry.of(image).matches(V.Geometry.of(reference), tol=1e-4):
        return V.Geometry.of(reference).apply_to(sitk.Cast(image, sitk.sitkFloat32))
    log.warning("%s is not on the MR's grid; resampling it onto the MR grid (linear)", name)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear,
                         float(default), sitk.sitkFloat32)


def segment(mr: sitk.Image, model: SegModelLike, synthesis_model=None, sct: Optional[sitk.Image] = None,
            device: str = "auto", batch_size: int = 8, probabilities: bool = False,
            progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
            oblique: str = "resample") -> SegmentationResult:
    """Segment one MR volume; the inputs are never modified.

    ``synthesis_model`` (bundle, file or name) makes the sCT channel with G_CT when the model uses it and no ``sct``
    is given; without either, the model's recorded synthesis model name is tried.
    """
    began = time.time()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    seg = load(model)
    table, norm, channels = seg.table, seg.normalization, seg.channels
    torch_device = pick_device(device)
    report = progress or (lambda fraction, message: None)
    images = {"mr": mr}
    share = 0.0
    if "sct" in channels:
        if sct is not None:
            images["sct"] = _on_grid(sct, mr, CT_BACKGROUND_HU, "the given sCT")
        else:
            recorded = None
            if synthesis_model is None:
                recorded = (seg.metadata.get("synthesis_model") or {}).get("name")
                if not recorded:
                    raise ValueError("this segmentation model needs the synthetic CT: give an sCT or a synthesis "
                                     "model (--synthesis-model)")
                synthesis_model = recorded
            share = 0.5
            try:
                bundle = load_bundle(synthesis_model)
            except ModelFileError as error:
                if recorded is None:
                    raise
                raise ModelFileError(f"the segmentation model was trained with synthesis model {recorded!r}, which "
                                     f"is not installed ({error}); give the synthesis model (--synthesis-model) or "
                                     "the sCT (--sct)") from error
            try:
                images["sct"] = synthesize_ct(mr, bundle, str(torch_device), batch_size,
                                              lambda f, m: report(share * f, f"sCT: {m}"), cancel)
            except SegmentationCancelled:
                raise
            except SynthesisCancelled as error:
                raise SegmentationCancelled("segmentation cancelled") from error
    report(share, "preparing the inputs")
    prepared = D.prepare_channels(images, channels, norm, oblique=oblique)
    net = seg.build(torch_device)
    fit, plane = prepared.fit, norm.plane
    count, (h, w) = len(prepared.slices), prepared.slices.shape[-2:]
    resampled = prepared.reference.reorientation.resampled
    keep_probabilities = probabilities or resampled
    n_classes = table.n_classes
    label_dtype = np.uint8 if n_classes <= 256 else np.uint16
    label_slices = np.zeros((count, h, w), label_dtype)
    prob_slices = np.zeros((n_classes, count, h, w), np.float16) if keep_probabilities else None
    started = time.time()
    for start in range(0, count, batch_size):
        if cancel is not None and cancel():
            raise SegmentationCancelled("segmentation cancelled")
        stop = min(count, start + batch_size)
        with torch.no_grad():
            x = D.fit_images(prepared.slices[start:stop], fit).to(torch_device)
            probs = V.unfit_slices(net(x).float().softmax(dim=1), fit)
            label_slices[start:stop] = probs.argmax(dim=1).cpu().numpy().astype(label_dtype)
            if prob_slices is not None:
                prob_slices[:, start:stop] = probs.transpose(0, 1).cpu().numpy().astype(np.float16)
        done = stop / count
        report(share + (0.9 - share) * done, f"U-Net slices {stop}/{count}, about "
                                             f"{(time.time() - started) / done * (1 - done):.0f} s left")
    report(0.92, "putting the labels on the MR grid")
    canonical_ref = prepared.reference.canonical
    how = prepared.reference.reorientation
    prob_images = {}

    def to_mr_grid(slices: np.ndarray, interpolator: int, default: float) -> sitk.Image:
        image = V.image_like(np.ascontiguousarray(V.slices_to_volume(slices, plane)), canonical_ref)
        return V.from_canonical(image, how, interpolator=interpolator, default_value=default)

    names = ["background"] + table.names
    if resampled:
        best, labels_array = None, None
        for c in range(n_classes):
            p = to_mr_grid(prob_slices[c].astype(np.float32), sitk.sitkLinear, 1.0 if c == 0 else 0.0)
            array = sitk.GetArrayFromImage(p)
            if best is None:
                best, labels_array = array.copy(), np.zeros(array.shape, label_dtype)
            else:
                better = array > best
                best[better], labels_array[better] = array[better], c
            if probabilities:
                prob_images[names[c]] = p
        labels = V.image_like(labels_array, mr)
    else:
        labels = to_mr_grid(label_slices, sitk.sitkNearestNeighbor, 0)
        if probabilities:
            for c in range(n_classes):
                prob_images[names[c]] = to_mr_grid(prob_slices[c].astype(np.float32), sitk.sitkLinear, 0.0)
    V.Geometry.of(mr).apply_to(labels)
    result = SegmentationResult(labels, table, prob_images, images.get("sct"), seg.metadata["name"],
                                str(torch_device), time.time() - began)
    report(1.0, f"done in {result.seconds:.1f} s on {torch_device}")
    return result


# ------------------------------------------------------------------------------------------- writing

def structure_volumes(labels: sitk.Image, table: LabelTable) -> list:
    """[{value, name, voxels, volume_ml}] per structure."""
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=table.n_classes)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    return [{"value": s.value, "name": s.name, "voxels": int(counts[s.value]),
             "volume_ml": round(float(counts[s.value]) * voxel_ml, 3)} for s in table.structures]


def write_seg_nrrd(labels: sitk.Image, table: LabelTable, path: os.PathLike) -> Path:
    """A Slicer segmentation file (``.seg.nrrd``, one layer): segment names, colours (0-1) and terminology from the
    label table, label values as in the label map."""
    image = sitk.Cast(labels, sitk.sitkUInt8 if table.n_classes <= 256 else sitk.sitkUInt16)
    size = image.GetSize()
    extent = " ".join(f"0 {n - 1}" for n in size)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for index, s in enumerate(table.structures):
        key = f"Segment{index}_"
        for name, value in (("ID", s.name), ("Name", s.display_name), ("NameAutoGenerated", "0"),
                            ("Color", " ".join(f"{c:.6g}" for c in s.color_float)), ("ColorAutoGenerated", "0"),
                            ("LabelValue", str(s.value)), ("Layer", "0"), ("Extent", extent),
                            ("Tags", f"TerminologyEntry:{s.terminology_entry()}|")):
            image.SetMetaData(key + name, value)
    write_atomically(Path(path), lambda temp: sitk.WriteImage(image, str(temp), True), suffix=".nrrd")
    return Path(path)


def write_outputs(result: SegmentationResult, out_dir: os.PathLike, stem: str, masks: bool = True,
                  save_sct: bool = False, written: Optional[list] = None) -> list:
    """Write <stem>_seg.nii.gz, <stem>.seg.nrrd, <stem>_volumes.csv, masks <stem>_<structure>.nii.gz, probability
    maps <stem>_prob_<structure>.nii.gz (if computed) and <stem>_sct.nii.gz (if asked); returns the paths (also
    appended to ``written`` as they are written, so a caller can remove a partial set)."""
    out = Path(out_dir)
    written = [] if written is None else written
    written.append(V.write_volume(result.labels, out / f"{stem}_seg.nii.gz"))
    written.append(write_seg_nrrd(result.labels, result.table, out / f"{stem}.seg.nrrd"))
    rows = structure_volumes(result.labels, result.table)

    def write_csv(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    written.append(write_atomically(out / f"{stem}_volumes.csv", write_csv, suffix=".csv"))
    if masks:
        array = sitk.GetArrayViewFromImage(result.labels)
        for s in result.table.structures:
            mask = V.image_like((array == s.value).astype(np.uint8), result.labels)
            written.append(V.write_volume(mask, out / f"{stem}_{s.name}.nii.gz"))
    for name, image in result.probabilities.items():
        if name != "background":
            written.append(V.write_volume(image, out / f"{stem}_prob_{name}.nii.gz"))
    if save_sct and result.sct is not None:
        written.append(V.write_volume(result.sct, out / f"{stem}_sct.nii.gz"))
    return written


@dataclass
class FileResult:
    input: Path
    outputs: list = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0


def segment_files(inputs: Sequence[os.PathLike], out_dir: os.PathLike, model: SegModelLike, synthesis_model=None,
                  sct_inputs: Optional[Sequence[os.PathLike]] = None, device: str = "auto", batch_size: int = 8,
                  probabilities: bool = False, masks: bool = True, save_sct: bool = False,
                  progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> list:
    """Segment many MR files; a failing input is reported in its FileResult (its outputs removed), the rest go on.
    ``out_dir`` is claimed for the whole call (``claim.py``): another run into it is refused at once."""
    seg = load(model)  # once: a bad model fails before any file is touched
    bundle = load_bundle(synthesis_model) if synthesis_model is not None and "sct" in seg.channels else None
    inputs = [Path(p) for p in inputs]
    if sct_inputs is not None and len(sct_inputs) != len(inputs):
        raise ValueError(f"{len(sct_inputs)} sCT volumes given for {len(inputs)} MR volumes; give one per MR")

    def one(index: int, source: Path, file_progress, written: list) -> FileResult:
        sct = V.read_volume(sct_inputs[index]) if sct_inputs is not None else None
        result = segment(V.read_volume(source), seg, bundle, sct, device, batch_size, probabilities, file_progress,
                         cancel)
        write_outputs(result, out_dir, volume_stem(source), masks, save_sct, written)
        return FileResult(source, written)

    with claimed([out_dir]):  # two runs into one folder would replace each other's masks
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        seg.table.write_color_table(Path(out_dir) / f"{seg.table.name}.ctbl")
        return run_per_file(inputs, one, lambda source, error: FileResult(source, [], error), progress)
