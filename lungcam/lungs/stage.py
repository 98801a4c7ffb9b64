"""Lungs stage: lung labels on the scan's own grid, lung QC, and a QC montage.

Two methods (config `lungs.method`): `threshold`, the classical offline method
(lungcam.lungs.threshold), united with the learned lung prior (lungcam.lungs.prior) when its
weights are given, with a margin around consolidation at the mask's edge (lungcam.lungs.margin);
and `lungmask`, the trained U-Nets (lungcam.lungs.lungmask_backend).
Either way the labels are 1 = right lung, 2 = left lung (patient sides), uint8, on exactly the
grid of `nifti/{patient_id}.nii.gz`. lungcam.lungs.qc checks the mask: a mask that cannot be a
pair of lungs, or fails a check past its exclusion limit, excludes the patient with the figures
that show why; a check past its warning limit becomes a warning in the reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungcam.core.config import settings_from
from lungcam.core.folders import file_digest
from lungcam.core.montage import lung_montage
from lungcam.core.orientation import load_hu_lps
from lungcam.core.records import write_record
from lungcam.lungs.lungmask_backend import LungmaskSettings, segment_lungmask
from lungcam.lungs.margin import MarginSettings, add_lesion_margin
from lungcam.lungs.prior import PriorSettings, load_prior, predict_prior, refine
from lungcam.lungs.qc import LungQCSettings, lung_checks, lung_figures
from lungcam.lungs.threshold import ThresholdSettings, segment_lungs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LungSettings:
    method: str
    threshold: ThresholdSettings
    prior: PriorSettings
    lesion_margin: MarginSettings
    lungmask: LungmaskSettings
    qc: LungQCSettings

    @classmethod
    def from_config(cls, section: dict) -> LungSettings:
        return settings_from(cls, section)


def segment(
    hu_lps: np.ndarray,
    spacing,
    settings: LungSettings,
    weights: Path | None = None,
    fill_weights: Path | None = None,
    prior: Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(lung labels, lobe labels or None) with the configured method; `prior`: the learned
    prior's weights, whose regions touching the classical mask are added to it; the threshold
    method's mask then gets its lesion margin."""
    if settings.method != "threshold":
        return segment_lungmask(hu_lps, settings.lungmask, weights, fill_weights)
    labels = segment_lungs(hu_lps, spacing, settings.threshold)
    voxel_ml = float(np.prod(spacing)) / 1000
    lung_prior = None
    if prior is not None:
        model, size = load_prior(prior)
        lung_prior = predict_prior(hu_lps, model, size, settings.prior.min_log_odds)
        refined = refine(labels, lung_prior, spacing, settings.prior.min_width_mm)
        log.info("the learned lung prior added %.1f mL to the classical mask", ((refined > 0) & (labels == 0)).sum() * voxel_ml)
        labels = refined
    margined = add_lesion_margin(labels, hu_lps, spacing, settings.lesion_margin, lung_prior)
    log.info("the lesion margin added %.1f mL", ((margined > 0) & (labels == 0)).sum() * voxel_ml)
    return margined, None


def method_name(settings: LungSettings, prior: Path | None) -> str:
    """The method as the lung record names it."""
    if settings.method == "lungmask":
        return f"lungmask {settings.lungmask.model}"
    return "threshold + learned prior" if prior is not None else "threshold"


def weights_used(**files: Path | str | None) -> dict[str, dict[str, str]]:
    """Name and sha256 of each weights file given (None: not used). Training the prior again,
    even from the same config on another machine, gives other weights and other masks: the
    checksum says which weights made a mask."""
    return {role: {"file": Path(path).name, "sha256": file_digest(path)} for role, path in files.items() if path is not None}


def run_lungs(
    patient_id: str,
    nifti_path: Path | str,
    outputs: dict[str, Path | str],
    settings: LungSettings,
    weights: Path | None = None,
    fill_weights: Path | None = None,
    prior: Path | None = None,
) -> dict:
    """Segment one patient; writes outputs['labels'], ['montage'], ['record'] (and ['lobes']).

    `weights`, `fill_weights`: lungmask's; `prior`: the learned prior's (threshold method)."""
    hu, view = load_hu_lps(nifti_path)
    spacing = view.spacing
    log.info("patient %s: segmenting %s voxels with method %s", patient_id, "x".join(map(str, hu.shape)), method_name(settings, prior))
    labels, lobes = segment(hu, spacing, settings, weights, fill_weights, prior)
    log.info("patient %s: lungs segmented; QC and montage", patient_id)
    view.save(labels, outputs["labels"])
    if lobes is not None and outputs.get("lobes"):
        view.save(lobes, outputs["lobes"])
    figures = lung_figures(hu, labels, spacing)
    reasons, warnings = lung_checks(figures, settings.qc)
    used = {"prior": prior} if settings.method == "threshold" else {"lungmask": weights, "lungmask_fill": fill_weights}
    record = {
        "patient_id": patient_id,
        "stage": "lungs",
        "status": "excluded" if reasons else "ok",
        "reasons": reasons,
        "warnings": warnings,
        "method": method_name(settings, prior),
        "weights": weights_used(**used),
        **figures,
    }
    lung_montage(
        hu, labels, spacing, outputs["montage"], f"{patient_id}: right {figures['right_ml']:.0f} mL, left {figures['left_ml']:.0f} mL"
    )
    write_record(outputs["record"], record)
    if reasons:
        log.warning("patient %s excluded at lungs: %s", patient_id, "; ".join(reasons))
    return record
