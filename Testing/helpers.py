"""Shared test helpers: synthetic volumes with awkward geometry, the real-data folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(),
                                        reason=f"real scans not present at {REAL_DATA} (they live beside the repo)")


def rotation(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_volume(size=(20, 18, 7), spacing=(0.7, 0.8, 2.5), direction=None, origin=(-33.3, 12.5, 101.0),
                seed=0, low=0.0, high=1000.0) -> sitk.Image:
    """A float32 random volume (size in i, j, k) with the given geometry (oblique 20/10 degrees by default)."""
    rng = np.random.default_rng(seed)
    array = rng.uniform(low, high, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection((rotation((20, 10, 0)) if direction is None else np.asarray(direction, float)).flatten())
    return image


PERMUTED_FLIPPED = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)  # axis-aligned but not LPS


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-6) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 1e3)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


TINY_TRAIN_ARGS = ["--image-size", "32", "32", "--augment-pad", "36", "36", "--ngf", "4", "--n-blocks", "1",
                   "--ndf", "4", "--log-every", "1", "--preview-every", "1000", "--validate-every", "1000",
                   "--no-progress"]


def tiny_phantom_dataset(folder, kind="head", n=3, seed=0):
    """A few small paired phantoms (MR, CT, labels folders) for fast tests."""
    from MRtoCTSynthesisLib.phantom import write_phantom_dataset
    shape, spacing = ((32, 32, 24), (7.0, 7.0, 7.0)) if kind == "head" else ((32, 28, 24), (12.0, 12.0, 10.0))
    write_phantom_dataset(folder, kind, n, seed=seed, shape=shape, spacing=spacing)
    return folder


def tiny_model(path, plane="sagittal", image_size=(32, 32), pixel_spacing_mm=None, seed=0):
    """A randomly initialised, valid model bundle (ngf 4, 1 block) for geometry and plumbing tests."""
    from MRtoCTSynthesisLib.modelfile import save_untrained_model

    return save_untrained_model(path, "tiny-test", 4, 1, plane, image_size, pixel_spacing_mm, seed)
