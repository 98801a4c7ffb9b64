"""Lesion margin: dense lung that the mask's own boundary cuts is extended into the tissue beyond.

Where a consolidation meets the chest wall or the mediastinum, lesion and wall have the same
density, so the classical method and the learned prior alike can only guess where the lung
ends; their guesses cut a rim off the lesion. The maps are zero outside the mask, so a lost
lesion edge is lost for good, while a few millimetres of wall beside a lesion cost little. Every
dense region of the mask at least `core_mm` wide in-plane (a consolidation, not a vessel or a
fissure) therefore reaches `margin_mm` further into soft tissue outside the mask, with its own
lung's side. Aerated lung, whose edge against the wall is sharp, is never extended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungcam.core.config import settings_from
from lungcam.core.geometry import crop_box
from lungcam.lungs.threshold import WORKING_MM, on_fine_grid, working_grid

DENSE_HU = -300.0  # denser than this (mean of 3 x 3 pixels) inside the mask: lesion or vessel
TISSUE_HU = -500.0  # denser than this outside the mask: tissue the margin may take, not air


@dataclass(frozen=True)
class MarginSettings:
    """Config section `lungs.lesion_margin` (threshold method)."""

    margin_mm: float  # 0: no margin
    core_mm: float

    @classmethod
    def from_config(cls, section: dict) -> MarginSettings:
        return settings_from(cls, section)


def _disk(radius_mm: float, spacing) -> np.ndarray:
    """In-plane ellipse of `radius_mm` on pixels of `spacing` (z, y, x), as a (1, h, w) footprint."""
    ry, rx = (radius_mm / s for s in spacing[1:])
    y, x = np.mgrid[-int(ry) : int(ry) + 1, -int(rx) : int(rx) + 1]
    return ((y / max(ry, 1e-6)) ** 2 + (x / max(rx, 1e-6)) ** 2 <= 1.0)[None]


def add_lesion_margin(
    labels: np.ndarray, hu: np.ndarray, spacing, settings: MarginSettings, lung_prior: np.ndarray | None = None
) -> np.ndarray:
    """`labels` (z, y, x; 1 right, 2 left) with each dense region's margin added, same side.

    `lung_prior`: the learned prior's labels on the same grid (lungcam.lungs.prior); then only the
    part of a dense region that the prior calls lung gets a margin, so that tissue the mask took
    beyond the lung (heart, liver) is not extended further. The dense regions and their margins
    are found on the lungs' working grid (about WORKING_MM per pixel); what the margin takes is
    decided on the scan's own grid."""
    if settings.margin_mm <= 0 or not labels.any():
        return labels
    factor = max(1, int(round(WORKING_MM / spacing[1])))
    reach = int(np.ceil(settings.margin_mm / min(spacing[1:]))) + factor
    box = crop_box(labels > 0, (0, reach, reach))
    part, part_hu = labels[box], hu[box]
    small_hu, small, working = working_grid(part_hu, part, spacing)
    dense = (small > 0) & (ndimage.uniform_filter(small_hu, size=(1, 3, 3)) > DENSE_HU)
    core = ndimage.binary_opening(dense, _disk(settings.core_mm / 2, working))
    if lung_prior is not None:
        core &= working_grid(part_hu, lung_prior[box], spacing)[1] > 0
    if not core.any():
        return labels
    refined = labels.copy()
    out = refined[box]
    tissue = (part == 0) & (part_hu > TISSUE_HU)
    footprint = _disk(settings.margin_mm, working)
    for side in (1, 2):
        grown = ndimage.binary_dilation(core & (small == side), footprint)
        out[on_fine_grid(grown, factor, part.shape) & tissue & (out == 0)] = side
    return refined
