"""What an input given as an MR looks like when it is not one (issue 20): a CT stored without its rescale intercept,
or a label map / mask. Both would pass the value checks and give a meaningless sCT with exit 0.

* Label map or mask: at most ``LABEL_MAP_MAX_VALUES`` distinct values, all integers. A scanner's MR has hundreds
  or thousands of grey levels (the real head MRs beside the project: 518 to 2224 in a sample).
* CT without its rescale (stored value = HU + offset, the offset 1024, 1000 or 32768 of unsigned storage): a narrow
  soft-tissue peak: ``UNRESCALED_SOFT_SHARE`` or more of the voxels above offset - 524 (-524 HU) lie in offset - 24
  to offset + 96 (-24 to 96 HU). Measured with offset 1024 on the real CTs beside the project: 0.44-0.60, phantom
  CT 0.68; on the real MRs 0.00-0.11, phantom MR 0.13.
* A constant volume has no anatomy at all.

Either is refused with what the input looks like; ``input_is_mr`` (``--input-is-mr``) overrides for an MR that
happens to look so.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

LABEL_MAP_MAX_VALUES = 16
UNRESCALED_OFFSETS = (1024.0, 1000.0, 32768.0)
SOFT_TISSUE_HU = (-24.0, 96.0)
UNRESCALED_SOFT_SHARE = 0.3
SAMPLE_VOXELS = 2_000_000


def non_mr_kind(values: np.ndarray) -> Optional[str]:
    """A description of what ``values`` look like if they are a label map or an unrescaled CT, else None."""
    flat = np.asarray(values).ravel()
    sample = flat[::max(1, flat.size // SAMPLE_VOXELS)].astype(np.float64)
    distinct = np.unique(sample)
    if distinct.size == 1 and np.all(flat == distinct[0]):
        return f"a constant volume (every voxel {distinct[0]:g}: no anatomy)"
    if distinct.size <= LABEL_MAP_MAX_VALUES and np.all(distinct == np.round(distinct)):
        distinct = np.unique(flat)          # the sample can miss a small label: count them all
        if distinct.size <= LABEL_MAP_MAX_VALUES:
            shown = ", ".join(f"{v:g}" for v in distinct)
            return f"a label map or mask ({distinct.size} distinct integer values: {shown})"
    for offset in UNRESCALED_OFFSETS:
        body = sample[sample > offset - 524]
        if body.size < 0.05 * sample.size:
            continue
        low, high = (offset + hu for hu in SOFT_TISSUE_HU)
        share = float(np.mean((body >= low) & (body < high)))
        if share >= UNRESCALED_SOFT_SHARE:
            return (f"a CT stored without its rescale intercept ({share:.0%} of the voxels above {offset - 524:g} "
                    f"lie in {low:g}-{high:g}: soft tissue at HU + {offset:g})")
    return None
