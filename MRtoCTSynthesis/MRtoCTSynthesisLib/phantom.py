"""Paired digital MR/CT phantoms of the head and the pelvis, with exact label maps.

A subject is a list of shapes, each a signed distance function (SDF, mm, negative inside) of the voxel centres
in the subject's anatomical frame, painted in order into one label map (a voxel has one label). CT and MR are
functions of the labels, per-subject tissue values, smooth within-tissue variation and noise; the MR also gets a
smooth multiplicative bias field. The MR is T1-like: cortical bone and air are both dark, the ambiguity an MR-to-CT
method has to resolve from anatomical context. Per subject, shape, size, pose, fat and bone thickness, bladder
filling, bowel gas and tissue values vary.

Frame: LPS with identity direction (x = patient left, y = posterior, z = superior); the middle voxel (n // 2 along
each axis) is at the world origin. The anatomy is scaled isotropically (never above natural size) so that it fits
the field of view.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import write_atomically

PHANTOM_KINDS = ("head", "pelvis")
CT_RANGE = (-1024.0, 3000.0)
AIR_CT, AIR_MR = -1000.0, 0.0

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


class Tissue(NamedTuple):
    """Mean value of a tissue, its between-subject sd, and the amplitude of its smooth within-subject variation."""

    ct: float            # HU
    ct_sd: float
    ct_texture: float    # HU
    mr: float            # T1-like arbitrary units, white matter ~1000
    mr_sd: float
    mr_texture: float    # relative


_MUSCLE = Tissue(50, 6, 6, 600, 50, 0.05)
_AIR = Tissue(-990, 8, 10, 8, 3, 0.2)
TISSUES: dict[str, Tissue] = {
    "skin": Tissue(40, 8, 8, 650, 50, 0.05),
    "fat": Tissue(-100, 10, 8, 1250, 80, 0.04),
    "muscle": _MUSCLE, "gluteus_medius": _MUSCLE, "gluteus_minimus": _MUSCLE, "iliopsoas": _MUSCLE,
    "cortical_bone": Tissue(1450, 80, 120, 40, 10, 0.2),
    "bone_marrow": Tissue(450, 60, 80, 750, 70, 0.08),        # skull diploe and facial/cervical cancellous bone
    "pelvis_marrow": Tissue(260, 50, 60, 760, 70, 0.08),
    "spine_marrow": Tissue(230, 50, 60, 720, 70, 0.08),
    "femur_marrow": Tissue(220, 50, 60, 950, 70, 0.08),       # fatty (yellow) marrow: bright on T1
    "grey_matter": Tissue(40, 4, 3, 700, 40, 0.04),
    "white_matter": Tissue(28, 4, 3, 1000, 30, 0.03),
    "csf": Tissue(8, 4, 3, 250, 40, 0.08),
    "eye": Tissue(12, 4, 3, 300, 40, 0.05),
    "air_cavity": _AIR, "bowel_gas": _AIR,
    "bowel": Tissue(35, 6, 10, 500, 50, 0.1),
    "bladder": Tissue(8, 5, 3, 180, 30, 0.05),                # urine: dark on T1
}

HEAD_LABELS = {1: "skin", 2: "fat", 3: "muscle", 4: "cortical_bone", 5: "bone_marrow", 6: "grey_matter",
               7: "white_matter", 8: "csf", 9: "eye", 10: "air_cavity"}
PELVIS_LABELS = {1: "skin", 2: "fat", 3: "muscle", 4: "gluteus_medius", 5: "gluteus_minimus", 6: "iliopsoas",
                 7: "bladder", 8: "bowel", 9: "bowel_gas", 10: "cortical_bone", 11: "pelvis_marrow",
                 12: "spine_marrow", 13: "femur_marrow", 14: "csf"}


@dataclass
class Phantom:
    """One subject: MR, CT and labels on one grid (same size, spacing, origin, direction)."""

    mr: sitk.Image            # float32, T1-like
    ct: sitk.Image            # float32, HU in CT_RANGE
    labels: sitk.Image        # uint8, 0 = air outside the body
    label_names: dict[int, str]
    kind: str
    seed: int


# ----------------------------------------------------------------------------------------------------------- shapes
FAR = np.float32(1e4)   # SDF value given to voxels beyond a shape's bounding box
MARGIN = 40.0           # mm around a shape's box in which its SDF is computed (> blend radii and offsets used)


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """R = Rz Ry Rx for rotations (degrees) about x, y, z."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Frame:
    """Voxel centres in a subject's anatomical frame (mm): p = M i + o for voxel index i = (ix, iy, iz).

    ``x, y, z`` are arrays in SimpleITK order (z, y, x). Shapes are evaluated inside their bounding box only.
    """

    def __init__(self, shape: Sequence[int], matrix: np.ndarray, offset: np.ndarray) -> None:
        self.shape, self.matrix, self.offset = tuple(shape), np.asarray(matrix, float), np.asarray(offset, float)
        ix, iy, iz = (np.arange(n, dtype=np.float32) for n in shape)
        m = self.matrix.astype(np.float32)
        self.x, self.y, self.z = (m[k, 0] * ix + m[k, 1] * iy[:, None] + m[k, 2] * iz[:, None, None]
                                  + np.float32(self.offset[k]) for k in range(3))

    def block(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice]:
        """Array slices (z, y, x) of the voxels whose centres may lie in the anatomical box [lo, hi]."""
        if not np.all(np.isfinite(np.r_[lo, hi])):
            return (slice(None),) * 3
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
        index = np.linalg.solve(self.matrix, corners - self.offset[:, None])
        first = np.clip(np.floor(index.min(axis=1)).astype(int), 0, self.shape)
        last = np.clip(np.ceil(index.max(axis=1)).astype(int) + 1, 0, self.shape)
        return tuple(slice(a, b) for a, b in zip(first[::-1], last[::-1]))

    def evaluate(self, sdf: Callable[[Coords], np.ndarray], lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
        """sdf(p) inside the box [lo, hi] widened by MARGIN, FAR elsewhere."""
        block = self.block(np.asarray(lo, float) - MARGIN, np.asarray(hi, float) + MARGIN)
        out = np.full(self.x.shape, FAR, np.float32)
        if all(b.start is None or b.start < b.stop for b in block):
            out[block] = sdf((self.x[block], self.y[block], self.z[block]))
        return out

    def field(self, rng: np.random.Generator, wavelength: float, waves: int = 8) -> np.ndarray:
        """Zero-mean, unit-variance random field sqrt(2 / n) sum_j cos(w_j . p + phi_j), |w_j| ~ 2 pi / wavelength.

        w . p = (M^T w) . i + w . o is separable in the voxel index, so the sum is a rank-n complex outer product.
        """
        directions = rng.normal(size=(waves, 3))
        w = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        w *= (2 * np.pi / wavelength * rng.uniform(0.7, 1.3, waves))[:, None]
        phase = np.exp(1j * (w @ self.offset + rng.uniform(0, 2 * np.pi, waves)))
        fx, fy, fz = (np.exp(1j * np.outer(w @ self.matrix[:, k], np.arange(n))).astype(np.complex64)
                      for k, n in enumerate(self.shape))
        zy = (phase[:, None, None].astype(np.complex64) * fz[:, :, None] * fy[:, None, :]).reshape(waves, -1)
        field = (zy.T @ fx).real.reshape(self.x.shape)
        return field * np.float32(np.sqrt(2.0 / waves))


def _ellipsoid_sdf(p: Coords, center: Sequence[float], radii: Sequence[float], rotation: np.ndarray) -> np.ndarray:
    q = [c - np.float32(m) for c, m in zip(p, center)]
    q = [np.float32(rotation[0, i]) * q[0] + np.float32(rotation[1, i]) * q[1] + np.float32(rotation[2, i]) * q[2]
         for i in range(3)]
    axes = [(qi, np.float32(a)) for qi, a in zip(q, radii) if np.isfinite(a)]
    k0 = np.sqrt(sum((qi / a) ** 2 for qi, a in axes))
    k1 = np.sqrt(sum((qi / (a * a)) ** 2 for qi, a in axes))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(k1 > 0, k0 * (k0 - 1) / k1, -min(a for _, a in axes)).astype(np.float32)


def ellipsoid(f: Frame, center: Sequence[float], radii: Sequence[float],
              degrees: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """Approximate SDF of an ellipsoid, k0 (k0 - 1) / k1 with k0 = |q / a|, k1 = |q / a^2| (exact for spheres).

    q = R^T (p - center); an infinite radius drops its axis (elliptic cylinder).
    """
    c, r = np.asarray(center, float), np.asarray(radii, float)
    reach = np.full(3, r.max()) if any(degrees) else r
    return f.evaluate(lambda p: _ellipsoid_sdf(p, c, r, _rotation(degrees)), c - reach, c + reach)


def capsule(f: Frame, a: Sequence[float], b: Sequence[float], radius: float | tuple[float, float]) -> np.ndarray:
    """SDF of the segment a-b thickened by a radius varying linearly from a to b: |p - (a + h (b - a))| - r(h)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    r0, r1 = (radius, radius) if np.isscalar(radius) else radius
    ab = b - a

    def sdf(p: Coords) -> np.ndarray:
        pa = [c - np.float32(ai) for c, ai in zip(p, a)]
        h = np.clip(sum(x * np.float32(y) for x, y in zip(pa, ab)) / np.float32(ab @ ab), 0.0, 1.0)
        return np.sqrt(sum((x - h * np.float32(y)) ** 2 for x, y in zip(pa, ab))) - (r0 + (r1 - r0) * h)

    reach = max(r0, r1)
    return f.evaluate(sdf, np.minimum(a, b) - reach, np.maximum(a, b) + reach)


def smooth_union(*sdfs: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum with blend radius k (mm), so unions of shapes have no creases."""
    def smin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
        return b + (a - b) * h - k * h * (1.0 - h)
    return reduce(smin, sdfs)


class _Painter:
    """Paints shapes (SDF <= 0) into a label map, later shapes over earlier ones."""

    def __init__(self, shape: tuple[int, ...], names: dict[int, str]) -> None:
        self.labels = np.zeros(shape, np.uint8)
        self.ids = {name: i for i, name in names.items()}

    def __call__(self, name: str, sdf: np.ndarray, where: np.ndarray | None = None) -> None:
        mask = sdf <= 0 if where is None else (sdf <= 0) & where
        self.labels[mask] = self.ids[name]

    def bone(self, sdf: np.ndarray, cortex: float | np.ndarray, marrow: str) -> None:
        """A bone: cortical shell of thickness ``cortex`` (mm, scalar or per voxel) around ``marrow``."""
        self("cortical_bone", sdf)
        self(marrow, sdf + cortex)


# ------------------------------------------------------------------------------------------------------- anatomy
def _side(s: int, point: Sequence[float]) -> tuple[float, float, float]:
    """A point given for the left (+x) side, mirrored to side s (+1 left, -1 right)."""
    return (s * point[0], point[1], point[2])


def _head(f: Frame, rng: np.random.Generator, paint: _Painter) -> None:
    x, y, z = f.x, f.y, f.z
    body = smooth_union(
        ellipsoid(f, (0, 8, 18), (74, 94, 86)),                                           # cranium
        ellipsoid(f, (0, -30, -42), (56, 58, 50)),                                        # face
        ellipsoid(f, (0, -22, -25), (72, 74, 35)),                                        # cheeks
        ellipsoid(f, (0, -28, -78), (58, 62, 28)),                                        # jaw
        ellipsoid(f, (0, -10, -58), (58, 45, 32)),                                        # masseters
        smooth_union(capsule(f, (0, -80, -16), (0, -100, -48), (4, 9)),                   # nose
                     capsule(f, (0, -100, -48), (0, -84, -56), (9, 6)), k=3),
        ellipsoid(f, (0, -60, -84), (30, 32, 18)),                                        # chin
        np.maximum(ellipsoid(f, (0, 18, 0), (46, 50, np.inf)), z),                       # neck
        k=12)
    skin, fat = 3.0, rng.uniform(2.5, 6.0) * (1 + 0.3 * f.field(rng, 120))
    paint("skin", body)
    paint("fat", body + skin)
    paint("muscle", body + skin + fat)

    # skull: vault (diploe between outer and inner tables) above a floor stepping down from the anterior to the
    # posterior fossa, dipping laterally in the middle fossa
    cranium = ellipsoid(f, (0, 8, 18), (74, 94, 86)) + rng.uniform(5.0, 7.5)               # outer table surface
    thickness = rng.uniform(6.0, 8.5) * (1 + 0.2 * f.field(rng, 90))
    base = (np.interp(y, [-80, -25, 5, 35, 100], np.array([-4, -8, -24, -44, -40]) + rng.uniform(-3, 3))
            - 16 * np.interp(y, [-45, -25, 10, 25], [0, 1, 1, 0]) * np.clip(np.abs(x) / 50, 0, 1) ** 2)
    cavity = np.maximum(cranium + thickness, base - z)
    vault = np.maximum(np.maximum(cranium, base - thickness - z), -cavity)
    foramen = np.maximum(ellipsoid(f, (0, 24, 0), (15, 17, np.inf)), z - base - 5)
    paint.bone(np.maximum(vault, -foramen), 0.3 * thickness, "bone_marrow")

    # brain: CSF rim, folded cortex with sulci, white matter, deep grey matter, ventricles, cerebellum, brainstem
    midline = 2.5 * f.field(rng, 60)                                                         # a wavy falx
    fissure = np.where(z > 24 - 0.009 * y ** 2, 1.0 - np.abs(x - midline), -FAR)            # above corpus callosum
    brain = np.maximum(cavity + rng.uniform(1.5, 4.0), fissure)
    gyri = f.field(rng, 30, waves=24)
    paint("csf", cavity)
    paint("grey_matter", brain)
    paint("white_matter", brain + 4.0 + 9.0 * np.clip(1 - np.abs(gyri) / 0.6, 0, 1))
    paint("csf", np.abs(gyri) - 0.18, (brain <= 0) & (brain > -9))                        # sulci
    cerebellum = ellipsoid(f, (0, 55, -30), (48, 32, 20), (-10, 0, 0))
    paint("csf", cerebellum - 2.5, brain <= 0)                                             # tentorium, cisterns
    paint("grey_matter", cerebellum, brain <= 0)
    paint("white_matter", ellipsoid(f, (0, 47, -28), (16, 11, 8), (-10, 0, 0)))
    for s in (-1, 1):
        paint("grey_matter", ellipsoid(f, (s * 11, 6, 6), (9, 14, 9)))                       # thalamus
        paint("grey_matter", ellipsoid(f, (s * 22, -12, 10), (6, 15, 10), (0, 0, s * 10)))   # striatum
    v = rng.uniform(0.75, 1.5)
    for s in (-1, 1):
        paint("csf", ellipsoid(f, (s * 9 * v, -4, 18), (5 * v, 28, 8 * v), (-8, 0, s * 6)))  # lateral ventricle
        paint("csf", ellipsoid(f, (s * 15 * v, 26, 14), (5 * v, 14, 7 * v), (20, 0, -s * 20)))  # occipital horn
    paint("csf", ellipsoid(f, (0, 6, 4), (2 * v, 13, 8)))                                  # third ventricle
    paint("csf", capsule(f, (0, -2, -14), (0, 16, -50), 11), brain <= 0)                   # prepontine cistern
    paint("white_matter", capsule(f, (0, 6, -4), (0, 24, -46), (11, 9)))                   # brainstem
    paint("csf", ellipsoid(f, (0, 31, -30), (6, 4, 9), (-20, 0, 0)))                        # fourth ventricle

    # facial skeleton and cervical spine, then the spinal canal and the air spaces
    facial = [ellipsoid(f, (0, -52, -42), (40, 30, 22)),                                   # maxilla
              ellipsoid(f, (0, -71, 6), (18, 9, 14)),                                      # frontal sinus bone
              ellipsoid(f, (0, -20, -24), (17, 15, 14)),                                   # sphenoid body
              np.maximum(np.maximum(ellipsoid(f, (0, -32, 0), (42, 50, np.inf)),          # mandible body
                                    -ellipsoid(f, (0, -32, 0), (34, 42, np.inf))),
                         np.maximum(np.abs(z + 82) - 8, y + 8))]
    for s in (-1, 1):
        facial += [capsule(f, (s * 37, -8, -80), (s * 41, 0, -44), 5.5),                   # mandibular ramus
                   capsule(f, (s * 50, -58, -22), (s * 58, -2, -26), 4.5)]                # zygomatic arch
    for k in range(4):
        zk = -62 - 19 * k
        facial += [ellipsoid(f, (0, 8, zk), (16, 11, 7.5)),                                # vertebral body
                   capsule(f, (-12, 18, zk), (0, 46, zk - 2), 4), capsule(f, (12, 18, zk), (0, 46, zk - 2), 4),
                   capsule(f, (0, 46, zk - 2), (0, 58, zk - 8), 4)]                        # arch, spinous process
    paint.bone(smooth_union(*facial, k=3), 2.5, "bone_marrow")
    paint("csf", capsule(f, (0, 24, -46), (0, 32, -400), 9), z < -46)                      # spinal canal
    paint("white_matter", capsule(f, (0, 24, -46), (0, 32, -400), 6))                      # cord
    sinus = rng.uniform(0.7, 1.3)
    paint("air_cavity", ellipsoid(f, (0, -71, 6), (13 * sinus, 5, 9 * sinus)))             # frontal sinus
    paint("air_cavity", ellipsoid(f, (0, -20, -24), (12 * sinus, 11, 10)))                 # sphenoid sinus
    paint("air_cavity", ellipsoid(f, (0, -62, -40), (10, 26, 20)))                         # nasal cavity
    paint("air_cavity", smooth_union(capsule(f, (0, -44, -44), (0, -16, -58), 9),          # naso-/oropharynx
                                     capsule(f, (0, -16, -58), (0, -14, -400), 8), k=4))
    for s in (-1, 1):
        paint("air_cavity", ellipsoid(f, (s * 23, -55, -42), (12 * sinus, 17, 15 * sinus)))  # maxillary sinus
        paint("fat", ellipsoid(f, (s * 32, -58, -22), (17, 22, 15)))                          # orbit
        paint("eye", ellipsoid(f, (s * 32, -64, -22), (12, 12, 12)))


def _pelvis(f: Frame, rng: np.random.Generator, paint: _Painter) -> None:
    x, y, z = f.x, f.y, f.z
    trunk = ellipsoid(f, (0, 5, 0), (rng.uniform(145, 165), rng.uniform(100, 118), np.inf))
    limbs = [ellipsoid(f, (s * 80, 30, -60), (100, 80, 75)) for s in (-1, 1)]               # hips, buttocks
    limbs += [capsule(f, (s * 92, 0, -40), (s * 96, 10, -420), 76) for s in (-1, 1)]         # thighs
    body = smooth_union(np.maximum(trunk, -115 - z), *limbs, k=25)                            # trunk ends at perineum
    skin, fat = 3.0, np.maximum(rng.uniform(10, 30) * (1 + 0.3 * f.field(rng, 150)), 5.0)
    inner = smooth_union(np.maximum(trunk, -140 - z), *limbs, k=25) + skin + fat            # muscle compartment
    paint("skin", body)
    paint("fat", body + skin)
    paint("muscle", inner)

    bowel = np.maximum(ellipsoid(f, (0, -15, 55), (105, 70, 55)), inner + 12)
    rectum = smooth_union(capsule(f, (0, 62, 40), (0, 62, -25), 15), capsule(f, (0, 62, -25), (0, 38, -75), 13), k=8)
    paint("bowel", np.minimum(bowel, rectum))
    paint("bladder", ellipsoid(f, (0, -48, -38), np.array([42, 32, 30]) * rng.uniform(0.7, 1.25)))

    # iliac wings: part of an ellipsoidal bowl, thin in the fossa, thick at the crest and above the acetabulum
    bowl = ellipsoid(f, (0, 15, 60), (125, 85, 100))
    wing_t = 5 + 7 * np.clip((z - 40) / 20, 0, 1) + 20 * np.clip((10 - z) / 30, 0, 1)
    y_front, y_back = np.interp(z, [-25, 65], [-25, -65]), np.interp(z, [-25, 65], [25, 90])
    wing = np.maximum.reduce([np.abs(bowl) - wing_t / 2, z - 65, -25 - z, y_front - y, y - y_back, 38 - np.abs(x)])
    for s in (-1, 1):
        paint("gluteus_medius", np.maximum(ellipsoid(f, _side(s, (122, 25, 25)), (30, 58, 45), (0, s * 15, 0)),
                                           np.maximum(-bowl, inner)))
        paint("gluteus_minimus", np.maximum(ellipsoid(f, _side(s, (112, 15, 0)), (20, 40, 30)),
                                            np.maximum(-bowl, inner)))
        paint("iliopsoas", np.maximum(smooth_union(
            capsule(f, _side(s, (30, 28, 110)), _side(s, (55, 0, 10)), (18, 22)),
            capsule(f, _side(s, (55, 0, 10)), _side(s, (75, -35, -35)), (22, 15)),
            capsule(f, _side(s, (75, -35, -35)), _side(s, (108, 12, -105)), (15, 10)),
            np.maximum(ellipsoid(f, _side(s, (82, 5, 25)), (22, 45, 40)), bowl + wing_t / 2), k=10), inner))

    hips, femurs = [wing], []
    for s in (-1, 1):
        head_r, head = rng.uniform(21, 25), _side(s, (92, 0, -42))
        socket = ellipsoid(f, head, (head_r + 2.5,) * 3)
        acetabulum = np.maximum(ellipsoid(f, head, (head_r + 14,) * 3),
                                0.5 * s * (x - head[0]) - 0.85 * (z - head[2]) - 8)   # open inferolaterally
        hips.append(np.maximum(smooth_union(
            acetabulum,
            capsule(f, _side(s, (70, -25, -40)), _side(s, (8, -70, -68)), 11),                # superior pubic ramus
            capsule(f, _side(s, (8, -68, -80)), _side(s, (55, 10, -102)), 9),                 # ischiopubic ramus
            capsule(f, _side(s, (75, 20, -50)), _side(s, (58, 18, -102)), 14), k=8), -socket))  # ischium
        femurs.append(smooth_union(
            ellipsoid(f, head, (head_r,) * 3),
            capsule(f, head, _side(s, (135, 8, -72)), 14),                                    # neck
            ellipsoid(f, _side(s, (140, 12, -75)), (16, 20, 26)),                             # greater trochanter
            capsule(f, _side(s, (132, 10, -85)), _side(s, (112, 16, -420)), 15),              # shaft
            ellipsoid(f, _side(s, (110, 18, -105)), (10, 10, 12)), k=6))                      # lesser trochanter
    t = np.linspace(0, 1, 12)[:, None]                                                        # sacrum, coccyx
    curve = np.c_[0 * t, 40 + 80 * t - 50 * t ** 2, 34 - 102 * t]                             # concave forwards
    spine = [ellipsoid(f, c, r, (-20 - 30 * ti, 0, 0)) for c, r, ti in zip(
        curve, np.c_[48 - 40 * t, 18 - 11 * t, 14 - 6 * t], t[:, 0])]
    for yk, zk in ((30, 62), (27, 95)):                                                       # L5, L4
        spine += [ellipsoid(f, (0, yk, zk), (26, 19, 13)),
                  capsule(f, (-14, 40, zk), (0, 58, zk), 5), capsule(f, (14, 40, zk), (0, 58, zk), 5),
                  capsule(f, (0, 58, zk), (0, 76, zk - 4), 6),
                  capsule(f, (-15, 40, zk), (-46, 42, zk + 3), 5), capsule(f, (15, 40, zk), (46, 42, zk + 3), 5)]
    cortex = rng.uniform(2.0, 3.0)
    paint.bone(smooth_union(*hips, k=6), cortex, "pelvis_marrow")
    paint.bone(smooth_union(*spine, k=5), cortex, "spine_marrow")
    paint.bone(np.minimum(*femurs), cortex + 3.0 * np.clip((-z - 70) / 60, 0, 1), "femur_marrow")
    paint("csf", capsule(f, (0, 45, 130), (0, 62, 10), 8))                                  # spinal canal

    gas = paint.labels == paint.ids["bowel"]
    for _ in range(int(rng.integers(3, 8))):
        center = np.array([0, -15, 55]) + rng.uniform(-1, 1, 3) * [90, 55, 40]
        paint("bowel_gas", ellipsoid(f, center, rng.uniform(6, 18, 3)), gas)
    if rng.random() < 0.7:
        paint("bowel_gas", ellipsoid(f, (0, 62, rng.uniform(-20, 30)), rng.uniform(6, 11, 3)), gas)


class _Anatomy(NamedTuple):
    build: Callable[[Frame, np.random.Generator, _Painter], None]
    names: dict[int, str]
    extent: tuple[float, float, float]        # mm box (x, y, z) that must fit in the field of view, with
                                              # room for the largest subject (size factor up to 1.11)
    center: tuple[float, float, float]        # its centre in anatomical coordinates
    reference: str                            # tissue that normalises the MR noise level


_ANATOMIES = {
    "head": _Anatomy(_head, HEAD_LABELS, (170.0, 240.0, 230.0), (0.0, -5.0, 2.0), "white_matter"),
    "pelvis": _Anatomy(_pelvis, PELVIS_LABELS, (400.0, 250.0, 240.0), (0.0, 3.0, -40.0), "muscle"),
}


# ------------------------------------------------------------------------------------------------------ synthesis
def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_seed(seed: object) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if len(shape) != 3 or not all(_is_int(n) and n >= 8 for n in shape):
        raise ValueError(f"shape must be three voxel counts (x, y, z), each an integer >= 8, got {shape!r}")
    try:
        sizes = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing must be three positive voxel sizes in mm (x, y, z), got {spacing!r}")
    return tuple(int(n) for n in shape), sizes


def make_phantom(kind: str, seed: int, shape: tuple[int, int, int] = (64, 64, 48),
                 spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)) -> Phantom:
    """One subject of ``kind`` ("head" or "pelvis") drawn from ``seed``; shape (voxels) and spacing (mm) are (x, y, z).

    Per subject: size (x0.93-1.07, aspect +-4 %), pose (nod +-6, roll and turn +-3 degrees, shift up to 2/5/5 mm),
    anatomy parameters, tissue means (TISSUES sd), smooth texture, an MR bias field exp(a g) with a in [0.08, 0.2],
    CT noise sd 10-20 HU and Rician MR noise sd 1-3 % of the reference tissue (white matter or muscle).
    """
    if kind not in _ANATOMIES:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {PHANTOM_KINDS}")
    seed = _check_seed(seed)
    shape, spacing = _check_geometry(shape, spacing)
    anatomy, rng = _ANATOMIES[kind], np.random.default_rng(seed)

    # anatomical frame: p = R^T (w - shift) / (fit * size) + centre for the world position w of each voxel centre
    fov = np.array(shape) * np.array(spacing)
    fit = min(1.0, float(np.min(fov / np.array(anatomy.extent))))
    size = fit * rng.uniform(0.93, 1.07) * rng.uniform(0.96, 1.04, 3)
    rotation = _rotation(rng.uniform(-1, 1, 3) * [6, 3, 3])                                 # nod, roll, turn
    shift = rng.uniform(-1, 1, 3) * [2, 5, 5] * fit
    origin = -(np.array(shape) // 2) * np.array(spacing)                                    # middle voxel at 0
    to_anatomy = rotation.T / size[:, None]
    frame = Frame(shape, to_anatomy * np.array(spacing), to_anatomy @ (origin - shift) + np.array(anatomy.center))

    paint = _Painter(shape[::-1], anatomy.names)
    anatomy.build(frame, rng, paint)
    labels = paint.labels

    # per-subject tissue values (index 0 = air outside the body), smooth variation, bias field, noise
    names = ["background"] + [anatomy.names[i] for i in range(1, max(anatomy.names) + 1)]
    table = np.array([(AIR_CT, 0, 0, AIR_MR, 0, 0)] + [TISSUES[n] for n in names[1:]], np.float64)
    ct_mean = table[:, 0] + table[:, 1] * rng.standard_normal(len(names))
    mr_mean = np.maximum(table[:, 3] + table[:, 4] * rng.standard_normal(len(names)), 0.0)
    ct = ct_mean[labels] + table[labels, 2] * frame.field(rng, 40)
    mr = mr_mean[labels] * (1 + table[labels, 5] * frame.field(rng, 40))
    mr *= np.exp(rng.uniform(0.08, 0.2) * frame.field(rng, 250, waves=4))               # bias field
    ct += rng.uniform(10, 20) * rng.standard_normal(labels.shape)
    sigma = rng.uniform(0.01, 0.03) * mr_mean[names.index(anatomy.reference)]
    mr = np.hypot(mr + sigma * rng.standard_normal(labels.shape), sigma * rng.standard_normal(labels.shape))  # Rician

    def image(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(array)
        result.SetSpacing(spacing)
        result.SetOrigin(tuple(origin))
        return result

    return Phantom(mr=image(np.maximum(mr, 0).astype(np.float32)),
                   ct=image(np.clip(ct, *CT_RANGE).astype(np.float32)),
                   labels=image(labels), label_names=dict(anatomy.names), kind=kind, seed=seed)


# ------------------------------------------------------------------------------------------------------- writing
def write_phantom(phantom: Phantom, folder: os.PathLike, name: str) -> dict[str, Path]:
    """Write <folder>/{mr,ct,labels}/<name>.nii.gz and <folder>/labels.json (label id -> name)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"name {name!r} must be a plain file name without folders")
    root = Path(folder)
    names_path = root / "labels.json"
    names = {str(k): v for k, v in sorted(phantom.label_names.items())}
    if names_path.exists() and json.loads(names_path.read_text(encoding="utf-8")) != names:
        raise ValueError(f"{names_path} lists other labels (another phantom kind?); write {phantom.kind} phantoms "
                         "to a separate folder")
    paths = {}
    for key in ("mr", "ct", "labels"):
        paths[key] = root / key / f"{name}.nii.gz"
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(getattr(phantom, key), str(paths[key]), useCompression=True)
    # atomic: phantoms of one folder may be written by several processes at once (quality/data.py), and a reader
    # must never see a half-written labels.json
    write_atomically(names_path, lambda temp: temp.write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8"))
    paths["label_names"] = names_path
    return paths


def subject_seeds(seed: int, n_subjects: int) -> list[int]:
    """Independent per-subject seeds derived from one dataset seed (numpy SeedSequence spawning)."""
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(n_subjects)]


def write_phantom_dataset(folder: os.PathLike, kind: str, n_subjects: int, seed: int = 0,
                          shape: tuple[int, int, int] = (64, 64, 48),
                          spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)) -> list[dict[str, Path]]:
    """Subjects <kind>_000, <kind>_001, ... written by ``write_phantom``; their seeds come from ``seed``."""
    if not _is_int(n_subjects) or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    return [write_phantom(make_phantom(kind, s, shape, spacing), folder, f"{kind}_{i:03d}")
            for i, s in enumerate(subject_seeds(_check_seed(seed), n_subjects))]


# ------------------------------------------------------------------------------------------------------- preview
def save_preview_png(phantom: Phantom, path: os.PathLike, dpi: int = 80) -> Path:
    """MR | CT | labels (columns) for the middle sagittal, coronal and axial slices (rows), superior up.

    Sagittal: anterior left; coronal and axial: patient right on the left (radiological); axial: anterior up.
    Drawn on a matplotlib Figure with the Agg canvas, leaving pyplot and the host's backend alone.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    mr, ct, labels = (sitk.GetArrayFromImage(getattr(phantom, k)) for k in ("mr", "ct", "labels"))
    nz, ny, nx = labels.shape
    (sx, sy, sz), (ox, oy, oz) = phantom.labels.GetSpacing(), phantom.labels.GetOrigin()
    ex, ey, ez = ((o - s / 2, o + (n - 0.5) * s) for o, s, n in ((ox, sx, nx), (oy, sy, ny), (oz, sz, nz)))
    views = [("sagittal", lambda a: a[:, :, nx // 2], (*ey, *ez), "lower"),
             ("coronal", lambda a: a[:, ny // 2, :], (*ex, *ez), "lower"),
             ("axial", lambda a: a[nz // 2], (ex[0], ex[1], ey[1], ey[0]), "upper")]
    ids = sorted(phantom.label_names)
    colors = colormaps["tab20"](np.arange(max(ids)) % 20)
    columns = [("MR (T1-like)", mr, dict(cmap="gray", vmin=0, vmax=float(np.percentile(mr, 99.5)))),
               ("CT [-1000, 2000] HU", ct, dict(cmap="gray", vmin=-1000, vmax=2000)),
               ("labels", labels, dict(cmap=ListedColormap(np.vstack([[0, 0, 0, 1], colors])), vmin=-0.5,
                                       vmax=max(ids) + 0.5, interpolation="nearest"))]

    fig = Figure(figsize=(9.5, 8.8), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    for row, (view, cut, extent, origin) in enumerate(views):
        for col, (title, array, kwargs) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(cut(array), extent=extent, origin=origin, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, color="white", fontsize=10)
            if col == 0:
                ax.set_ylabel(view, color="white", fontsize=10)
    handles = [Patch(color=colors[i - 1], label=f"{i} {phantom.label_names[i]}") for i in ids]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=7, frameon=False,
               labelcolor="white")
    fig.suptitle(f"{phantom.kind} phantom, seed {phantom.seed}", color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="black")
    return out
