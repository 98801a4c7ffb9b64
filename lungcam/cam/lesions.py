"""Lesion candidates and infection burden from a patient's CAM (on the scan's grid).

Voxels of the map at or above a threshold form 3D connected components (26-connectivity). The
threshold is by default an absolute map value fixed before evaluation (maps have one scale for
every scan, `lungcam.cam.maps.to_unit_range`), so a scan whose map is low everywhere gets
no candidates; a share of each scan's own maximum (`relative`) or Otsu's threshold of the map
within the lungs (`otsu`) always flag part of every scan's lungs. Components smaller
than a minimum volume are dropped. Each candidate gets its volume, side (the lung label most of
its voxels lie in: 1 right, 2 left), peak and mean score, and centroid in scanner coordinates
(DICOM LPS, mm). The burden is the flagged share of each lung's volume, in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.filters import threshold_otsu

from lungcam.core.config import settings_from

COLUMNS = ["lesion", "volume_ml", "side", "peak_score", "mean_score", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
SIDES = {1: "right", 2: "left"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class LesionSettings:
    """Config section `cam.lesions`."""

    threshold: str  # absolute, relative or otsu
    absolute: float
    relative: float
    min_volume_ml: float

    @classmethod
    def from_config(cls, section: dict) -> LesionSettings:
        return settings_from(cls, section)


def cam_threshold(cam: np.ndarray, lungs: np.ndarray, settings: LesionSettings) -> float:
    """The score at or above which a lung voxel is flagged (for relative and otsu: inf when the
    map is empty)."""
    if settings.threshold == "absolute":
        return settings.absolute
    inside = cam[lungs > 0]
    if inside.size == 0 or inside.max() <= 0:
        return float("inf")
    if settings.threshold == "otsu":
        return float(threshold_otsu(inside)) if np.ptp(inside) > 0 else float("inf")
    return settings.relative * float(inside.max())


def find_lesions(cam: np.ndarray, lungs: np.ndarray, affine: np.ndarray, settings: LesionSettings) -> tuple[pd.DataFrame, dict]:
    """(candidate table with COLUMNS, burden) for a map and lung labels on the same grid."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    flagged = (cam >= cam_threshold(cam, lungs, settings)) & (lungs > 0)
    components, count = ndimage.label(flagged, structure=np.ones((3, 3, 3), dtype=bool))
    rows = []
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        member = components[box] == number
        volume = member.sum() * voxel_ml
        if volume < settings.min_volume_ml:
            flagged[box][member] = False
            continue
        scores = cam[box][member]
        sides = lungs[box][member]
        side = SIDES.get(int(np.bincount(sides, minlength=3)[1:].argmax()) + 1)
        centre = np.argwhere(member).mean(axis=0) + [s.start for s in box]
        x, y, z = RAS_TO_LPS @ (affine[:3, :3] @ centre + affine[:3, 3])
        rows.append(
            [
                0,
                round(volume, 3),
                side,
                round(float(scores.max()), 4),
                round(float(scores.mean()), 4),
                round(x, 1),
                round(y, 1),
                round(z, 1),
            ]
        )
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("volume_ml", ascending=False, ignore_index=True)
    table["lesion"] = np.arange(1, len(table) + 1)
    burden = {}
    for label, side in SIDES.items():
        lung = lungs == label
        burden[f"{side}_percent"] = round(100.0 * float((flagged & lung).sum()) / max(int(lung.sum()), 1), 3)
    burden["total_percent"] = round(100.0 * float(flagged.sum()) / max(int((lungs > 0).sum()), 1), 3)
    burden["flagged_ml"] = round(float(flagged.sum()) * voxel_ml, 3)
    return table, burden
