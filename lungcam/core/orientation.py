"""Move volumes between their stored voxel order and one working order, and back.

Stages compute on arrays in LPS order (z, y, x): x towards the patient's left, y posterior, z
superior, as DICOM and lungmask do. Volumes on disk keep dcm2niix's voxel order (ingest's
orientation policy), so every result computed in LPS order is put back into the source order
before it is written, on exactly the source grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from lungcam.core.atomic import atomic_path

LPS = ("L", "P", "S")
GRID_TOLERANCE_VOXELS = 0.01  # corners this close (voxels) count as the same grid


@dataclass
class LPSView:
    """The transform between a NIfTI's voxel order and LPS (z, y, x) order."""

    source: nib.Nifti1Image
    to_lps: np.ndarray  # nibabel orientation transform, source voxel axes -> (x=L, y=P, z=S)

    @classmethod
    def of(cls, img: nib.Nifti1Image) -> LPSView:
        current = orientations.io_orientation(img.affine)
        return cls(img, orientations.ornt_transform(current, orientations.axcodes2ornt(LPS)))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the LPS-ordered array."""
        zooms = np.asarray(self.source.header.get_zooms()[:3], float)
        xyz = np.empty(3)
        xyz[self.to_lps[:, 0].astype(int)] = zooms
        return float(xyz[2]), float(xyz[1]), float(xyz[0])

    def lps(self, data: np.ndarray) -> np.ndarray:
        """Source-ordered array -> LPS (z, y, x) array (a view where possible)."""
        return orientations.apply_orientation(data, self.to_lps).transpose(2, 1, 0)

    def source_order(self, lps_zyx: np.ndarray) -> np.ndarray:
        """LPS (z, y, x) array -> the source's voxel order."""
        back = orientations.ornt_transform(orientations.axcodes2ornt(LPS), orientations.io_orientation(self.source.affine))
        return orientations.apply_orientation(lps_zyx.transpose(2, 1, 0), back)

    def lps_affine(self) -> np.ndarray:
        """Affine (RAS mm) of the LPS-ordered array, indexed (x, y, z) like a NIfTI."""
        shape = self.source.shape[:3]
        return self.source.affine @ orientations.inv_ornt_aff(self.to_lps, shape)

    def slice_z_mm(self) -> np.ndarray:
        """Height (mm, patient superior positive, as DICOM's z) of the centre of each LPS slice."""
        shape = np.empty(3, int)  # (x, y, z) size of the LPS-ordered array
        shape[self.to_lps[:, 0].astype(int)] = self.source.shape[:3]
        columns = [np.full(shape[2], (shape[0] - 1) / 2), np.full(shape[2], (shape[1] - 1) / 2), np.arange(shape[2]), np.ones(shape[2])]
        return (self.lps_affine() @ np.stack(columns))[2]

    def save(self, lps_zyx: np.ndarray, path: Path | str, dtype=np.uint8) -> None:
        """Write an LPS-ordered result on the source grid (same shape and affine)."""
        data = np.ascontiguousarray(self.source_order(lps_zyx)).astype(dtype)
        img = nib.Nifti1Image(data, self.source.affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(self.source.affine, code=1)
        img.set_sform(self.source.affine, code=1)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)


def load_hu_lps(path: Path | str) -> tuple[np.ndarray, LPSView]:
    """A CT volume as float32 HU in LPS (z, y, x) order, with its view for writing results back."""
    img = nib.load(path)
    view = LPSView.of(img)
    hu = np.asarray(img.dataobj, dtype=np.float32)
    return np.ascontiguousarray(view.lps(hu)), view


def mask_on_grid(mask_image, reference):
    """The voxels of `mask_image` (a nibabel image) on the grid of `reference`, nearest neighbour.

    A mask (lesions, or a phantom's truth) usually lies on the scan's own grid, only in another
    axis order (the demo's truth is written in LPS order, dcm2niix's volumes in the order of the
    slices): then it is transposed and flipped, which is exact and far faster than resampling.
    Any other grid is resampled.
    """
    from nibabel.processing import resample_from_to

    turned = mask_image.as_reoriented(
        orientations.ornt_transform(orientations.io_orientation(mask_image.affine), orientations.io_orientation(reference.affine))
    )
    if turned.shape[:3] == reference.shape[:3]:
        corners = np.array(
            [[i, j, k, 1.0] for i in (0, reference.shape[0] - 1) for j in (0, reference.shape[1] - 1) for k in (0, reference.shape[2] - 1)]
        )
        moved = corners @ (np.linalg.inv(reference.affine) @ turned.affine).T
        if np.abs(moved - corners).max() < GRID_TOLERANCE_VOXELS:
            return np.asarray(turned.dataobj)
    return np.asarray(resample_from_to(mask_image, reference, order=0).dataobj)
