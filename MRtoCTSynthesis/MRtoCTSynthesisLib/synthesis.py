"""MR volume -> synthetic CT in HU on exactly the input's grid, slice-wise with a trained generator.

Steps (each undone in reverse): canonical orientation -> MR normalisation recorded in the model file -> slices along
the model's plane -> in-plane resize/pad to the model's canvas -> G_CT in batches on the chosen device -> crop/resize
back -> HU -> back to the input's voxel order and grid. Network work is done in chunks of ``batch_size`` slices, so
memory beyond the float32 input and output volumes is bounded by the chunk.

The optional quality map gives, per voxel, where the sCT deserves least trust:
* ``cycle_residual``: |G_MR(G_CT(MR)) - MR| in the MR window's units (the cycle did not close here);
* ``structure_discrepancy``: mean over the MIND offsets of |F(MR) - F(sCT)| (Yang eq. 8 per voxel, in [0, 1]).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from . import volumes as V
from .acceleration import PRECISIONS, network_gflop, pick_device, prepare, resolve_plan
from .atomic import OutputSet, remove_stale_temporaries
from .claim import claimed
from .dataset import looks_like_ct, volume_stem
from .input_kind import non_mr_kind
from .losses import mind_descriptor
from .memory_estimate import check_fits, estimate, generator_width
from .modelfile import Catalog, ModelBundle, load_model
from .preprocessing import (CT_BACKGROUND_HU, is_thick, normalization_from_metadata, prepare_volume,
                            restore_volume)

log = logging.getLogger(__name__)
ModelLike = Union[str, os.PathLike, ModelBundle]
Progress = Callable[[float, str], None]
QUALITY_MAPS = ("cycle_residual", "structure_discrepancy")
MIN_THICKNESS = 3  # voxels along every axis of an MR to synthesize
VOXEL_MM = (0.01, 50.0)  # voxel sizes a scanner produces, with a wide margin (clinical MR: 0.1-10 mm)


class SynthesisCancelled(RuntimeError):
    """The caller's cancel flag was raised; nothing was returned or written."""


@dataclass
class SynthesisResult:
    sct: sitk.Image                                    # float32 on the input's grid: the sCT in HU (for CT -> MR: the sMR)
    quality: dict = field(default_factory=dict)        # name -> float32 image on the input's grid
    model_name: str = ""
    device: str = "cpu"
    seconds: float = 0.0
    precision: str = "float32"                         # what the network ran in (auto resolved)
    backend: str = ""                                  # e.g. "torch eager, NCHW"
    planes: tuple = ()                                 # the slicing planes whose passes were averaged


@dataclass
class FileResult:
    input: Path
    output: Optional[Path] = None
    error: Optional[str] = None
    seconds: float = 0.0
    extra_outputs: list = field(default_factory=list)
    device: str = ""
    model_name: str = ""
    precision: str = ""
    backend: str = ""


def load_bundle(model: ModelLike) -> ModelBundle:
    """A loaded bundle from a bundle, a file path or a catalog / locally registered model name."""
    if hasattr(model, "metadata") and hasattr(model, "build"):  # a ModelBundle (or a stand-in with its interface)
        return model
    return load_model(Catalog().resolve(model))


GENERATORS = {"mr": ("G_CT", "ct"), "ct": ("G_MR", "mr")}   # source modality -> (generator, target modality)
BACKGROUND = {"ct": CT_BACKGROUND_HU, "mr": 0.0}


def translate(image: sitk.Image, model: ModelLike, source: str = "mr", device: str = "auto",
              batch_size: Optional[int] = None, precision: str = "auto", quality_map: bool = False,
              progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
              oblique: str = "auto") -> SynthesisResult:
    """Translate a whole volume with the model's generator for ``source`` (MR -> CT in HU with G_CT, or CT -> MR in
    the model's MR units with G_MR), slice-wise, on exactly the input's grid; the input is never modified.

    A model trained along several planes (``extra_planes``, issue 21) runs once along each plane whose slices of
    this volume are sharp (``Normalization.planes_for``: all three on a 1 mm MR, the primary alone on a thick-slice
    series) and the result is the voxel-wise mean of the passes: a structure that one plane cuts tangentially (the
    skull vertex in axial slices) is a band across the slices of the others. ``SynthesisResult.planes`` says which ran.
    ``oblique`` says how a tilted volume meets the network (``volumes.to_canonical``): "resample" onto LPS axes,
    "nearest" its own slices, "auto" its own slices if they are thick (``preprocessing.is_thick``: resampling a
    5.5 mm series tilted by 5 degrees blends neighbouring slices into seams across every slice, and a real T1's
    vault closed in 0.92 of the rays with resampling, 0.98 on its own slices) and resampling otherwise.
    ``precision`` is one of ``acceleration.PRECISIONS`` (auto: the fastest correct path of the device) and
    ``batch_size`` None takes the device's rule; the result records the precision and backend that ran.
    The cycle residual uses the reverse generator (a one-way model has none: ``quality_maps_of``) and is in the source
    window's units.
    """
    began = time.time()
    if source not in GENERATORS:
        raise ValueError(f"source must be one of {sorted(GENERATORS)}, not {source!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if oblique not in ("auto", *V.OBLIQUE_MODES):
        raise ValueError(f"oblique must be one of auto, {', '.join(V.OBLIQUE_MODES)}, not {oblique!r}")
    if oblique == "auto":
        oblique = "nearest" if is_thick(image.GetSpacing()) else "resample"
    bundle = load_bundle(model)
    norm = normalization_from_metadata(bundle.metadata)
    torch_device = pick_device(device)
    forward_name, target = GENERATORS[source]
    report = progress or (lambda fraction, message: None)
    report(0.0, f"preparing the {source.upper()}")
    names = quality_maps_of(bundle, source) if quality_map else ()
    forward = bundle.build(forward_name, torch_device)
    backward = bundle.build(GENERATORS[target][0], torch_device) if "cycle_residual" in names else None
    planes = norm.planes_for(V.Geometry.of(image).lps_spacing)
    passes = []
    for number, plane in enumerate(planes):
        label = f" ({plane} pass {number + 1}/{len(planes)})" if len(planes) > 1 else ""
        share = lambda fraction, message, n=number, label=label: report((n + fraction) / len(planes),  # noqa: E731
                                                                          message + label)
        passes.append(_translate_along(image, norm.along(plane), bundle, forward, backward, source, torch_device,
                                       batch_size, precision, names, share, cancel, oblique))
    sct, plan, backend = passes[0]
    if len(passes) > 1:
        report(0.97, f"averaging the {len(planes)} planes")
        sct = {key: _mean_image([p[0][key] for p in passes]) for key in sct}
    result = SynthesisResult(sct.pop("result"), sct, bundle.metadata["name"], str(torch_device), 0.0,
                             plan.precision, backend, planes)
    result.seconds = time.time() - began
    report(1.0, f"done in {result.seconds:.1f} s on {torch_device} ({result.precision}, {result.backend})")
    return result


def _mean_image(images: Sequence[sitk.Image]) -> sitk.Image:
    """The voxel-wise mean of images on one grid (float32)."""
    mean = np.mean([V.array_of(image) for image in images], axis=0, dtype=np.float32)
    return V.image_like(mean, images[0])


def _translate_along(image: sitk.Image, norm, bundle: ModelBundle, forward: torch.nn.Module,
                     backward: Optional[torch.nn.Module], source: str, torch_device: torch.device,
                     batch_size: Optional[int], precision: str, names: Sequence[str], report: Progress,
                     cancel: Optional[Callable[[], bool]], oblique: str) -> tuple[dict, object, str]:
    """One pass of the network along ``norm.plane``: ({"result": translated image, quality map name: image}, the
    acceleration plan, the backend that ran), all on the input's grid."""
    target = GENERATORS[source][1]
    prepared = prepare_volume(image, source, norm, oblique=oblique, progress=lambda message: report(0.02, message))
    fit = V.plan_slice_fit(prepared.slices.shape[1:], prepared.pixel_spacing, norm.image_size, norm.pixel_spacing_mm,
                           multiple=getattr(forward, "size_multiple", 4))   # a grown canvas must suit the generator
    source_window, target_window = norm.window(source), norm.window(target)
    count = prepared.slices.shape[0]
    per_slice = network_gflop(forward, (1, 1, *norm.image_size))
    work = count * per_slice * (2 if names else 1)
    plan = resolve_plan(torch_device, precision, "inference", work, batch_size=batch_size, slice_gflop=per_slice)
    for note in plan.notes:
        log.info(note)
    need = estimate(prepared.slices.shape, fit.canvas_shape, plan.batch_size,
                    generator_width(bundle.metadata["networks"][GENERATORS[source][0]]), len(names))
    check_fits(need, torch_device, fit.canvas_shape, plan.batch_size, norm.pixel_spacing_mm)
    run_forward = prepare(forward, plan)
    run_backward = prepare(backward, plan) if backward is not None else None
    out = np.empty(prepared.slices.shape, np.float32)
    maps = {name: np.empty(prepared.slices.shape, np.float32) for name in names}
    started = time.time()
    for start in range(0, count, plan.batch_size):
        if cancel is not None and cancel():
            raise SynthesisCancelled("synthesis cancelled")
        stop = min(count, start + plan.batch_size)
        x = torch.from_numpy(prepared.slices[start:stop, None]).to(torch_device)
        with torch.no_grad():
            canvas = V.fit_slices(x, fit, pad_value=-1.0)
            fake = run_forward(canvas)
            out[start:stop] = target_window.from_network(V.unfit_slices(fake, fit)[:, 0]).cpu().numpy()
            if run_backward is not None:
                rec = V.unfit_slices(run_backward(fake), fit)
                half_range = (source_window.high - source_window.low) / 2
                maps["cycle_residual"][start:stop] = ((rec - x).abs()[:, 0] * half_range).cpu().numpy()
            if "structure_discrepancy" in maps:
                discrepancy = (mind_descriptor(canvas.float()) - mind_descriptor(fake)).abs().mean(dim=1, keepdim=True)
                maps["structure_discrepancy"][start:stop] = V.unfit_slices(discrepancy, fit)[:, 0].cpu().numpy()
        done = stop / count
        eta = (time.time() - started) / done * (1 - done)
        report(0.05 + 0.85 * done, f"slices {stop}/{count}, about {eta:.0f} s left")
    prepared.slices = None  # the normalised input is no longer needed: free it before the output volume is built
    report(0.95, "writing the result on the input grid")
    images = {"result": restore_volume(out, prepared, norm.plane, BACKGROUND[target]),
              **{name: restore_volume(array, prepared, norm.plane, 0.0) for name, array in maps.items()}}
    return images, plan, run_forward.backend


def synthesize(image: sitk.Image, model: ModelLike, device: str = "auto", batch_size: Optional[int] = None,
               precision: str = "auto", quality_map: bool = False, progress: Optional[Progress] = None,
               cancel: Optional[Callable[[], bool]] = None, oblique: str = "auto",
               mask_background: bool = True, input_is_mr: bool = False) -> SynthesisResult:
    """Synthesize a CT (HU) from one MR volume (``translate`` from MR); the input image is never modified.

    With ``mask_background`` the sCT is air (-1000 HU) outside the MR's body mask dilated by 5 mm: a 2D generator
    can invent tissue in slices that hold only background noise, and nothing outside the body is anatomy.
    The MR is checked first (``check_mr_input``; ``input_is_mr`` accepts an MR that looks like a label map or an
    unrescaled CT).
    """
    check_mr_input(image, input_is_mr)
    result = translate(image, model, "mr", device, batch_size, precision, quality_map, progress, cancel, oblique)
    if mask_background:
        result.sct = air_outside_body(result.sct, image)
    return result


def check_mr_input(image: sitk.Image, input_is_mr: bool = False) -> None:
    """Refuse what would give a meaningless sCT: a slab under MIN_THICKNESS voxels along an axis, a non-positive
    spacing or one outside VOXEL_MM (a 1e-4 mm or 1e5 mm voxel would make the body mask or the canvas ask for
    terabytes), NaN/inf voxels, a CT in HU (values below ``dataset.CT_AIR_BELOW_HU``, the check training uses), and
    unless ``input_is_mr``, a label map or a CT stored without its rescale (``input_kind``)."""
    V.check_image(image, "the MR")
    thin = [(axis, n) for axis, n in zip("ijk", image.GetSize()) if n < MIN_THICKNESS]
    if thin:
        raise V.VolumeError(f"the MR is {' x '.join(map(str, image.GetSize()))} voxels: a slab only "
                            f"{thin[0][1]} voxel(s) thick along {thin[0][0]}; synthesis needs a 3D volume at least "
                            f"{MIN_THICKNESS} voxels in every direction (the body mask and the model's slicing plane "
                            "need context). Give the whole series, not single slices")
    odd = [s for s in image.GetSpacing() if not VOXEL_MM[0] <= s <= VOXEL_MM[1]]
    if odd:
        raise V.VolumeError(f"the MR's voxel size {tuple(round(s, 6) for s in image.GetSpacing())} mm is outside what "
                            f"a scanner produces ({VOXEL_MM[0]:g} to {VOXEL_MM[1]:g} mm): the header's spacing is "
                            "probably damaged or in other units (m, um). Write the true voxel size into the header")
    values = sitk.GetArrayViewFromImage(image)
    if looks_like_ct(values):
        raise V.VolumeError(f"the input has values down to {float(values.min()):g}, like a CT in HU (air near "
                            "-1000), not an MR (magnitudes >= 0); MR-to-CT synthesis needs the MR. Give the MR volume")
    kind = None if input_is_mr else non_mr_kind(values)
    if kind:
        raise V.VolumeError(f"the input looks like {kind}, not an MR; MR-to-CT synthesis needs the MR. Give the MR "
                            "volume, or if this is an MR, run again with --input-is-mr (Python: input_is_mr=True; 3D Slicer: "
                            "tick 'The input is an MR')")


def air_outside_body(sct: sitk.Image, mr: sitk.Image, margin_mm: float = 5.0, mask_spacing_mm: float = 2.0) -> sitk.Image:
    """sCT with -1000 HU outside the MR's body mask (Otsu, largest component, holes filled) dilated by ``margin_mm``.

    The mask is computed on the MR shrunk to about ``mask_spacing_mm`` voxels (a body outline needs no more; never
    by more than an axis' length) and brought to the sCT grid by nearest neighbour, which keeps its memory small for
    large volumes.
    """
    factors = [max(1, min(n, int(mask_spacing_mm // s))) for n, s in zip(mr.GetSize(), mr.GetSpacing())]
    small = sitk.BinShrink(mr, factors) if max(factors) > 1 else mr
    radius = [max(1, int(round(margin_mm / s))) for s in small.GetSpacing()]
    body = sitk.BinaryDilate(V.body_mask(small), radius)
    body = sitk.Resample(body, sct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Mask(sct, body, outsideValue=CT_BACKGROUND_HU)


def quality_maps_of(bundle: ModelBundle, source: str = "mr") -> tuple:
    """The quality maps a model can make: the cycle residual needs the reverse generator (a model trained in one
    direction, like the supervised default, has none), the structure discrepancy needs only the forward one."""
    reverse = GENERATORS[GENERATORS[source][1]][0]
    return QUALITY_MAPS if reverse in bundle.state_dicts else QUALITY_MAPS[1:]


def output_path(out_dir: os.PathLike, source: os.PathLike, suffix: str = "_sct") -> Path:
    return Path(out_dir) / f"{volume_stem(Path(source))}{suffix}.nii.gz"


def planned_outputs(inputs: Sequence[os.PathLike], out_dir: os.PathLike, quality_maps: Sequence[str] = (),
                    dicom_out: Optional[os.PathLike] = None, overwrite: bool = False) -> dict[Path, list[Path]]:
    """Every output of every input, checked before any work (``synthesize_files`` calls it first).

    Refused with a ValueError naming the paths: ``out_dir`` (or ``dicom_out``) that is a file; two inputs that
    would write the same output (e.g. ``a/T1.nii.gz`` and ``b/T1.nrrd``); an output that is an input or holds one;
    an existing, non-empty DICOM series folder unless ``overwrite`` (then it is replaced once the new one is
    complete). Existing NIfTI outputs are replaced (atomically, after the new file is verified).
    """
    from .dicom_export import check_destination

    for folder, flag in ((out_dir, "--out"), (dicom_out, "--dicom-out")):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise ValueError(f"{flag} {folder} is a file; give a folder (new or existing) for the outputs")
    inputs = [Path(p) for p in inputs]
    plan: dict[Path, list[Path]] = {}
    owner: dict[Path, Path] = {}
    for source in inputs:
        outputs = [output_path(out_dir, source)]
        outputs += [output_path(out_dir, source, f"_{name}") for name in quality_maps]
        outputs += [Path(dicom_out) / volume_stem(source)] if dicom_out is not None else []
        for output in outputs:
            key = output.resolve()
            if key in owner and owner[key] != source:
                raise ValueError(f"inputs {owner[key]} and {source} would both write {output}; synthesize them into "
                                 "separate --out folders or rename one")
            owner[key] = source
        plan[source] = outputs
    resolved_inputs = {p.resolve(): p for p in inputs}
    for key, source in owner.items():
        clash = next((p for r, p in resolved_inputs.items() if r == key or key in r.parents or r in key.parents),
                     None)
        if clash is not None:
            raise ValueError(f"the output {key} of {source} would overwrite the input {clash}; choose another --out "
                             "(or --dicom-out) folder")
    if dicom_out is not None:
        for outputs in plan.values():
            check_destination(outputs[-1], overwrite)
    return plan


def synthesize_files(inputs: Sequence[os.PathLike], out_dir: os.PathLike, model: ModelLike, device: str = "auto",
                     quality_map: bool = False, dicom_out: Optional[os.PathLike] = None,
                     progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
                     batch_size: Optional[int] = None, precision: str = "auto",
                     series: Optional[Union[str, int]] = None, overwrite: bool = False,
                     input_is_mr: bool = False, oblique: str = "auto") -> list[FileResult]:
    """Synthesize many MR files; a failing input is reported in its FileResult and the others go on.

    Writes ``<out>/<name>_sct.nii.gz`` (and ``_cycle_residual``/``_structure_discrepancy`` maps, and a DICOM CT series
    in ``<dicom_out>/<name>/``). The outputs are checked first (``planned_outputs``: no collision, no input
    overwritten, no earlier DICOM series replaced without ``overwrite``). Each input's outputs are verified and
    published together, so a failure or an interrupt leaves the earlier results as they were and nothing partial;
    temporaries of killed earlier runs are removed. ``series`` picks the series of DICOM folder inputs; ``oblique``
    is ``synthesize``'s, for every input. The output folders are claimed for the whole call (``claim.py``): another
    run into one of them is refused at once.
    """
    from .dicom_export import write_ct_series

    bundle = load_bundle(model)  # once: a bad model fails the whole call before any file is touched
    folders = [Path(f) for f in (out_dir, dicom_out) if f is not None]
    with claimed(folders):  # a second run into the same folders is refused at once, never interleaved
        plan = planned_outputs(inputs, out_dir, quality_maps_of(bundle) if quality_map else (), dicom_out, overwrite)
        created = [f for f in folders if not f.exists()]
        for folder in folders:
            remove_stale_temporaries(folder)

        def one(index: int, source: Path, file_progress: Progress, written: list) -> FileResult:
            result = synthesize(V.read_volume(source, series if source.is_dir() else None), bundle, device, batch_size,
                                precision, quality_map, file_progress, cancel, oblique, input_is_mr=input_is_mr)
            outputs = OutputSet()
            try:
                V.write_volume(result.sct, plan[source][0], outputs=outputs)
                for name, quality in result.quality.items():
                    V.write_volume(quality, output_path(out_dir, source, f"_{name}"), outputs=outputs)
                if dicom_out is not None:
                    write_ct_series(result.sct, plan[source][-1], reference_dicom=source if source.is_dir() else None,
                                    overwrite=overwrite, outputs=outputs)
                written.extend(outputs.publish())
            except BaseException:
                outputs.discard()
                raise
            return FileResult(source, written[0], None, 0.0, written[1:], result.device, result.model_name,
                              result.precision, result.backend)

        try:
            return run_per_file(inputs, one, lambda source, error: FileResult(source, None, error), progress)
        finally:
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()  # made by this call and left empty (every input failed): do not leave it


def run_per_file(inputs: Sequence[os.PathLike], process: Callable[[int, Path, Progress, list], object],
                 failed: Callable[[Path, str], object], progress: Optional[Progress] = None) -> list:
    """The batch loop of the CLI and the Slicer logic: ``process(index, source, file_progress, written)`` per input.

    ``process`` appends every file or folder it publishes to ``written``. A failing input is logged, its outputs are
    removed and ``failed(source, "Type: message")`` stands in its place, so the others go on; a cancellation or an
    interrupt (Ctrl-C, SIGTERM, any BaseException) removes the outputs of the input in progress and stops the batch.
    Each result's ``seconds`` is set here.
    """
    inputs = [Path(p) for p in inputs]
    report = progress or (lambda fraction, message: None)
    results = []
    for index, source in enumerate(inputs):
        began, written = time.time(), []

        def file_progress(fraction: float, message: str, index: int = index, source: Path = source) -> None:
            report((index + fraction) / len(inputs), f"{source.name}: {message}")

        try:
            result = process(index, source, file_progress, written)
        except Exception as error:  # one bad input must not stop the batch; a cancellation does
            _remove(written)
            if isinstance(error, SynthesisCancelled):
                raise
            log.error("%s: %s", source, error)
            result = failed(source, f"{type(error).__name__}: {error}")
        except BaseException:
            _remove(written)
            raise
        result.seconds = time.time() - began
        results.append(result)
    return results


def _remove(paths: Sequence[Path]) -> None:
    import shutil

    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
