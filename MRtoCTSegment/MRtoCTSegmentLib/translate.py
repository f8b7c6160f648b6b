"""Whole-volume translation with a synthesis model, in both directions, on exactly the input's grid.

* ``synthesize_ct(mr, bundle)``: G_CT(MR), the engine's own ``synthesis.synthesize`` (HU).
* ``synthesize_mr(ct, bundle)``: G_MR(CT) in the model's MR units (after its robust scaling): ``synthesis.translate``
  from CT, the same slice-wise path with the roles swapped.

Hiasa et al. 2018 (sec. 3.2) train the segmentation U-Net on labelled CT with G_MR(CT) as the second channel and
apply it to MR with G_CT(MR); these two functions make both.
"""
from __future__ import annotations

from typing import Callable, Optional

import SimpleITK as sitk

from MRtoCTSynthesisLib.synthesis import ModelLike, synthesize, translate

Progress = Callable[[float, str], None]


def synthesize_ct(mr_image: sitk.Image, bundle: ModelLike, device: str = "auto", batch_size: int = 8,
                  progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> sitk.Image:
    """G_CT(MR): synthetic CT in HU on the MR's grid (``synthesis.synthesize``)."""
    return synthesize(mr_image, bundle, device=device, batch_size=batch_size, progress=progress, cancel=cancel).sct


def synthesize_mr(ct_image: sitk.Image, bundle: ModelLike, device: str = "auto", batch_size: int = 8,
                  precision: str = "auto", progress: Optional[Progress] = None,
                  cancel: Optional[Callable[[], bool]] = None, oblique: str = "resample") -> sitk.Image:
    """G_MR(CT): synthetic MR (float32, the model's MR units) on exactly the CT's grid; the CT is not modified.

    Raises ModelFileError when the model has no G_MR, SynthesisCancelled when ``cancel()`` turns true.
    """
    return translate(ct_image, bundle, "ct", device, batch_size, precision, False, progress, cancel, oblique).sct
