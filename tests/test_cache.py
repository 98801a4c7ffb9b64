"""Model-input cache: content, memory mapping, and exact geometry back to the scan's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from lungcam.cache import CacheSettings, build_cache, load_cache, to_source_grid
from lungcam.ingest import VOLUME_NAME, ingest_patient

from .conftest import write_painted_study

SETTINGS = CacheSettings(spacing_mm=(2.5, 1.25, 1.25), margin_mm=10.0, window_hu=(-1150.0, 350.0), mask_outside_lungs=False)


@pytest.fixture(scope="module", params=["HFS", "FFS"])
def cached(request, tmp_path_factory, config):
    """A painted phantom written head first or feet first, ingested and cached with its true lungs."""
    from lungcam.ingest import IngestSettings

    root = tmp_path_factory.mktemp(f"cache-{request.param}")
    write_painted_study(root / "dicom", root / "truth.nii.gz", seed=3, position=request.param)
    ingest_patient("P", root / "dicom", root / "stage", IngestSettings.from_config(config["ingest"]))
    volume = root / "stage" / VOLUME_NAME
    truth = resample_from_to(nib.load(root / "truth.nii.gz"), nib.load(volume), order=0)
    nib.save(nib.Nifti1Image(np.asarray(truth.dataobj).astype(np.uint8), truth.affine), root / "lungs.nii.gz")
    summary = build_cache(volume, root / "lungs.nii.gz", root / "cache", SETTINGS)
    return root, volume, summary, request.param


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
