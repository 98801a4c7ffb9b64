"""Classical lung segmentation by thresholding: offline, CPU only, no trained weights.

Works on a volume in LPS array order (z, y, x): x towards the patient's left, y posterior, z
superior; callers reorient first. Steps: body mask; air inside the body; airways (trachea and
main bronchi) found by region growing from the trachea and removed; the two largest air regions
are the lungs, split by erosion when they touch; holes (vessels) filled slice by slice.
Labels: 1 = right lung (smaller x), 2 = left lung.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

BODY_HU = -500.0
LUNG_HU = -400.0
AIRWAY_HU = -900.0


@dataclass(frozen=True)
class ThresholdSettings:
    """Thresholds (HU) of the classical method."""

    body_hu: float = BODY_HU
    lung_hu: float = LUNG_HU
    airway_hu: float = AIRWAY_HU


def _largest_components(mask: np.ndarray, count: int, structure=None) -> list[np.ndarray]:
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    return [labels == (i + 1) for i in order]


def body_mask(hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """The patient's body: largest connected dense region, holes filled slice by slice.

    A per-slice opening first cuts thin bridges to the table and blankets.
    """
    dense = hu > threshold
    dense = ndimage.binary_opening(dense, structure=np.ones((1, 3, 3), bool), iterations=2)
    parts = _largest_components(dense, 1)
    if not parts:
        return np.zeros(hu.shape, bool)
    body = parts[0]
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def airway_mask(hu: np.ndarray, air: np.ndarray, spacing: tuple[float, float, float], threshold: float = AIRWAY_HU) -> np.ndarray:
    """Trachea and main bronchi: region growing from the trachea in the top slices.

    The seed is the air component nearest the body's centre line in the highest slices that
    contain air of trachea size (1-8 cm^2). Growing uses a smoothed image and a stricter threshold
    than the lungs, so it stays inside the airway lumen; if it leaks into the lungs (more than
    400 mL), the threshold is lowered until it does not.
    """
    smooth = ndimage.gaussian_filter(hu, sigma=[1.0 / s for s in spacing])
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    seed = None
    for k in range(hu.shape[0] - 1, max(-1, hu.shape[0] - 40), -1):
        labels, n = ndimage.label(air[k])
        if n == 0:
            continue
        sizes = ndimage.sum(air[k], labels, range(1, n + 1)) * pixel_cm2
        centres = ndimage.center_of_mass(air[k], labels, range(1, n + 1))
        middle = hu.shape[2] / 2
        candidates = [(abs(c[1] - middle), i + 1) for i, (size, c) in enumerate(zip(sizes, centres)) if 1.0 <= size <= 8.0]
        if candidates:
            seed = (k, labels == min(candidates)[1])
            break
    if seed is None:
        return np.zeros(hu.shape, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for limit in (threshold, threshold - 40, threshold - 70):
        lumen = (smooth < limit) & air
        grown_labels, _ = ndimage.label(lumen)
        ids = np.unique(grown_labels[seed[0]][seed[1] & lumen[seed[0]]])
        ids = ids[ids > 0]
        grown = np.isin(grown_labels, ids)
        if grown.sum() * voxel_ml < 400.0:
            return grown
    return np.zeros(hu.shape, bool)


def _side(part: np.ndarray, body_center_x: float) -> int:
    return 1 if np.argwhere(part)[:, 2].mean() < body_center_x else 2


def _balanced_pair(parts: list[np.ndarray]) -> bool:
    return len(parts) == 2 and min(p.sum() for p in parts) > 0.15 * max(p.sum() for p in parts)


def split_lungs(lungs: np.ndarray, body_center_x: float) -> np.ndarray:
    """Label right (1) and left (2) lung.

    Two similar-sized regions are the two lungs. One region holding both (lungs touching in front
    of or behind the mediastinum) is eroded in-plane until it falls apart; every voxel then goes
    to the nearer of the two eroded cores.
    """
    labels = np.zeros(lungs.shape, np.uint8)
    parts = _largest_components(lungs, 2)
    if _balanced_pair(parts):
        for part in parts:
            labels[part] = _side(part, body_center_x)
        return labels
    eroded = lungs.copy()
    for _ in range(10):
        eroded = ndimage.binary_erosion(eroded, structure=np.ones((1, 3, 3), bool))
        cores = _largest_components(eroded, 2)
        if _balanced_pair(cores):
            marker = np.zeros(lungs.shape, np.uint8)
            for core in cores:
                marker[core] = _side(core, body_center_x)
            _, nearest = ndimage.distance_transform_edt(marker == 0, return_indices=True)
            labels[lungs] = marker[tuple(index[lungs] for index in nearest)]
            return labels
    for part in parts[:1]:  # one lung only (e.g. after pneumonectomy or a cropped scan)
        labels[part] = _side(part, body_center_x)
    return labels


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill vessels and airways enclosed by each lung, slice by slice."""
    filled = labels.copy()
    for side in (1, 2):
        mask = labels == side
        for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
            filled[k][ndimage.binary_fill_holes(mask[k]) & (filled[k] == 0)] = side
    return filled


def _crop_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    index = np.argwhere(mask)
    lo = np.maximum(index.min(axis=0) - margin, 0)
    hi = np.minimum(index.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def segment_lungs(hu: np.ndarray, spacing: tuple[float, float, float], settings: ThresholdSettings = ThresholdSettings()) -> np.ndarray:
    """Lung labels (0, 1 right, 2 left) of an LPS-ordered (z, y, x) volume with `spacing` mm."""
    labels = np.zeros(hu.shape, np.uint8)
    body = body_mask(hu, settings.body_hu)
    if not body.any():
        return labels
    box = _crop_box(body)
    hu, body = hu[box], body[box]
    air = (hu < settings.lung_hu) & body
    air = ndimage.binary_opening(air, structure=np.ones((1, 2, 2), bool))
    # The airway wall's partial-volume ring must go too, or hole filling brings the lumen back.
    airways = ndimage.binary_dilation(airway_mask(hu, air, spacing, settings.airway_hu), structure=np.ones((1, 3, 3), bool), iterations=2)
    parts = _largest_components(air & ~airways, 2)
    parts = [p for p in parts if p.sum() >= 0.05 * parts[0].sum()] if parts else []
    lungs = np.logical_or.reduce(parts) if parts else np.zeros(hu.shape, bool)
    middle = body[body.shape[0] // 2]
    center_x = np.argwhere(middle)[:, 1].mean() if middle.any() else hu.shape[2] / 2
    cropped = fill_holes(split_lungs(lungs, center_x))
    cropped[airways] = 0
    labels[box] = cropped
    return labels
