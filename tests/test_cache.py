"""Model-input cache: content, memory mapping, and exact geometry back to the scan's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from lungcam.train.cache import load_cache, to_source_grid


def test_cache_is_cropped_windowed_and_memory_mapped(cached):
    root, volume, summary, _ = cached
    image, lungs, transform = load_cache(root / "cache")
    assert isinstance(image, np.memmap) and image.dtype == np.uint8 and lungs.dtype == np.uint8
    assert list(image.shape) == transform.shape == summary["shape"]
    assert transform.spacing_mm == [2.5, 1.25, 1.25]
    inside = np.argwhere(lungs > 0)
    margin = np.array([10.0 / 2.5, 10.0 / 1.25, 10.0 / 1.25])
    assert np.all(inside.min(axis=0) >= np.floor(margin) - 1)  # the margin around the lungs is there
    assert np.all(np.array(image.shape) - 1 - inside.max(axis=0) >= np.floor(margin) - 1)
    hu = transform.to_hu(image)
    assert abs(np.median(hu[lungs == 1]) - (-500)) < 10 and abs(np.median(hu[lungs == 2]) - (-200)) < 10


def test_cached_lungs_map_back_onto_the_scan(cached):
    root, volume, _, _ = cached
    _, lungs, transform = load_cache(root / "cache")
    back = to_source_grid(lungs > 0, transform) > 0.5
    original = np.asarray(nib.load(root / "lungs.nii.gz").dataobj) > 0
    assert back.shape == original.shape
    assert 2 * (back & original).sum() / (back.sum() + original.sum()) > 0.97


def test_a_peak_lands_on_its_physical_point(cached):
    """A map peak at a known scanner position in cache space lands there on the scan's grid."""
    root, volume, _, position = cached
    _, lungs, transform = load_cache(root / "cache")
    source = nib.load(volume)
    rng = np.random.default_rng(0)
    lung_voxels = np.argwhere(np.asarray(nib.load(root / "lungs.nii.gz").dataobj) > 0)
    for target in lung_voxels[rng.choice(len(lung_voxels), 5, replace=False)]:
        world = nib.affines.apply_affine(source.affine, target)
        index = nib.affines.apply_affine(np.linalg.inv(np.array(transform.affine)), world)  # cache x, y, z
        z, y, x = np.ogrid[: transform.shape[0], : transform.shape[1], : transform.shape[2]]
        peak = np.exp(-((x - index[0]) ** 2 + (y - index[1]) ** 2 + (z - index[2]) ** 2) / 2.0)
        mapped = to_source_grid(peak, transform)
        found = np.unravel_index(np.argmax(mapped), mapped.shape)
        assert np.all(np.abs(np.array(found) - target) <= 1), (position, found, target)


def test_a_thin_series_is_cached_as_a_reconstruction_at_the_cache_spacing(tmp_path):
    """A 1 mm series cached at 5 mm: each cache slice stands for its 5 mm, so its noise falls as a
    5 mm reconstruction's would (by about sqrt(5)), not kept at the 1 mm slice's level; along the
    axes the cache keeps at the scan's spacing nothing is smoothed."""
    from lungcam.train.cache import CacheSettings, build_cache

    rng = np.random.default_rng(0)
    shape = (48, 48, 120)  # x, y, z at 1 mm
    hu = (-800.0 + 50.0 * rng.standard_normal(shape)).astype(np.float32)
    lungs = np.zeros(shape, np.uint8)
    lungs[8:-8, 8:-8, 10:-10] = 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(lungs, affine), tmp_path / "lungs.nii.gz")

    def cached_noise(spacing_mm: tuple, antialias: bool = True) -> np.ndarray:
        settings = CacheSettings(
            spacing_mm=spacing_mm, margin_mm=0.0, window_hu=(-1150.0, 350.0), mask_outside_lungs=False, antialias=antialias
        )
        out = tmp_path / f"cache-{spacing_mm[0]}-{antialias}"
        build_cache(tmp_path / "scan.nii.gz", tmp_path / "lungs.nii.gz", out, settings)
        image, cached_lungs, transform = load_cache(out)
        return transform.to_hu(np.asarray(image))[np.asarray(cached_lungs) > 0]

    values = cached_noise((5.0, 1.0, 1.0))
    assert abs(values.mean() - (-800.0)) < 3.0
    assert 50.0 / np.sqrt(5.0) * 0.85 < values.std() < 50.0 / np.sqrt(5.0) * 1.15, values.std()
    assert abs(cached_noise((1.0, 1.0, 1.0)).std() - 50.0) < 2.0
    assert abs(cached_noise((5.0, 1.0, 1.0), antialias=False).std() - 50.0) < 2.0  # sampled at the centres, as before
