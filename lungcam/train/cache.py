"""Model-input cache: each patient's lungs, resampled, cropped, windowed, memory-mappable.

Training reads thousands of slices per epoch; decoding gzip NIfTI and resampling every time
would starve the GPU. Each patient is therefore resampled once to `cache.spacing_mm` (each cache
voxel averaging its extent, `cache.antialias`), cropped to the lung bounding box plus
`cache.margin_mm`, windowed to `cache.window_hu` and stored as uint8 `.npy` files that
`np.load(..., mmap_mode="r")` opens without reading them. Axes are LPS (z, y, x) with z = axial
slice. `transform.json` holds the affine from cache voxel (x, y, z) index to scanner RAS mm, so
maps computed in cache space (CAM heatmaps) go back onto the scan's own grid exactly
(`to_source_grid`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

from lungcam.core.atomic import atomic_path
from lungcam.core.config import settings_from
from lungcam.core.orientation import LPSView

IMAGE_NAME = "image.npy"
LUNGS_NAME = "lungs.npy"
TRANSFORM_NAME = "transform.json"


@dataclass(frozen=True)
class CacheSettings:
    """Config section `cache`."""

    spacing_mm: tuple[float, float, float]  # z, y, x
    margin_mm: float
    window_hu: tuple[float, float]
    mask_outside_lungs: bool
    antialias: bool

    @classmethod
    def from_config(cls, section: dict) -> CacheSettings:
        return settings_from(cls, section)


@dataclass
class CacheTransform:
    """Geometry of a cached patient: cache index (x, y, z) -> RAS mm, and its source grid."""

    affine: list
    shape: list  # z, y, x
    spacing_mm: list  # z, y, x
    window_hu: list
    source_affine: list
    source_shape: list

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> CacheTransform:
        return cls(**json.loads(Path(path).read_text()))

    def to_hu(self, image: np.ndarray) -> np.ndarray:
        """uint8 cache values -> HU (within the window; quantised to (hi - lo) / 255)."""
        lo, hi = self.window_hu
        return lo + image.astype(np.float32) * ((hi - lo) / 255.0)


def _antialias(hu: np.ndarray, ratio: np.ndarray) -> None:
    """Smooth `hu` (z, y, x, in place) along every axis the cache samples more coarsely than the
    scan, so that a cache voxel stands for its whole extent, as a scan reconstructed at the cache
    spacing would, instead of for the thin source voxel nearest its centre.

    Without it, a 1 mm series cached at 5 mm keeps one 1 mm slice per cache slice: more than
    twice the noise of a 5 mm series of the same patient, and a sharp kernel's grain that a
    smooth kernel's series lacks, so the model would see the acquisition instead of the lung.
    The Gaussian adds the variance that takes a source voxel's width (1) to the cache voxel's
    (`ratio`): sigma^2 = (ratio^2 - 1) / 12, in source voxels.
    """
    for axis, r in enumerate(ratio):
        if r > 1.0:
            ndimage.gaussian_filter1d(hu, np.sqrt((r * r - 1.0) / 12.0), axis=axis, output=hu, mode="nearest")


def _resample(data: np.ndarray, start: np.ndarray, ratio: np.ndarray, shape: tuple, order: int, fill: float) -> np.ndarray:
    """Sample data (z, y, x) at start + ratio * index (per axis), voxel centre to voxel centre."""
    return ndimage.affine_transform(
        data, np.diag(ratio), offset=start, output_shape=shape, order=order, mode="constant", cval=fill, prefilter=False
    )


def build_cache(nifti_path: Path | str, lungs_path: Path | str, out_dir: Path | str, settings: CacheSettings) -> dict:
    """Write the cache of one patient; returns a summary for the logs and QC."""
    source = nib.load(nifti_path)
    view = LPSView.of(source)
    hu = np.ascontiguousarray(view.lps(np.asarray(source.dataobj, dtype=np.float32)))
    lungs = np.ascontiguousarray(view.lps(np.asarray(nib.load(lungs_path).dataobj, dtype=np.uint8)))
    spacing = np.array(view.spacing)
    target = np.array(settings.spacing_mm)
    inside = np.argwhere(lungs > 0)
    if inside.size == 0:
        raise ValueError(f"{lungs_path}: no lung voxels to crop to")
    margin = settings.margin_mm / spacing
    lo = inside.min(axis=0) - margin
    hi = inside.max(axis=0) + margin
    ratio = target / spacing
    shape = tuple(int(n) for n in np.ceil((hi - lo + 1) / ratio))
    start = lo + 0.5 * ratio - 0.5  # centre of cache voxel 0, in source (z, y, x) voxels
    window = settings.window_hu
    if settings.antialias:
        _antialias(hu, ratio)
    image = _resample(hu, start, ratio, shape, order=1, fill=-1024.0)
    cached_lungs = _resample(lungs, start, ratio, shape, order=0, fill=0).astype(np.uint8)
    scaled = np.clip((image - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    image8 = np.rint(scaled * 255.0).astype(np.uint8)
    if settings.mask_outside_lungs:
        near = ndimage.binary_dilation(cached_lungs > 0, iterations=max(1, int(round(5.0 / target[1]))))
        image8[~near] = 0
    # cache (x, y, z) index -> source LPS-array (x, y, z) index -> RAS.
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(ratio[::-1])
    index_map[:3, 3] = start[::-1]
    transform = CacheTransform(
        affine=(view.lps_affine() @ index_map).tolist(),
        shape=list(shape),
        spacing_mm=target.tolist(),
        window_hu=list(window),
        source_affine=source.affine.tolist(),
        source_shape=list(source.shape[:3]),
    )
    with atomic_path(out_dir) as out:
        out.mkdir()
        np.save(out / IMAGE_NAME, image8)
        np.save(out / LUNGS_NAME, cached_lungs)
        transform.save(out / TRANSFORM_NAME)
    return {
        "shape": list(shape),
        "lung_slices": int((cached_lungs > 0).any(axis=(1, 2)).sum()),
        "megabytes": round(2 * image8.nbytes / 1e6, 2),
    }


def load_cache(folder: Path | str) -> tuple[np.ndarray, np.ndarray, CacheTransform]:
    """(image uint8, lungs uint8, transform), the arrays memory-mapped."""
    folder = Path(folder)
    return (
        np.load(folder / IMAGE_NAME, mmap_mode="r"),
        np.load(folder / LUNGS_NAME, mmap_mode="r"),
        CacheTransform.load(folder / TRANSFORM_NAME),
    )


def to_source_grid(volume: np.ndarray, transform: CacheTransform, order: int = 1) -> np.ndarray:
    """Map a cache-space volume (z, y, x) onto the source scan's grid (its voxel order)."""
    cache_img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)), np.array(transform.affine))
    reference = (tuple(transform.source_shape), np.array(transform.source_affine))
    return np.asarray(resample_from_to(cache_img, reference, order=order, cval=0.0).dataobj)
