"""Reference-free checks of a head sCT, for real MRs that have no CT of the same patient (issue 21).

* Skull completeness over the vault: from a point in the brain, rays go outward and upward; the share of them that
  cross bone (sCT > 250 HU) before they leave the head. The point: 55 mm below the top of the head (about the
  brain's centre in an adult), at the head's centroid in that axial slice. The rays: azimuth every 15 degrees,
  elevation 10 to 80 degrees every 10 (all above the centre: the cranial vault, above the orbits), each weighted by
  cos(elevation) (its share of the solid angle). A ray that leaves the scanned volume before the head (a slab that
  cuts the head) is not counted: the scanned volume is the scan's own box (``scanned_region``), which an oblique or
  tilted scan does not fill on the check's axis-aligned grid. A closed vault gives 1; a real CT gives the upper
  bound. The head mask fills holes in all three planes (``volumes.fill_holes_in_every_plane``): the dark skull
  at the vertex of a T1 is inside the head.
* HU histogram in the head: the shares of air (< -400 HU), fat (-400 to -30), soft tissue (-30 to 250) and bone
  (>= 250) inside the head mask, and their total-variation distance to those of real head CTs: to their whole heads,
  and level-matched (``level_matched_shares``): a slab through the brain has less fat and air than a head with its
  face and neck, so each real CT is first aligned to the MR along the head's axis by the head's cross-section
  (area per 2 mm axial level), and the reference is the real CTs' shares at the MR's levels, weighted as the MR's
  head is spread over them.
* Bone in the brain: the share of voxels above 250 HU in the upper half of a 40 mm ball about the same centre (all
  brain in an adult head): a real CT has almost none. It catches what the vault check cannot, an sCT that paints
  bone everywhere (dark CSF mapped to bone, say).
* Where the classes sit: the same shares in shells by depth under the head's surface (``shares_by_depth``): a real
  head CT has mostly fat 2-8 mm down (the scalp) and bone below it; an sCT with the right overall shares can still
  have them in the wrong places.
* MI(MR, sCT) in the head (``metrics.mutual_information``).

Everything is computed on the canonical (LPS) volume resampled to 2 mm voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_erosion, distance_transform_edt

from . import volumes as V
from .head_simulator import IN_PLANE, ball, output_grid
from .metrics import mutual_information

GRID_MM = 2.0
BONE_HU = 250.0
CENTRE_BELOW_TOP_MM = 55.0
BRAIN_BALL_MM = 40.0
AZIMUTHS = np.radians(np.arange(0, 360, 15))
ELEVATIONS = np.radians(np.arange(10, 81, 10))
STEP_MM = 0.5
DEPTH_SHELLS_MM = (0, 2, 4, 6, 8, 12, 20, 40)   # shell edges under the head's surface
HU_CLASSES = (("air", -np.inf, -400.0), ("fat", -400.0, -30.0), ("soft tissue", -30.0, BONE_HU),
              ("bone", BONE_HU, np.inf))
MIN_OVERLAP_MM = 60.0        # a real CT is aligned to a head over at least this much of its height ...
MAX_AREA_MISMATCH = 0.15     # ... and is its reference only if their cross-sections agree within this (median)
LEVEL_AREA_MISMATCH = 0.2    # ... and only at the levels where they agree within this (a tilted CT's cut levels)
CUT_LEVEL_SHARE = 0.02       # a level whose head has more of its area on the scanned box's edge is cut, not counted


@dataclass
class Levels:
    """A head volume per 2 mm axial level (k): the head's area in voxels (NaN where the scanned box cuts the head's
    cross-section: a slab's end, a tilted scan's corner) and the HU class counts in the head (K, len(HU_CLASSES))."""

    area: np.ndarray
    counts: np.ndarray


@dataclass
class Rays:
    """The rays of a skull-completeness check: direction (unit, array axes k, j, i), weight, hit (bone crossed),
    counted (left the head inside the scanned volume) and the 2 mm voxel where each stopped."""

    centre: np.ndarray
    directions: np.ndarray
    weights: np.ndarray
    hit: np.ndarray
    counted: np.ndarray
    ends: np.ndarray

    @property
    def completeness(self) -> float:
        """Weighted share of counted rays that hit bone; NaN if fewer than 20 rays could be counted."""
        if self.counted.sum() < 20:
            return float("nan")
        w = self.weights * self.counted
        return float((w * self.hit).sum() / w.sum())


@dataclass
class HeadCheck:
    """The checks of one volume, with the 2 mm arrays they were computed on (for the figure)."""

    completeness: float
    rays_counted: int
    brain_bone: float
    hu_shares: dict
    mi_mr_sct: Optional[float]
    depth_shares: dict
    levels: Levels = field(repr=False)
    rays: Rays = field(repr=False)
    hu: np.ndarray = field(repr=False)
    mr: Optional[np.ndarray] = field(default=None, repr=False)

    def summary(self, reference_shares: Optional[dict] = None, real_cts: Optional[dict] = None) -> dict:
        """JSON-ready numbers; with ``reference_shares``, the histogram distance to them; with ``real_cts`` (name ->
        HeadCheck), the level-matched distance and how each CT was aligned."""
        rounded = lambda shares: {k: round(v, 4) for k, v in shares.items()}  # noqa: E731
        out = {"skull_completeness": round(self.completeness, 3), "rays_counted": self.rays_counted,
               "brain_bone_share": round(self.brain_bone, 4), "hu_shares": rounded(self.hu_shares),
               "shares_by_depth_mm": {shell: rounded(shares) for shell, shares in self.depth_shares.items()}}
        if self.mi_mr_sct is not None:
            out["mi_mr_sct"] = round(float(self.mi_mr_sct), 4)
        if reference_shares is not None:
            out["hu_histogram_distance"] = round(histogram_distance(self.hu_shares, reference_shares), 4)
        if real_cts:
            matched = level_matched_shares(self.levels, {name: ct.levels for name, ct in real_cts.items()})
            out["level_matched"] = matched.summary()
            if matched.reference is not None:
                out["hu_histogram_distance_level_matched"] = round(
                    histogram_distance(matched.shares, matched.reference), 4)
        return out


def on_check_grid(image: sitk.Image, fill: float, nearest: bool = False) -> np.ndarray:
    """(K, J, I) array of ``image`` in canonical LPS orientation with 2 mm voxels."""
    canonical, _ = V.to_canonical(image, default_value=fill)
    grid = output_grid(canonical, GRID_MM)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return V.array_of(sitk.Resample(canonical, grid, sitk.Transform(), interpolator, fill, sitk.sitkFloat32))


def scanned_region(image: sitk.Image) -> np.ndarray:
    """Voxels of the check grid inside the scan's own box, less one voxel (2 mm) at its faces, where the
    resampled intensities already mix in the fill value."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return binary_erosion(on_check_grid(ones, 0.0, nearest=True) > 0.5)


def head_mask(mr_or_ct: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    """The head (``volumes.body_mask``): Otsu (or ``threshold``) foreground, largest component, closed, holes
    filled in all three planes."""
    image = sitk.GetImageFromArray(mr_or_ct)
    image.SetSpacing((GRID_MM,) * 3)
    return V.array_of(V.body_mask(image, threshold=threshold), np.uint8) > 0


def brain_centre(head: np.ndarray) -> np.ndarray:
    """(k, j, i): 55 mm below the highest axial slice of the head, at the head's centroid in that slice."""
    rows = np.flatnonzero(head.reshape(head.shape[0], -1).sum(axis=1) >= 20)
    if rows.size == 0:
        raise ValueError("no head found in the volume")
    k = int(max(rows[0], rows[-1] - round(CENTRE_BELOW_TOP_MM / GRID_MM)))
    j, i = np.argwhere(head[k]).mean(axis=0)
    return np.array([k, j, i], float)


def cast_rays(head: np.ndarray, sct: np.ndarray, centre: np.ndarray, scanned: np.ndarray) -> Rays:
    """March every ray from ``centre`` in STEP_MM steps until it leaves the head (or the volume); a ray counts
    if it left the head inside ``scanned`` (through the scalp, not through the edge of the scan)."""
    el, az = np.meshgrid(ELEVATIONS, AZIMUTHS, indexing="ij")
    el, az = el.ravel(), az.ravel()
    # canonical LPS arrays: axis k runs superior, j posterior, i left
    directions = np.stack([np.sin(el), np.cos(el) * np.cos(az), np.cos(el) * np.sin(az)], axis=1)
    steps = np.arange(1, int(400 / STEP_MM)) * (STEP_MM / GRID_MM)
    points = centre[None, None, :] + directions[:, None, :] * steps[None, :, None]      # (rays, steps, 3)
    index = np.rint(points).astype(int)
    inside_volume = np.all((index >= 0) & (index < np.array(head.shape)), axis=2)
    clipped = np.clip(index, 0, np.array(head.shape) - 1)
    in_head = head[tuple(clipped.T)].T & inside_volume
    bone = (sct[tuple(clipped.T)].T >= BONE_HU) & in_head
    out_of_head = ~in_head
    leave = np.where(out_of_head.any(axis=1), out_of_head.argmax(axis=1), steps.size - 1)
    ends = clipped[np.arange(len(leave)), leave]
    counted = inside_volume[np.arange(len(leave)), leave] & scanned[tuple(ends.T)]   # through the scalp
    hit = np.array([bone[r, :leave[r]].any() for r in range(len(leave))])
    return Rays(centre, directions, np.cos(el), hit, counted, ends)


def brain_bone_share(hu: np.ndarray, centre: np.ndarray) -> float:
    """Share of voxels >= 250 HU in the upper half of the BRAIN_BALL_MM ball about ``centre`` (inside the volume)."""
    k, j, i = np.ogrid[tuple(slice(0, n) for n in hu.shape)]
    distance = np.sqrt((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) * GRID_MM
    upper_half = (distance <= BRAIN_BALL_MM) & (k >= centre[0])
    return float((hu[upper_half] >= BONE_HU).mean())


def hu_shares(hu: np.ndarray, mask: np.ndarray) -> dict:
    values = hu[mask]
    return {name: float(((values >= lo) & (values < hi)).mean()) for name, lo, hi in HU_CLASSES}


def shares_by_depth(hu: np.ndarray, head: np.ndarray, scanned: np.ndarray) -> dict:
    """``hu_shares`` in each shell of DEPTH_SHELLS_MM under the skin ("lo-hi" -> shares): depth is the distance to
    the nearest voxel outside ``head`` but inside ``scanned`` (where a slab cuts the head there is no skin)."""
    depth = distance_transform_edt(head | ~scanned) * GRID_MM
    return {f"{lo}-{hi}": hu_shares(hu, head & (depth > lo) & (depth <= hi))
            for lo, hi in zip(DEPTH_SHELLS_MM, DEPTH_SHELLS_MM[1:])}


def levels_of(hu: np.ndarray, head: np.ndarray, scanned: np.ndarray) -> Levels:
    """``Levels`` of a volume on the check grid (k runs superior)."""
    inside = head & scanned
    area = inside.reshape(len(hu), -1).sum(axis=1).astype(float)
    edge = inside & ~binary_erosion(scanned, ball(1.0, IN_PLANE), border_value=0)
    on_edge = edge.reshape(len(hu), -1).sum(axis=1)
    area[(on_edge > CUT_LEVEL_SHARE * area) | (area == 0)] = np.nan
    counts = np.stack([(inside & (hu >= lo) & (hu < hi)).reshape(len(hu), -1).sum(axis=1)
                       for _, lo, hi in HU_CLASSES], axis=1).astype(float)
    return Levels(area, counts)


def align_levels(head: Levels, ct: Levels) -> Optional[tuple[int, float]]:
    """(shift, mismatch): the CT level ``k + shift`` that matches the head's level k, chosen to minimise the median of
    |area_ct - area_head| / area_head over the levels both have (at least MIN_OVERLAP_MM of the head's, or all of
    them); None if no shift overlaps enough."""
    needed = min(int(np.sum(np.nan_to_num(head.area) > 0)), int(round(MIN_OVERLAP_MM / GRID_MM)))
    best = None
    for shift in range(-len(head.area), len(ct.area)):
        levels, target = _paired_levels(head, ct, shift)
        if needed == 0 or len(levels) < needed:
            continue
        mismatch = float(np.median(_relative_mismatch(head, ct, levels, target)))
        if best is None or mismatch < best[1]:
            best = (shift, mismatch)
    return best


def _paired_levels(head: Levels, ct: Levels, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(head's levels, CT's levels ``+ shift``) that both have: a head there and a cross-section not cut."""
    levels = np.flatnonzero(np.nan_to_num(head.area) > 0)
    target = levels + shift
    inside = (target >= 0) & (target < len(ct.area))
    inside[inside] &= ~np.isnan(ct.area[target[inside]])
    return levels[inside], target[inside]


def _relative_mismatch(head: Levels, ct: Levels, levels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|area_ct - area_head| / area_head at paired levels."""
    return np.abs(ct.area[target] - head.area[levels]) / head.area[levels]


def is_used(alignment: Optional[tuple[int, float]]) -> bool:
    """Whether an ``align_levels`` result makes its CT a reference (median mismatch <= MAX_AREA_MISMATCH)."""
    return alignment is not None and alignment[1] <= MAX_AREA_MISMATCH


def agreeing_levels(head: Levels, ct: Levels, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(head's levels, CT's levels ``+ shift``) where the two cross-sections agree within LEVEL_AREA_MISMATCH."""
    levels, target = _paired_levels(head, ct, shift)
    agree = _relative_mismatch(head, ct, levels, target) <= LEVEL_AREA_MISMATCH
    return levels[agree], target[agree]


@dataclass
class LevelMatch:
    """The level-matched comparison of a head with real CTs: its own shares and the reference's at the levels a
    CT covers (None where none does), the share of its head at those levels and each CT's (shift, mismatch, used)."""

    shares: Optional[dict]
    reference: Optional[dict]
    covered: float
    alignments: dict

    def summary(self) -> dict:
        return {"covered_share": round(self.covered, 3),
                "reference_shares": None if self.reference is None else
                {k: round(v, 4) for k, v in self.reference.items()},
                "cts": {name: None if a is None else {"shift_mm": a[0] * GRID_MM, "area_mismatch": round(a[1], 3),
                                                      "used": is_used(a)}
                        for name, a in self.alignments.items()}}


def level_matched_shares(head: Levels, cts: dict) -> LevelMatch:
    """Each CT of ``cts`` (name -> Levels) aligned to ``head`` (``align_levels``) and used if its cross-sections
    agree within MAX_AREA_MISMATCH (median), at the levels where they agree within LEVEL_AREA_MISMATCH (not where
    a tilted or cut scan covers only part of the slice); at each of the head's levels the reference shares are the
    mean of the CTs used there. The head's shares and the reference are both weighted by the head's class counts
    and area per level over the levels at least one CT covers."""
    total = np.zeros((len(head.area), len(HU_CLASSES)))
    n = np.zeros(len(head.area))
    alignments = {}
    for name, ct in cts.items():
        alignments[name] = align_levels(head, ct)
        if not is_used(alignments[name]):
            continue
        k, t = agreeing_levels(head, ct, alignments[name][0])
        total[k] += ct.counts[t] / ct.counts[t].sum(axis=1, keepdims=True)
        n[k] += 1
    covered = n > 0
    area = np.nan_to_num(head.area)
    if not covered.any():
        return LevelMatch(None, None, 0.0, alignments)
    names = [name for name, _, _ in HU_CLASSES]
    reference = (total[covered] / n[covered, None] * area[covered, None]).sum(axis=0) / area[covered].sum()
    own = head.counts[covered].sum(axis=0) / head.counts[covered].sum()
    return LevelMatch(dict(zip(names, own.tolist())), dict(zip(names, reference.tolist())),
                      float(area[covered].sum() / area.sum()), alignments)


def histogram_distance(a: dict, b: dict) -> float:
    """Total-variation distance between two sets of class shares: half the sum of absolute differences (0 to 1)."""
    return 0.5 * sum(abs(a[k] - b[k]) for k in a)


def check_sct(mr: sitk.Image, sct: sitk.Image) -> HeadCheck:
    """The checks of an sCT against the MR it came from (same grid)."""
    mr_array = on_check_grid(mr, 0.0)
    sct_array = on_check_grid(sct, -1000.0)
    head = head_mask(mr_array)
    scanned = scanned_region(mr)
    rays = cast_rays(head, sct_array, brain_centre(head), scanned)
    return HeadCheck(rays.completeness, int(rays.counted.sum()), brain_bone_share(sct_array, rays.centre),
                     hu_shares(sct_array, head), mutual_information(mr_array, sct_array, head),
                     shares_by_depth(sct_array, head, scanned), levels_of(sct_array, head, scanned), rays, sct_array,
                     mr_array)


def check_ct(ct: sitk.Image) -> HeadCheck:
    """The same checks on a real CT (the upper bound of completeness; the reference HU shares)."""
    hu = on_check_grid(ct, -1024.0)
    head = head_mask(hu, threshold=-500.0)
    scanned = scanned_region(ct)
    rays = cast_rays(head, hu, brain_centre(head), scanned)
    return HeadCheck(rays.completeness, int(rays.counted.sum()), brain_bone_share(hu, rays.centre),
                     hu_shares(hu, head), None, shares_by_depth(hu, head, scanned), levels_of(hu, head, scanned), rays,
                     hu)


def mean_shares(checks: list) -> dict:
    """Class shares averaged over several volumes (the reference of the histogram distance)."""
    return {name: float(np.mean([c.hu_shares[name] for c in checks])) for name, _, _ in HU_CLASSES}


def _ray_lines(rays: Rays, shape: tuple, plane: str) -> list:
    """The rays lying in the coronal (left-right) or sagittal (front-back) plane through the centre, as panel lines:
    green crossed bone, red did not, grey not counted (left the scanned volume first)."""
    axis = 2 if plane == "coronal" else 1
    lines = []
    for d, end, hit, counted in zip(rays.directions, rays.ends, rays.hit, rays.counted):
        if abs(d[3 - axis]) > 1e-6:        # not in this plane
            continue
        colour = "grey" if not counted else ("lime" if hit else "red")
        lines.append(([rays.centre[axis], end[axis]], [shape[0] - 1 - rays.centre[0], shape[0] - 1 - end[0]],
                      colour))                                             # superior up
    return lines


def check_figure(mr: np.ndarray, columns: dict, path, title: str):
    """Rows axial, coronal, sagittal through the brain centre; columns the MR and each sCT (``columns``: title ->
    HeadCheck), the in-plane rays of the completeness check drawn on the coronal and sagittal sCT panels."""
    from .figures import CT_WINDOW, Panel, save_panel_grid

    first = next(iter(columns.values()))
    k, j, i = (int(round(c)) for c in first.rays.centre)
    cuts = {"axial": lambda a: a[k], "coronal": lambda a: a[::-1, j, :], "sagittal": lambda a: a[::-1, :, i]}
    top = float(np.percentile(mr, 99.5)) or 1.0
    rows = []
    for plane, cut in cuts.items():
        row = [Panel(cut(mr), f"MR ({plane})", 0, top)]
        for name, check in columns.items():
            lines = _ray_lines(check.rays, mr.shape, plane) if plane != "axial" else ()
            row.append(Panel(cut(check.hu), f"{name}: vault {check.completeness:.2f}, brain bone "
                                            f"{100 * check.brain_bone:.0f}%", *CT_WINDOW, lines=lines))
        rows.append(row)
    return save_panel_grid(rows, path, suptitle=title)
