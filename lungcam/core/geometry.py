"""Geometry shared by the stages: the bounding box of a mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def crop_box(mask: np.ndarray, margin: int | Sequence[int] = 2) -> tuple[slice, ...]:
    """Bounding box of a non-empty `mask` plus `margin` voxels, the same on every axis or one per
    axis, within the array (from its projections: no index array, which on a large scan would
    take gigabytes)."""
    margins = [margin] * mask.ndim if isinstance(margin, int) else list(margin)
    box = []
    for axis, extra in enumerate(margins):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(slice(max(int(present[0]) - extra, 0), min(int(present[-1]) + extra + 1, mask.shape[axis])))
    return tuple(box)
