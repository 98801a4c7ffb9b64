"""Lungs stage: lung labels on the scan's own grid, lung QC, and a QC montage.

Two methods (config `lungs.method`): `threshold`, the classical offline method
(lungcam.lungs_threshold), and `lungmask`, the trained U-Nets (lungcam.lungmask_backend).
Either way the labels are 1 = right lung, 2 = left lung (patient sides), uint8, on exactly the
grid of `nifti/{patient_id}.nii.gz`. A mask that cannot be a pair of lungs (one missing, far too
small or large a volume) excludes the patient with the figures that show why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .lungmask_backend import LungmaskSettings, segment_lungmask
from .lungs_threshold import ThresholdSettings, segment_lungs
from .montage import lung_montage
from .orientation import load_hu_lps
from .records import write_record

log = logging.getLogger(__name__)
METHODS = ("threshold", "lungmask")


@dataclass(frozen=True)
class LungQCSettings:
    """Config section `lungs.qc`: when a lung mask is implausible."""

    min_side_ml: float
    min_total_ml: float
    max_total_ml: float


@dataclass(frozen=True)
class LungSettings:
    method: str
    threshold: ThresholdSettings
    lungmask: LungmaskSettings
    qc: LungQCSettings

    @classmethod
    def from_config(cls, section: dict) -> "LungSettings":
        if section["method"] not in METHODS:
            raise ValueError(f"lungs.method must be one of {METHODS}")
        return cls(
            method=section["method"],
            threshold=ThresholdSettings.from_config(section["threshold"]),
            lungmask=LungmaskSettings.from_config(section["lungmask"]),
            qc=LungQCSettings(**{k: float(v) for k, v in section["qc"].items()}),
        )


def lung_figures(labels: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Per-side volume, components and extent, and how much lung touches the image edge."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    figures: dict = {}
    for side, name in ((1, "right"), (2, "left")):
        mask = labels == side
        z = np.nonzero(mask.any(axis=(1, 2)))[0]
        figures[f"{name}_ml"] = round(float(mask.sum()) * voxel_ml, 1)
        figures[f"{name}_components"] = int(ndimage.label(mask)[1])
        figures[f"{name}_z_extent_mm"] = round(float((z[-1] - z[0] + 1) * spacing[0]), 1) if z.size else 0.0
    figures["total_ml"] = round(figures["right_ml"] + figures["left_ml"], 1)
    figures["left_right_ratio"] = round(figures["left_ml"] / figures["right_ml"], 3) if figures["right_ml"] else None
    lungs = labels > 0
    edge = np.zeros(labels.shape[1:], bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    figures["fov_edge_fraction"] = round(float((lungs & edge[None]).sum() / max(lungs.sum(), 1)), 5)
    figures["slices_with_lung"] = int(lungs.any(axis=(1, 2)).sum())
    return figures


def lung_checks(figures: dict, qc: LungQCSettings) -> tuple[list[str], list[str]]:
    """(exclusion reasons, warnings) for a lung mask's figures."""
    reasons, warnings = [], []
    for name in ("right", "left"):
        if figures[f"{name}_ml"] < qc.min_side_ml:
            reasons.append(f"{name} lung missing or tiny ({figures[f'{name}_ml']:.0f} mL < lungs.qc.min_side_ml {qc.min_side_ml:g})")
        elif figures[f"{name}_components"] > 3:
            warnings.append(f"{name} lung mask in {figures[f'{name}_components']} pieces")
    if not reasons and figures["total_ml"] < qc.min_total_ml:
        reasons.append(f"lung volume {figures['total_ml']:.0f} mL below lungs.qc.min_total_ml {qc.min_total_ml:g} (not a chest CT, or the lungs are cut off)")
    if figures["total_ml"] > qc.max_total_ml:
        reasons.append(f"lung volume {figures['total_ml']:.0f} mL above lungs.qc.max_total_ml {qc.max_total_ml:g} (segmentation leaked outside the lungs)")
    ratio = figures["left_right_ratio"]
    if ratio is not None and not reasons and not 0.5 <= ratio <= 1.5:
        warnings.append(f"left/right lung volume ratio {ratio:.2f} is unusual (normally about 0.8-1.0)")
    if figures["fov_edge_fraction"] > 0.001:
        warnings.append(f"lungs touch the edge of the field of view ({100 * figures['fov_edge_fraction']:.1f}% of lung voxels): part of a lung may be cut off")
    return reasons, warnings


def segment(hu_lps: np.ndarray, spacing, settings: LungSettings, weights: Path | None = None, fill_weights: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(lung labels, lobe labels or None) with the configured method."""
    if settings.method == "threshold":
        return segment_lungs(hu_lps, spacing, settings.threshold), None
    return segment_lungmask(hu_lps, settings.lungmask, weights, fill_weights)


def run_lungs(patient_id: str, nifti_path: Path | str, outputs: dict[str, Path | str], settings: LungSettings,
              weights: Path | None = None, fill_weights: Path | None = None) -> dict:
    """Segment one patient; writes outputs['labels'], ['montage'], ['record'] (and ['lobes'])."""
    hu, view = load_hu_lps(nifti_path)
    spacing = view.spacing
    labels, lobes = segment(hu, spacing, settings, weights, fill_weights)
    view.save(labels, outputs["labels"])
    if lobes is not None and outputs.get("lobes"):
        view.save(lobes, outputs["lobes"])
    figures = lung_figures(labels, spacing)
    reasons, warnings = lung_checks(figures, settings.qc)
    record = {
        "patient_id": patient_id,
        "stage": "lungs",
        "status": "excluded" if reasons else "ok",
        "reasons": reasons,
        "warnings": warnings,
        "method": settings.method if settings.method == "threshold" else f"lungmask {settings.lungmask.model}",
        **figures,
    }
    lung_montage(hu, labels, spacing, outputs["montage"], f"{patient_id}: right {figures['right_ml']:.0f} mL, left {figures['left_ml']:.0f} mL")
    write_record(outputs["record"], record)
    if reasons:
        log.warning("patient %s excluded at lungs: %s", patient_id, "; ".join(reasons))
    return record
