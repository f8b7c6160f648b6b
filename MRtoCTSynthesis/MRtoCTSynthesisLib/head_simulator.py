"""Simulated MR/CT head pairs with randomised MR contrast, for a model that works on any common MR contrast (issue 21).

Domain randomisation (SynthSeg, Billot et al. 2023; SynthSR, Iglesias et al. 2023): the network is trained on pairs
whose anatomy is realistic and whose MR appearance is drawn so widely that a real scan is one more sample.

Anatomy comes from two sources, both deformed at random (affine: scale 0.85-1.15 per axis, rotation up to 12/8/8
degrees, shear; plus a smooth elastic displacement of a few mm):
* real head CTs (read from wherever they are, never copied): the CT itself is the target, with its real HU and
  texture; its tissue label map comes from HU thresholds (``tissue_labels_from_ct``);
* the project's head phantoms (``phantom.make_phantom``), whose label maps hold grey and white matter, CSF and eyes.

The MR is drawn from the label map (``random_mr``): each tissue gets a random mean intensity (cortical bone and air
always dark, as in every MR sequence; the rest uniform, so T1, T2, post-contrast and odd contrasts are all covered),
a smooth within-tissue texture, partial-volume blur, a random slice thickness along a random axis, a bias field,
Rician noise and a gamma change. Labels use the numbering of ``phantom.HEAD_LABELS``.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import volumes as V
from .phantom import HEAD_LABELS, make_phantom

LABEL = {name: number for number, name in HEAD_LABELS.items()}
DARK_TISSUES = ("cortical_bone", "air_cavity")    # no MR signal in any clinical sequence (short T2*, no protons)
CT_AIR_HU = -1024.0
SPACING_MM = 2.0                                  # grid of the simulated pairs (the skull is 4-8 mm thick)

# HU thresholds of ``tissue_labels_from_ct`` (partial volume puts some voxels in the neighbouring class)
BODY_HU, FAT_HU, SOFT_HU, MARROW_HU, CORTICAL_HU = -500.0, -200.0, -30.0, 250.0, 700.0
CSF_HU = 15.0           # intracranial soft tissue below this is CSF ...
SKIN_MM = 2.0           # the outermost shell of the body is skin
IN_PLANE = (1e6, 1.0, 1.0)   # a voxel spacing for ``ball`` that makes it flat along k (axial, in-plane)
# Real head CTs stored upside down: the VTK headsq has no direction of its own, and the one its NIfTI assumed puts
# the neck above the orbits (../shared/data/real/SOURCES.md: "orientation assumed").
UPSIDE_DOWN_CTS = ("head_ct_vtk_headsq.nii.gz",)


def read_head_ct(path: os.PathLike) -> sitk.Image:
    """A real head CT; one named in UPSIDE_DOWN_CTS turned right way up (its slices reversed along the image axis
    nearest superior-inferior, the grid unchanged)."""
    ct = V.read_volume(path)
    if Path(path).name not in UPSIDE_DOWN_CTS:
        return ct
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))               # the image axis (x, y, z) closest to LPS's S axis
    reversed_data = np.flip(sitk.GetArrayFromImage(ct), axis=2 - axis)   # numpy's axes run z, y, x
    return V.image_like(np.ascontiguousarray(reversed_data), ct)          # sitk.Flip would keep it upside down


def tissue_labels_from_ct(ct: sitk.Image) -> sitk.Image:
    """A head tissue label map (``phantom.HEAD_LABELS`` numbering) from a CT in HU, on the CT's grid.

    Body: the CT > -500 HU mask (largest component, closed, holes filled). Inside it by HU: air cavity < -200,
    fat -200..-30, cortical bone > 700, marrow (cancellous bone, diploe) 250..700, soft tissue otherwise. The
    intracranial space is what the skull encloses in each axial slice (bone closed over 6 mm, holes filled, bone
    removed); its soft tissue is CSF below 15 HU, grey matter above the brain's median HU (grey matter is 5-10 HU
    denser than white matter) and white matter below. Eyes are not told apart from soft tissue. Skin: a 2 mm shell.
    """
    canonical, _ = V.to_canonical(ct, default_value=CT_AIR_HU)
    hu = V.array_of(canonical)
    spacing = canonical.GetSpacing()[::-1]                                    # (k, j, i) mm
    body = V.array_of(V.body_mask(canonical, threshold=BODY_HU), np.uint8) > 0
    labels = np.full(hu.shape, LABEL["muscle"], np.uint8)
    labels[hu < SOFT_HU] = LABEL["fat"]
    labels[hu < FAT_HU] = LABEL["air_cavity"]          # below fat: air, or its partial volume with tissue
    bone = hu >= MARROW_HU
    labels[bone] = LABEL["bone_marrow"]
    labels[hu >= CORTICAL_HU] = LABEL["cortical_bone"]
    inside = _intracranial(bone, spacing) & body
    brain = inside & (hu >= CSF_HU) & (hu < MARROW_HU)
    labels[inside & (hu < CSF_HU) & (hu >= FAT_HU)] = LABEL["csf"]
    if brain.any():
        smooth = ndimage.gaussian_filter(hu, 1.0 / np.asarray(spacing))
        grey = smooth > np.median(smooth[brain])
        labels[brain & grey] = LABEL["grey_matter"]
        labels[brain & ~grey] = LABEL["white_matter"]
    shell = body & ~ndimage.binary_erosion(body, ball(SKIN_MM, spacing))
    labels[shell & (labels == LABEL["muscle"])] = LABEL["skin"]
    labels[~body] = 0
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(canonical)
    return image


def _intracranial(bone: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per axial slice: the holes of the closed bone mask (the space a closed skull ring encloses), bone excluded."""
    closed = ndimage.binary_closing(bone, ball(6.0, spacing), border_value=0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in closed])
    inside = filled & ~closed
    return ndimage.binary_opening(inside, ball(2.0, spacing))


def ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """A boolean ball of ``radius_mm`` on a grid of ``spacing`` (k, j, i) mm, at least 3 voxels wide on every axis; a
    huge spacing along an axis makes it flat there (``ball(1, IN_PLANE)``: the in-plane cross, one slice thick)."""
    r = [max(1, int(round(radius_mm / s))) for s in spacing]
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grid, spacing)) <= 1.0


# ------------------------------------------------------------------------------------------------------ geometry
def random_deformation(reference: sitk.Image, rng: np.random.Generator, elastic_mm: float = 4.0) -> sitk.Transform:
    """Affine (scale 0.85-1.15 per axis, rotation up to 12/8/8 degrees about x/y/z, shear up to 0.05) about the
    volume's centre, composed with a smooth B-spline displacement (control points 40 mm apart, sd ``elastic_mm``)."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()])
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    angles = np.radians(rng.uniform(-1, 1, 3) * [12, 8, 8])
    rotation = sitk.Euler3DTransform(centre, *angles).GetMatrix()
    shear = np.eye(3) + rng.uniform(-0.05, 0.05, (3, 3)) * (1 - np.eye(3))
    matrix = np.reshape(rotation, (3, 3)) @ shear @ np.diag(rng.uniform(0.85, 1.15, 3))
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation((rng.uniform(-1, 1, 3) * 5.0).tolist())
    mesh = [max(1, int(round(n * s / 40.0))) for n, s in zip(reference.GetSize(), reference.GetSpacing())]
    elastic = sitk.BSplineTransformInitializer(reference, mesh, 3)
    elastic.SetParameters((rng.standard_normal(len(elastic.GetParameters())) * elastic_mm).tolist())
    return sitk.CompositeTransform([affine, elastic])


def output_grid(image: sitk.Image, spacing_mm: float = SPACING_MM) -> sitk.Image:
    """An empty canonical (LPS) grid of ``spacing_mm`` voxels over the physical extent of ``image``."""
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(image.GetDirection())
    first = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
    grid.SetOrigin((first + np.asarray(image.GetDirection()).reshape(3, 3) @ np.full(3, spacing_mm / 2)).tolist())
    return grid


def _warp(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform, nearest: bool, fill: float) -> sitk.Image:
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, grid, transform, interpolator, fill, image.GetPixelID())


# ---------------------------------------------------------------------------------------------------------- MR
@dataclass(frozen=True)
class Contrast:
    """The drawn MR appearance of one simulated scan (recorded so a sample can be reproduced and described)."""

    means: dict            # tissue name -> mean intensity in [0, 1]
    texture: float         # within-tissue relative sd of the smooth texture
    blur_voxels: tuple     # partial-volume Gaussian sd per axis (k, j, i)
    bias: float            # sd of the log bias field
    noise: float           # Rician noise sd (share of the brightest tissue)
    gamma: float


@dataclass(frozen=True)
class SimulationPrior:
    """What the simulated pairs lean towards; the defaults draw every tissue and every axis alike and keep the
    anatomy's scalp (v1, v2).

    ``axial_thick_share``: the share of thick-slice MRs that are thick along the axial axis (k), as clinical 2D axial
    head series are (5-6 mm slices); the others along another axis (None: any axis alike; v4: 0.67).
    ``bright_fat_share``: the share of contrasts in which fat outshines skin and muscle, as it does in every clinical
    sequence but a fat-suppressed one (T1, T2 and PD fast spin echo, FLAIR); with every tissue drawn alike the
    network cannot tell the fatty scalp from muscle and paints it soft tissue (v4 on real T1s: 12-26% fat 2-6 mm
    under the skin, where the real head CTs have 37-75%).
    ``max_bias``: the largest sd of the log bias field (drawn U(0, max_bias)); 0.35 (v1-v4) scales intensities by up to
    about 2x across the head, less than a real T1's fall-off towards the vertex far from the coil (ReMIND: the scalp
    at the back of the vertex at a tenth of the brain's signal, where v4 left the skull open).
    ``max_extra_scalp_mm``: up to this much fat inserted under the skin (``thicken_scalp``, U(0, max) rounded to the
    grid): the adult scalp is 3-10 mm thick, the two real head CTs' lie at one thickness each, and v7 on real T1s
    put the skull where their bright scalp fat is (ReMIND: 0.51 bone 6-8 mm under the skin, where the MR is fat).
    ``max_csf_mm``: the brain within up to this much of the skull labelled CSF (``add_subarachnoid_csf``, U(0, max)
    rounded to the grid): the CT-derived label maps have almost none there (1-2% of the brain voxels touching the
    skull at 2 mm, the phantoms 92%), so on real anatomy the network never sees a dark layer inside the skull that
    is not bone, and real T1s' skulls came out thick (v7-v9: bone share 8-20 mm under the skin above both real CTs')."""

    axial_thick_share: Optional[float] = None
    bright_fat_share: float = 0.0
    max_bias: float = 0.35
    max_extra_scalp_mm: float = 0.0
    max_csf_mm: float = 0.0


def draw_contrast(rng: np.random.Generator, spacing_mm: float = SPACING_MM,
                  prior: SimulationPrior = SimulationPrior()) -> Contrast:
    """One random MR contrast: tissue means U(0.05, 1) (bone and air U(0, 0.08)); a thick-slice acquisition
    (1-7 mm) half of the time, along an axis drawn by ``prior``; fat brighter than skin and muscle in
    ``prior.bright_fat_share`` of them (its mean then U(the brighter of the two, 1))."""
    means = {name: float(rng.uniform(0.0, 0.08) if name in DARK_TISSUES else rng.uniform(0.05, 1.0))
             for name in HEAD_LABELS.values()}
    blur = rng.uniform(0.3, 0.8, 3)
    if rng.random() < 0.5:
        if prior.axial_thick_share is None:
            axis = rng.integers(3)
        else:
            axis = 0 if rng.random() < prior.axial_thick_share else rng.integers(1, 3)
        blur[axis] = rng.uniform(1.0, 7.0) / spacing_mm / 2.355   # FWHM = slice thickness
    if prior.bright_fat_share and rng.random() < prior.bright_fat_share:
        means["fat"] = float(rng.uniform(max(means["skin"], means["muscle"]), 1.0))
    return Contrast(means, float(rng.uniform(0.0, 0.08)), tuple(float(b) for b in blur),
                    float(rng.uniform(0.0, prior.max_bias)), float(rng.uniform(0.0, 0.05)),
                    float(np.exp(rng.normal(0, 0.25))))


def random_mr(labels: np.ndarray, contrast: Contrast, rng: np.random.Generator) -> np.ndarray:
    """An MR-like (K, J, I) float32 volume in [0, ~1000] drawn from a label map with ``contrast``."""
    means = np.zeros(max(HEAD_LABELS) + 1, np.float32)
    for number, name in HEAD_LABELS.items():
        means[number] = contrast.means[name]
    mr = means[labels] * (1 + contrast.texture * _smooth_field(labels.shape, rng, 4.0))
    mr = ndimage.gaussian_filter(mr, contrast.blur_voxels)
    mr *= np.exp(contrast.bias * _smooth_field(labels.shape, rng, 30.0))
    sigma = contrast.noise * float(means.max())
    mr = np.hypot(mr + sigma * rng.standard_normal(mr.shape), sigma * rng.standard_normal(mr.shape))
    return (1000.0 * np.power(np.maximum(mr, 0) / max(float(mr.max()), 1e-6), contrast.gamma)).astype(np.float32)


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, correlation_voxels: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian random field smoothed over ``correlation_voxels`` (drawn coarse, then zoomed)."""
    step = max(1, int(correlation_voxels))
    coarse = rng.standard_normal([max(2, -(-n // step) + 1) for n in shape]).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 1.0)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)[tuple(slice(n) for n in shape)]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


# ------------------------------------------------------------------------------------------------------ samples
@dataclass
class Anatomy:
    """A source of anatomy: a CT (HU) and its tissue label map on one grid (and, for a phantom, its own T1-like MR)."""

    name: str
    ct: sitk.Image
    labels: sitk.Image
    mr: Optional[sitk.Image] = None

    @classmethod
    def of_ct(cls, path: os.PathLike) -> "Anatomy":
        ct = read_head_ct(path)
        labels = tissue_labels_from_ct(ct)
        canonical, _ = V.to_canonical(ct, default_value=CT_AIR_HU)
        hu = V.array_of(canonical)
        hu[V.array_of(labels, np.uint8) == 0] = CT_AIR_HU     # the table and head holder are not anatomy
        return cls(Path(path).name, V.image_like(hu, canonical), labels)

    @classmethod
    def of_phantom(cls, seed: int) -> "Anatomy":
        phantom = make_phantom("head", seed, (88, 128, 128), (SPACING_MM,) * 3)
        return cls(f"phantom-{seed}", phantom.ct, phantom.labels, phantom.mr)


def simulated_pair(anatomy: Anatomy, rng: np.random.Generator, own_mr: bool = False,
                   prior: SimulationPrior = SimulationPrior()) -> tuple[sitk.Image, sitk.Image, Optional[Contrast]]:
    """(MR, CT in HU, the contrast drawn) on one 2 mm canonical grid: ``anatomy`` deformed at random, the MR drawn
    from its deformed labels (``draw_contrast`` with ``prior``); with ``own_mr`` the anatomy's own MR deformed
    alike instead (contrast None)."""
    grid = output_grid(anatomy.ct)
    transform = random_deformation(grid, rng)
    ct = _warp(anatomy.ct, grid, transform, nearest=False, fill=CT_AIR_HU)
    if own_mr:
        if anatomy.mr is None:
            raise ValueError(f"anatomy {anatomy.name} has no MR of its own")
        return _warp(anatomy.mr, grid, transform, nearest=False, fill=0.0), ct, None
    labels = V.array_of(_warp(anatomy.labels, grid, transform, nearest=True, fill=0), np.uint8)
    contrast = draw_contrast(rng, prior=prior)
    for max_mm, change in ((prior.max_extra_scalp_mm, thicken_scalp), (prior.max_csf_mm, add_subarachnoid_csf)):
        if max_mm > 0:
            labels, hu = change(labels, V.array_of(ct), int(round(rng.uniform(0.0, max_mm) / SPACING_MM)))
            ct = V.image_like(hu, ct)
    mr = V.image_like(random_mr(labels, contrast, rng), ct)
    return mr, ct, contrast


def thicken_scalp(labels: np.ndarray, hu: np.ndarray, voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, HU) with ``voxels`` of fat inserted under the skin in every axial slice: the body grows in-plane by
    ``voxels`` (no lid on a slab's cut faces), its outermost voxel (skin, or its partial volume with air) moves out
    with it (label and HU of the nearest old outermost voxel in the slice), and what lies between becomes fat at the
    anatomy's median fat HU (-100 HU if it has none)."""
    if voxels <= 0:
        return labels, hu
    body = labels > 0
    disk = ball(float(voxels), IN_PLANE)          # one voxel thick along k: in-plane only
    cross = ball(1.0, IN_PLANE)
    grown = ndimage.binary_dilation(body, disk)
    old_rim = body & ~ndimage.binary_erosion(body, cross, border_value=1)
    new_rim = grown & ~ndimage.binary_erosion(grown, cross, border_value=1)
    nearest = ndimage.distance_transform_edt(~old_rim, sampling=(1e3, 1.0, 1.0), return_distances=False,
                                             return_indices=True)
    fat = grown & ~new_rim & (~body | old_rim)
    fat_hu = float(np.median(hu[labels == LABEL["fat"]])) if (labels == LABEL["fat"]).any() else -100.0
    source = tuple(index[new_rim] for index in nearest)
    rim_labels, rim_hu = labels[source], hu[source]
    labels, hu = labels.copy(), hu.copy()
    labels[fat], hu[fat] = LABEL["fat"], fat_hu
    labels[new_rim], hu[new_rim] = rim_labels, rim_hu
    return labels, hu


def add_subarachnoid_csf(labels: np.ndarray, hu: np.ndarray, voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, HU) with the brain (grey and white matter) within ``voxels`` of the skull (cortical bone and marrow)
    labelled CSF where the HU is not bone's; the HU are kept. The subarachnoid space under the inner table (1-4 mm in
    adults) is as dark as bone in a T1 and is in the real CT's HU already, but below its label map's resolution."""
    if voxels <= 0:
        return labels, hu
    brain = np.isin(labels, (LABEL["grey_matter"], LABEL["white_matter"]))
    skull = np.isin(labels, (LABEL["cortical_bone"], LABEL["bone_marrow"]))
    layer = brain & (hu < MARROW_HU) & ndimage.binary_dilation(skull, ball(float(voxels), (1.0, 1.0, 1.0)))
    labels = labels.copy()
    labels[layer] = LABEL["csf"]
    return labels, hu


def anatomy_of_pair(index: int, real_cts: Sequence[Anatomy], seed: int) -> Anatomy:
    """Pair ``index``'s anatomy: even pairs take the real CTs in turn, odd pairs a new phantom (its seed from
    (seed, index)); only phantoms when there is no real CT."""
    if real_cts and index % 2 == 0:
        return real_cts[(index // 2) % len(real_cts)]
    return Anatomy.of_phantom(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def keeps_own_mr(index: int, own_mr_every: int) -> bool:
    """Pair ``index`` (a phantom: odd) keeps the phantom's own T1-like MR when ``own_mr_every`` > 0 and it is every
    ``own_mr_every``-th phantom pair; the others get a random contrast."""
    return own_mr_every > 0 and index % 2 == 1 and (index // 2) % own_mr_every == own_mr_every - 1


def write_simulated_dataset(folder: os.PathLike, real_cts: Sequence[Anatomy], n_pairs: int, seed: int = 0,
                            progress: Optional[Callable[[int, int], None]] = None,
                            own_mr_every: int = 0, jobs: int = 1,
                            prior: SimulationPrior = SimulationPrior()) -> list[Path]:
    """<folder>/{mr,ct}/sim_NNN.nii.gz: ``n_pairs`` simulated pairs (``anatomy_of_pair``; ``keeps_own_mr``;
    ``prior``: ``draw_contrast``); each pair's random state comes from (seed, index), so any pair can be remade
    alone, and ``jobs`` processes make the same files as one. Returns the MR paths."""
    root = Path(folder)
    for sub in ("mr", "ct"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    task = (root, list(real_cts), seed, own_mr_every, prior)
    if jobs <= 1:
        made = (_write_pair(task, index) for index in range(n_pairs))
    else:   # each worker receives the anatomy once, at its start
        pool = ProcessPoolExecutor(jobs, initializer=_WORKER.__setitem__, initargs=("task", task))
        made = pool.map(_write_pair_in_worker, range(n_pairs))
    written = []
    try:
        for path in made:
            written.append(path)
            if progress:
                progress(len(written), n_pairs)
    finally:
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    return written


_WORKER: dict = {}   # in a worker process: its task (folder, real anatomy, seed, own_mr_every, prior)


def _write_pair_in_worker(index: int) -> Path:
    return _write_pair(_WORKER["task"], index)


def _write_pair(task: tuple, index: int) -> Path:
    root, real_cts, seed, own_mr_every, prior = task
    anatomy = anatomy_of_pair(index, real_cts, seed)
    mr, ct, _ = simulated_pair(anatomy, np.random.default_rng([seed, index]), keeps_own_mr(index, own_mr_every),
                               prior)
    name = f"sim_{index:03d}.nii.gz"
    V.write_volume(ct, root / "ct" / name)
    V.write_volume(mr, root / "mr" / name)
    return root / "mr" / name
