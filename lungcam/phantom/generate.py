"""Generate one synthetic patient: DICOM study folder plus ground-truth lung and lesion masks.

Pipeline: anatomy and lesions are rendered at <= 1.25 mm along z and averaged into the slice
thickness (partial volume); the reconstruction kernel blurs in-plane and shapes the noise
(Gaussian, correlated in-plane, SD scaled by kernel and slice thickness); pixels outside the
reconstruction circle get the padding value; HU are stored with the drawn pixel representation
and rescale intercept. Studies hold the thin axial series (series 2), optionally a thick series
(3) and a localizer (1). Truth masks are on the thin series' grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lungcam.core.atomic import atomic_path
from lungcam.core.config import settings_from

from .anatomy import LEFT, RIGHT, draw_chest
from .cohort import KERNELS, STREAM_ANATOMY, STREAM_FILES, STREAM_IDENTITY, STREAM_LESIONS, STREAM_NOISE, Nuisance, PatientPlan, patient_rng
from .dicom_writer import FileNamer, Identity, SeriesSpec, StudyInfo, draw_identity, write_axial_series, write_localizer
from .lesions import LungSampler, apply_lesions, draw_lesions

FINE_STEP_MM = 1.25
SLAB_SLICES = 8
REFERENCE_THICKNESS_MM = 2.5  # thickness at which Nuisance.noise_hu applies (smooth kernel)


@dataclass(frozen=True)
class PhantomOptions:
    """What to write besides the thin series (config section `demo`)."""

    matrix: int
    localizer: bool
    thick_series: bool

    @classmethod
    def from_config(cls, demo: dict) -> PhantomOptions:
        return settings_from(cls, demo)


@dataclass
class Scan:
    """A noise-free scan in HU on a regular LPS grid, with its truth masks (z, y, x)."""

    hu: np.ndarray
    lungs: np.ndarray
    lesions: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    noise_free: bool = True  # False for a real background, which already has blur and noise

    @property
    def pixel_mm(self) -> float:
        return float(self.xs[1] - self.xs[0])

    @property
    def thickness_mm(self) -> float:
        return float(self.zs[1] - self.zs[0])

    def affine(self) -> np.ndarray:
        """NIfTI (RAS) affine of arrays transposed to (x, y, z)."""
        return np.array(
            [
                [-self.pixel_mm, 0, 0, -self.xs[0]],
                [0, -float(self.ys[1] - self.ys[0]), 0, -self.ys[0]],
                [0, 0, self.thickness_mm, self.zs[0]],
                [0, 0, 0, 1.0],
            ]
        )


@dataclass
class PhantomResult:
    patient_id: str
    label: str
    identity: Identity
    record: dict


def render_synthetic(plan: PatientPlan, nuisance: Nuisance, matrix: int) -> tuple[Scan, dict]:
    """Render the synthetic chest of `plan` with its lesions; returns the scan and a description."""
    chest = draw_chest(patient_rng(plan.seed, plan.index, STREAM_ANATOMY), nuisance.body_scale)
    fov = max(nuisance.fov_mm, 2 * chest.body_a + 24.0)
    pixel = fov / matrix
    xs = (np.arange(matrix) - (matrix - 1) / 2) * pixel
    ys = (np.arange(matrix) - (matrix - 1) / 2) * pixel + 0.08 * chest.body_b
    thickness = nuisance.slice_thickness_mm
    sub = max(1, math.ceil(thickness / FINE_STEP_MM - 1e-9))
    z_lo, z_hi = chest.z_range
    zs = z_lo + (np.arange(int((z_hi - z_lo) // thickness)) + 0.5) * thickness
    lo = np.array([-chest.cavity_a, -chest.cavity_b, z_lo])
    hi = np.array([chest.cavity_a, chest.cavity_b, z_hi])
    sampler = LungSampler.from_function(chest.lung_labels, lo, hi)
    lesions = draw_lesions(plan.label, sampler, patient_rng(plan.seed, plan.index, STREAM_LESIONS))
    shape = (zs.size, matrix, matrix)
    scan = Scan(np.empty(shape, np.float32), np.empty(shape, np.uint8), np.empty(shape, np.uint8), xs, ys, zs)
    offsets = (np.arange(sub) - (sub - 1) / 2) * (thickness / sub)
    for start in range(0, zs.size, SLAB_SLICES):
        ks = np.arange(start, min(zs.size, start + SLAB_SLICES))
        fine_z = (zs[ks][:, None] + offsets[None, :]).ravel()
        slab = chest.render(xs, ys, fine_z, soft_mm=pixel)
        hu, lesion = apply_lesions(lesions, slab, xs, ys, fine_z, pixel)
        grouped = (len(ks), sub, matrix, matrix)
        scan.hu[ks] = hu.reshape(grouped).mean(axis=1)
        right = (slab["lungs"] == RIGHT).reshape(grouped).mean(axis=1)
        left = (slab["lungs"] == LEFT).reshape(grouped).mean(axis=1)
        scan.lungs[ks] = np.where(right + left >= 0.5, np.where(right >= left, RIGHT, LEFT), 0)
        scan.lesions[ks] = lesion.reshape(grouped).mean(axis=1) >= 0.5
    return scan, {"lesions": lesions.describe(), "fov_mm": round(fov, 1)}


def acquire(hu: np.ndarray, pixel_mm: float, thickness_mm: float, kernel: str, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Apply the kernel's blur and add its noise: what the scanner would reconstruct."""
    spec = KERNELS[kernel]
    blurred = ndimage.gaussian_filter(hu, sigma=(0, spec["psf_mm"] / pixel_mm, spec["psf_mm"] / pixel_mm))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), sigma=(0, spec["grain_px"], spec["grain_px"]))
    noise /= noise.std() or 1.0
    sd = noise_hu * spec["noise_factor"] * math.sqrt(REFERENCE_THICKNESS_MM / thickness_mm)
    return blurred + sd * noise


def _pad_outside_fov(hu: np.ndarray, representation: int, intercept: float) -> None:
    """Pixels outside the reconstruction circle: -2048 HU (signed) or stored 0 (unsigned)."""
    n = hu.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    outside = xx**2 + yy**2 > (n / 2) ** 2
    hu[:, outside] = -2048.0 if representation == 1 else intercept


def _thick(scan: Scan, thickness_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Average groups of thin slices into a thicker reconstruction (about 5 mm)."""
    factor = max(2, round(5.0 / thickness_mm)) if thickness_mm < 5.0 else 2
    n = scan.zs.size // factor * factor
    hu = scan.hu[:n].reshape(-1, factor, *scan.hu.shape[1:]).mean(axis=1)
    zs = scan.zs[:n].reshape(-1, factor).mean(axis=1)
    return hu, zs


def _projection(scan: Scan) -> np.ndarray:
    """Coronal topogram: attenuation integrated along y, scaled into 12 bits."""
    mu = np.clip((scan.hu + 1000.0) / 1000.0, 0, None)
    return np.clip(mu.sum(axis=1) * float(scan.ys[1] - scan.ys[0]) * 6.0, 0, 4095)


def save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_study(scan: Scan, plan: PatientPlan, nuisance: Nuisance, options: PhantomOptions, dicom_dir: Path) -> Identity:
    """Acquire and write the series of one study; returns the identity planted in it."""
    identity = draw_identity(patient_rng(plan.seed, plan.index, STREAM_IDENTITY), plan.patient_id)
    noise_rng = patient_rng(plan.seed, plan.index, STREAM_NOISE)
    names = FileNamer(patient_rng(plan.seed, plan.index, STREAM_FILES))
    study = StudyInfo(
        key=f"lungcam-phantom-{plan.seed}-{plan.index}",
        identity=identity,
        manufacturer=nuisance.manufacturer,
        model=nuisance.model,
        kvp=nuisance.kvp,
        tube_current_ma=nuisance.tube_current_ma,
        patient_position=nuisance.patient_position,
        date=f"2020{3 + plan.index % 9:02d}{1 + plan.index % 28:02d}",
        time=f"{8 + plan.index % 10:02d}{plan.index % 60:02d}00",
    )
    rep, intercept = nuisance.pixel_representation, nuisance.rescale_intercept

    def reconstruct(hu: np.ndarray, thickness: float, kernel: str) -> np.ndarray:
        if not scan.noise_free:  # a real scan was reconstructed by its scanner already
            return hu.copy()
        image = acquire(hu, scan.pixel_mm, thickness, kernel, nuisance.noise_hu, noise_rng)
        _pad_outside_fov(image, rep, intercept)
        return image

    if plan.scout_only:
        write_localizer(_projection(scan), scan.xs, scan.zs, study, dicom_dir, names)
        return identity
    thin = reconstruct(scan.hu, scan.thickness_mm, nuisance.kernel)
    spec = SeriesSpec(2, f"Thorax {scan.thickness_mm:g} {nuisance.kernel}", nuisance.kernel, scan.thickness_mm)
    write_axial_series(thin, scan.xs, scan.ys, scan.zs, spec, study, rep, intercept, dicom_dir, names)
    if options.thick_series:
        hu, zs = _thick(scan, scan.thickness_mm)
        thickness = float(zs[1] - zs[0])
        thick = reconstruct(hu, thickness, "B30f")
        spec = SeriesSpec(3, f"Thorax {thickness:g} B30f", "B30f", thickness)
        write_axial_series(thick, scan.xs, scan.ys, zs, spec, study, rep, intercept, dicom_dir, names)
    if options.localizer:
        write_localizer(_projection(scan), scan.xs, scan.zs, study, dicom_dir, names)
    return identity


def generate_patient(
    plan: PatientPlan, options: PhantomOptions, dicom_dir: Path, lungs_path: Path, lesions_path: Path, background=None
) -> PhantomResult:
    """Write one patient's study and truth masks; `background` is a real normal CT to reuse."""
    nuisance = plan.nuisance
    if background is None:
        scan, description = render_synthetic(plan, nuisance, options.matrix)
    else:
        scan, description = background.with_lesions(plan)
    with atomic_path(dicom_dir) as building:  # a killed job leaves no half-written study
        identity = write_study(scan, plan, nuisance, options, building)
    affine = scan.affine()
    save_mask(scan.lungs, affine, Path(lungs_path))
    save_mask(scan.lesions, affine, Path(lesions_path))
    voxel_ml = scan.pixel_mm * float(scan.ys[1] - scan.ys[0]) * scan.thickness_mm / 1000.0
    record = {
        "patient_id": plan.patient_id,
        "label": plan.label,
        "nuisance": nuisance.as_dict(),
        **description,
        "slices": int(scan.zs.size),
        "matrix": int(scan.hu.shape[-1]),
        "right_lung_ml": round(float((scan.lungs == RIGHT).sum() * voxel_ml), 1),
        "left_lung_ml": round(float((scan.lungs == LEFT).sum() * voxel_ml), 1),
        "lesion_ml": round(float(scan.lesions.sum() * voxel_ml), 1),
    }
    return PhantomResult(plan.patient_id, plan.label, identity, record)
