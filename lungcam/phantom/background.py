"""Real background: a real normal chest CT receives each synthetic patient's lesions.

The scan (e.g. COVID-CT-MD normal001) is read once with SimpleITK, reoriented to LPS, and its
lungs are segmented by the classical threshold method (lungcam.lungs.threshold); those lungs are
the truth lung mask, derived rather than drawn by hand. Lesions are placed by the same code as in
the synthetic chest. Geometry and noise are the real scan's; storage, patient position,
identity and file names still come from each patient's own draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungcam.lungs import segment_lungs

from .cohort import STREAM_LESIONS, PatientPlan, patient_rng
from .generate import SLAB_SLICES, Scan
from .lesions import LungSampler, apply_lesions_to_real, draw_lesions


def read_dicom_series(folder: Path) -> sitk.Image:
    """The series with the most files in `folder`, as a SimpleITK image in LPS axis order."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"no DICOM series in {folder}")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader.SetFileNames(files)
    return sitk.DICOMOrient(reader.Execute(), "LPS")


@dataclass
class RealBackground:
    hu: np.ndarray  # (z, y, x), LPS
    lungs: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray

    @classmethod
    def load(cls, folder: Path) -> RealBackground:
        image = read_dicom_series(Path(folder))
        if not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-3):
            raise ValueError(f"{folder}: the background must be an axial scan without tilt or obliquity")
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        spacing = np.array(image.GetSpacing())  # x, y, z
        axes = [image.GetOrigin()[i] + np.arange(hu.shape[2 - i]) * spacing[i] for i in range(3)]
        if not np.isclose(spacing[0], spacing[1]):
            raise ValueError(f"{folder}: the background must have square pixels")
        lungs = segment_lungs(hu, tuple(spacing[::-1]))
        return cls(hu, lungs, *axes)

    def with_lesions(self, plan: PatientPlan) -> tuple[Scan, dict]:
        """This scan with `plan`'s lesions, and a description of what was inserted."""
        spacing = np.array([self.xs[1] - self.xs[0], self.ys[1] - self.ys[0], self.zs[1] - self.zs[0]])
        sampler = LungSampler.from_labels(self.lungs, np.array([self.xs[0], self.ys[0], self.zs[0]]), spacing)
        lesions = draw_lesions(plan.label, sampler, patient_rng(plan.seed, plan.index, STREAM_LESIONS))
        hu = np.empty_like(self.hu)
        mask = np.empty(self.hu.shape, np.uint8)
        for start in range(0, self.zs.size, SLAB_SLICES):
            # One slice of context each side keeps the smoothing continuous across slabs.
            lo, hi = max(0, start - 1), min(self.zs.size, start + SLAB_SLICES + 1)
            out, weight = apply_lesions_to_real(lesions, self.hu[lo:hi], self.lungs[lo:hi], spacing[::-1], self.xs, self.ys, self.zs[lo:hi])
            keep = slice(start - lo, start - lo + min(SLAB_SLICES, self.zs.size - start))
            hu[start : start + SLAB_SLICES] = out[keep]
            mask[start : start + SLAB_SLICES] = weight[keep] >= 0.5
        scan = Scan(hu, self.lungs.copy(), mask, self.xs, self.ys, self.zs, noise_free=False)
        return scan, {"lesions": lesions.describe(), "background": "real"}
