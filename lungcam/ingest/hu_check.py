"""Verify that a converted volume holds Hounsfield units.

Two independent checks. (1) Calibration: air must read about -1000 HU; a volume whose rescale
slope or intercept was lost reads about 0 or +1000 instead. (2) Exactness: one converted slice is
compared with pydicom's own rescaled pixels of the same DICOM file; the comparison is of sorted
values, so it holds whatever flips or transposes the converter applied. The second check needs
the unresampled volume (not a tilt-corrected or equalised one) and a decodable file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

log = logging.getLogger(__name__)

PADDING_BELOW_HU = -1100.0  # values below this are outside-field-of-view padding, not air
AIR_RANGE_HU = (-1100.0, -850.0)
STATISTICS_SLICES = 24


@dataclass
class HUReport:
    statistics: dict
    problems: list[str]


def _scaled(img: nib.Nifti1Image, data: np.ndarray) -> np.ndarray:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return data.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _sample_slices(img: nib.Nifti1Image) -> np.ndarray:
    """HU of up to STATISTICS_SLICES evenly spaced slices (enough for robust statistics).

    Reads through the unscaled array proxy, which is memory-mapped for an uncompressed file.
    """
    depth = img.shape[2]
    picks = np.unique(np.linspace(0, depth - 1, min(depth, STATISTICS_SLICES)).round().astype(int))
    return _scaled(img, np.asarray(img.dataobj.get_unscaled()[:, :, picks]))


def noise_estimate(hu: np.ndarray) -> float | None:
    """Robust noise SD (HU) from differences of horizontally adjacent soft-tissue pixels.

    Differences cancel the smooth anatomy; the median absolute deviation ignores the few pairs
    that straddle an edge. Returns None when there is too little soft tissue.
    """
    left, right = hu[:-1], hu[1:]
    inside = (left > -150) & (left < 150) & (right > -150) & (right < 150)
    diffs = (right - left)[inside]
    if diffs.size < 1000:
        return None
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return round(1.4826 * mad / np.sqrt(2.0), 1)


def volume_statistics(img: nib.Nifti1Image) -> dict:
    """Intensity figures for QC: range, percentiles, air level and noise.

    Percentiles use every other pixel in-plane and the noise every other row: robust figures do
    not need every voxel, and this keeps the check cheap next to the conversion itself.
    """
    hu = _sample_slices(img)
    sample = hu[::2, ::2]
    body = sample[sample >= PADDING_BELOW_HU]
    if body.size == 0:
        body = sample.ravel()
    p = np.percentile(body, [0.5, 1, 50, 99, 99.5])
    return {
        "min": float(hu.min()),
        "max": float(hu.max()),
        "p01": round(float(p[1]), 1),
        "p50": round(float(p[2]), 1),
        "p99": round(float(p[3]), 1),
        "air_hu": round(float(p[0]), 1),
        "padding_fraction": round(float(1 - body.size / sample.size), 4),
        "noise_hu": noise_estimate(hu[:, ::2]),
    }


def compare_with_dicom(img: nib.Nifti1Image, dicom_path, rank: int, count: int, normal_lps) -> str | None:
    """Compare the volume's slice number `rank` (of `count`, ordered along the DICOM slice normal
    `normal_lps`) with the DICOM file's rescaled pixels.

    The slice is found by its rank rather than its position, which also holds for an unevenly
    spaced stack. Returns a problem description, or None when they agree. Raises on undecodable
    files so that the caller can record that the check was skipped.
    """
    if img.shape[2] != count:
        return None if count == 0 else f"volume has {img.shape[2]} slices for {count} DICOM slices"
    ds = pydicom.dcmread(dicom_path)
    reference = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    along = np.array([-normal_lps[0], -normal_lps[1], normal_lps[2]]) @ img.affine[:3, 2]
    k = rank if along > 0 else count - 1 - rank
    converted = _scaled(img, np.asarray(img.dataobj.get_unscaled()[:, :, k]))
    if converted.size != reference.size:
        return f"slice size differs: {converted.shape} vs DICOM {reference.shape}"
    difference = float(np.max(np.abs(np.sort(converted.ravel()) - np.sort(reference.ravel()))))
    if difference > 0.5:
        return f"converted slice differs from the DICOM rescaled values by up to {difference:.0f} HU"
    return None


def verify_hu(volume: nib.Nifti1Image, original: nib.Nifti1Image | None, reference) -> HUReport:
    """Run both checks; `reference` is compare_with_dicom's (path, rank, count, normal), or None."""
    statistics = volume_statistics(volume)
    problems = []
    low, high = AIR_RANGE_HU
    if not low <= statistics["air_hu"] <= high:
        problems.append(f"air reads {statistics['air_hu']:.0f} HU instead of about -1000 (rescale slope/intercept missing or wrong?)")
    statistics["dicom_crosscheck"] = "not run"
    if original is not None and reference is not None:
        try:
            problem = compare_with_dicom(original, *reference)
        except Exception as exc:  # undecodable by pydicom: keep the calibration check only
            log.info("HU cross-check skipped: %s", exc)
            statistics["dicom_crosscheck"] = f"skipped ({type(exc).__name__})"
        else:
            statistics["dicom_crosscheck"] = "identical" if problem is None else "differs"
            if problem:
                problems.append(problem)
    return HUReport(statistics=statistics, problems=problems)
