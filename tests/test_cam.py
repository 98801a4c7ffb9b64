"""Class activation maps: geometry from model space to the scan, value range, lungs only."""

from __future__ import annotations

import ast
import dataclasses
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lungcam.cam.maps import MapSettings, cache_cam, scan_cam, slice_cams, smooth_within_lungs
from lungcam.core.folds import target_class
from lungcam.core.map_sampling import shift_offsets
from lungcam.train.cache import load_cache
from lungcam.train.models import build_model
from lungcam.train.slice_bank import bank_preprocessing, zscore

from .conftest import REPO

INPUT = 48  # model input; cache slices are not square, so the resize is anisotropic


class PeakMaps(nn.Module):
    """Stands in for Hu2020Net.maps: a Gaussian at a given model-space pixel, at all three scales."""

    def __init__(self, row: float, column: float):
        super().__init__()
        self.row, self.column = row, column

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        i, j = torch.meshgrid(torch.arange(INPUT, dtype=torch.float32), torch.arange(INPUT, dtype=torch.float32), indexing="ij")
        peak = torch.exp(-((i - self.row) ** 2 + (j - self.column) ** 2) / 2.0)
        return [peak.expand(x.shape[0], 2, INPUT, INPUT)] * 3


@pytest.mark.parametrize("smooth_mm", [0.0, 4.0])
def test_a_cam_peak_in_model_space_lands_on_its_physical_point(cached, smooth_mm):
    """A map peak at a model-space pixel of a lung slice is a known scanner point (through the
    cache transform); on the scan's grid the map peaks there within one voxel, head first and
    feet first, with anisotropic cache voxels and an anisotropic resize to the model input, and
    also after smoothing within the lungs (`cam.smooth_mm`)."""
    root, volume, _, position = cached
    image, lungs, transform = load_cache(root / "cache")
    to_scan = np.linalg.inv(nib.load(volume).affine) @ np.array(transform.affine)  # cache (x, y, z) -> scan voxel
    height, width = image.shape[1:]
    rng = np.random.default_rng(1)
    lung_voxels = np.argwhere(np.asarray(lungs) > 0)
    for z, y, x in lung_voxels[rng.choice(len(lung_voxels), 5, replace=False)]:
        expected = nib.affines.apply_affine(to_scan, [x, y, z])
        # The resize to the model input keeps pixel centres: model = (cache + 0.5) * INPUT / size - 0.5
        model = PeakMaps((y + 0.5) * INPUT / height - 0.5, (x + 0.5) * INPUT / width - 0.5)
        maps = np.zeros(image.shape, dtype=np.float32)
        maps[z] = slice_cams(model, np.asarray(image[z : z + 1]), 1, INPUT, torch.device("cpu"))[0]
        mapped = scan_cam(maps / maps.max(), transform, np.ones(nib.load(volume).shape), smooth_mm)
        found = np.unravel_index(np.argmax(mapped), mapped.shape)
        assert np.all(np.abs(np.array(found) - expected) <= 1.0), (position, found, expected)


@pytest.mark.parametrize(
    "kind, method", [("hu2020", "lungcam_mean"), ("mil", "lungcam_mean"), ("hu2020", "gradcampp"), ("mil", "integrated_gradients")]
)
def test_patient_cam_keeps_the_model_units_and_is_zero_outside_the_lungs(cached, tmp_path, kind, method):
    """Maps are not scaled per scan: the cache map is the method's own output on the lung slices
    (hu2020, lungcam_mean: the class maps' mean, whose maximum per slice is near the logit), and
    on the scan's grid it is v / (v + 1) of it, in [0, 1)."""
    root, volume, _, _ = cached
    torch.manual_seed(0)
    model = build_model(kind, 3, 0.25, 0.5).eval()
    metadata = {
        "model": kind,
        "classes": ["COVID-19", "CAP", "NP"],
        "settings": {"width": 0.25, "dropout": 0.5},
        "preprocessing": bank_preprocessing(INPUT, 0.25, {}),
    }
    cam, transform = cache_cam(model, metadata, root / "cache", 0, torch.device("cpu"), method, steps=4)
    _, lungs, _ = load_cache(root / "cache")
    assert cam.max() > 0 and cam.min() >= 0 and not cam[np.asarray(lungs) == 0].any()
    if method == "lungcam_mean" and kind == "hu2020":
        image = np.asarray(load_cache(root / "cache")[0])
        with_lung = np.flatnonzero(np.asarray(lungs).any(axis=(1, 2)))
        direct = slice_cams(model, image[with_lung], 0, INPUT, torch.device("cpu")) * (np.asarray(lungs)[with_lung] > 0)
        assert np.allclose(cam[with_lung], direct, atol=1e-5)
    scan_lungs = np.asarray(nib.load(root / "lungs.nii.gz").dataobj)
    mapped = scan_cam(cam, transform, scan_lungs)
    assert mapped.shape == nib.load(volume).shape and mapped.dtype == np.float32
    assert 0 <= mapped.min() and 0 < mapped.max() < 1 and not mapped[scan_lungs == 0].any()
    assert mapped.max() <= cam.max() / (cam.max() + 1) * (1 + 1e-5)  # one fixed scale, not the scan's own maximum


def test_smoothing_within_the_lungs_keeps_a_constant_map_up_to_the_pleura():
    """Normalised convolution averages lung voxels only: a map that is the same everywhere in
    the lungs stays so, at their edge too (a plain blur would darken the edge), with anisotropic
    voxels; outside the lungs it is 0."""
    lungs = np.zeros((30, 40, 12), dtype=np.uint8)
    lungs[5:14, 6:34, 2:10], lungs[17:26, 6:34, 2:10] = 1, 2
    cam = np.where(lungs > 0, 0.4, 0.9).astype(np.float32)  # what lies outside must not leak in
    smoothed = smooth_within_lungs(cam, lungs, (0.8, 0.8, 2.5), 4.0)
    assert smoothed.dtype == np.float32 and not smoothed[lungs == 0].any()
    assert smoothed[lungs > 0] == pytest.approx(0.4, abs=1e-5)
    assert np.array_equal(smooth_within_lungs(cam, lungs, (0.8, 0.8, 2.5), 0.0), np.where(lungs > 0, cam, 0))


def test_smoothing_within_the_lungs_puts_the_maximum_on_a_supported_top_not_a_spike_at_a_lung_tip():
    """Where maps can miss: their maximum a few voxels at the
    lung's edge, often at the apex or the base where little lung surrounds them, higher than the
    broad top over the lesion. Smoothed within the lungs, such a voxel is averaged with the lower
    lung around it and the top that the lung around it agrees with is the maximum."""
    spacing = (1.5, 1.5, 2.5)
    lungs = np.zeros((60, 60, 30), dtype=np.uint8)
    lungs[10:50, 10:50, 3:25] = 1
    lungs[28:31, 28:31, 25:27] = 1  # the apex: a thin tip above the lung's top slice
    x, y, z = np.meshgrid(*(np.arange(n) * d for n, d in zip(lungs.shape, spacing)), indexing="ij")
    top = (20, 40, 12)  # the lesion's centre (voxel)
    cam = 0.5 + 0.4 * np.exp(-sum((c - t * d) ** 2 for c, t, d in zip((x, y, z), top, spacing)) / (2 * 8.0**2))
    cam[28:31, 28:31, 24:27] = 1.0  # the spike: the tip and the lung's top slice below it
    cam = np.where(lungs > 0, cam, 0).astype(np.float32)
    smoothed = smooth_within_lungs(cam, lungs, spacing, 4.0)
    assert np.unravel_index(np.argmax(cam), cam.shape)[2] >= 24
    assert np.abs((np.array(np.unravel_index(np.argmax(smoothed), cam.shape)) - top) * spacing).max() <= spacing[2]


def test_target_class():
    classes = ["COVID-19", "CAP", "NP"]
    assert target_class({"label": "CAP", "predicted": "NP"}, classes, "predicted") == "NP"
    assert target_class({"label": "CAP", "predicted": "NP"}, classes, "label") == "CAP"
    assert target_class({"label": "", "predicted": "NP"}, classes, "label") == "NP"  # prediction mode, no label


def lesion_fixture():
    """Two lungs on a 2 x 1 x 1.5 mm grid (RAS affine, x flipped as in most NIfTI from DICOM),
    a large blob in the right lung, a small one in the left, and a speck."""
    lungs = np.zeros((60, 40, 30), dtype=np.uint8)
    lungs[5:28, 5:35, 3:27] = 1  # voxel x index low = patient right here (affine x axis negative)
    lungs[32:55, 5:35, 3:27] = 2
    cam = np.zeros(lungs.shape, dtype=np.float32)
    cam[10:16, 10:20, 10:14] = 1.0  # 6*10*4 voxels of 3 uL = 0.72 mL
    cam[40:43, 10:13, 10:12] = 0.8  # 3*3*2 = 18 voxels = 0.054 mL
    cam[50, 30, 20] = 0.9  # one voxel
    affine = np.diag([-2.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [100.0, -20.0, 30.0]
    return cam, lungs, affine


def test_lesion_candidates_volume_side_centroid_and_burden():
    from lungcam.cam.lesions import LesionSettings, find_lesions

    cam, lungs, affine = lesion_fixture()
    table, burden = find_lesions(cam, lungs, affine, LesionSettings("relative", 1.0, 0.5, 0.0))
    assert list(table["volume_ml"]) == [0.72, 0.054, 0.003] and list(table["lesion"]) == [1, 2, 3]
    assert list(table["side"]) == ["right", "left", "left"] and table["peak_score"].iloc[0] == 1.0
    centre_ras = affine[:3, :3] @ np.array([12.5, 14.5, 11.5]) + affine[:3, 3]
    assert table.iloc[0][["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].tolist() == pytest.approx(
        [-centre_ras[0], -centre_ras[1], centre_ras[2]], abs=0.05
    )
    assert burden["right_percent"] == pytest.approx(100 * 240 / lungs[lungs == 1].size, abs=1e-3)
    big_only, burden_big = find_lesions(cam, lungs, affine, LesionSettings("relative", 1.0, 0.5, 0.5))
    assert len(big_only) == 1 and burden_big["left_percent"] == 0  # dropped components are not burden
    strict, _ = find_lesions(cam, lungs, affine, LesionSettings("relative", 1.0, 0.95, 0.0))
    assert list(strict["volume_ml"]) == [0.72]
    otsu, _ = find_lesions(cam, lungs, affine, LesionSettings("otsu", 1.0, 0.5, 0.0))
    assert len(otsu) == 3
    empty, nothing = find_lesions(np.zeros_like(cam), lungs, affine, LesionSettings("otsu", 1.0, 0.5, 0.0))
    assert empty.empty and nothing["total_percent"] == 0


def test_an_absolute_threshold_flags_nothing_in_a_low_map():
    """The absolute threshold is one map value for every scan: a scan whose map stays low (a
    normal scan) gets no candidate, where a share of its own maximum would flag its top, and the
    same shape at twice the height is flagged."""
    from lungcam.cam.lesions import LesionSettings, find_lesions

    cam, lungs, affine = lesion_fixture()
    absolute = LesionSettings("absolute", 0.85, 0.5, 0.0)
    found, _ = find_lesions(cam, lungs, affine, absolute)
    assert list(found["volume_ml"]) == [0.72, 0.003]  # the blob (1.0) and the speck (0.9), not the small blob (0.8)
    low = cam * 0.4
    nothing, burden = find_lesions(low, lungs, affine, absolute)
    assert nothing.empty and burden["total_percent"] == 0 and burden["flagged_ml"] == 0
    assert len(find_lesions(low, lungs, affine, LesionSettings("relative", 0.85, 0.5, 0.0))[0]) == 3  # relative flags it all the same
    assert len(find_lesions(low * 5, lungs, affine, absolute)[0]) == 3


def test_localisation_figures_of_a_map_that_finds_its_lesion():
    from lungcam.cam.lesions import LesionSettings
    from lungcam.cam.localisation import cohort_summary, patient_localisation, slice_scores

    cam, lungs, affine = lesion_fixture()
    lesion = np.zeros(lungs.shape, dtype=bool)
    lesion[10:16, 10:20, 10:14] = True  # the big blob is the lesion; the small blob and the speck are not
    result = patient_localisation(cam, lesion, lungs, affine, LesionSettings("relative", 1.0, 0.5, 0.0))
    assert result["pointing_game"] == 1.0 and result["hit"] == 1.0 and result["slice_auc"] == 1.0
    assert result["dice"] == pytest.approx(2 * 240 / (240 + 18 + 1 + 240))
    assert result["best_dice"] == 1.0 and result["best_threshold"] > 0.85  # above the speck (0.9) and the small blob
    elsewhere = patient_localisation(
        np.where(lesion, 0.0, cam).astype(np.float32), lesion, lungs, affine, LesionSettings("relative", 1.0, 0.5, 0.0)
    )
    assert elsewhere["pointing_game"] == 0.0 and elsewhere["hit"] == 0.0 and elsewhere["dice"] == 0.0
    assert result["peak_distance_mm"] == 0.0 and result["lesion_in_lungs"] == 1.0
    outside = lesion.copy()
    outside[0:2, 0:10, 0:12] = True  # 240 more lesion voxels, before the lungs (which start at index 5)
    assert patient_localisation(cam, outside, lungs, affine, LesionSettings("relative", 1.0, 0.5, 0.0))["lesion_in_lungs"] == 0.5
    # the maximum is now the speck (voxel 50, 30, 20); the lesion's nearest voxel is (15, 19, 13)
    assert elsewhere["peak_distance_mm"] == pytest.approx(np.sqrt((35 * 2.0) ** 2 + (11 * 1.0) ** 2 + (7 * 1.5) ** 2), abs=0.01)
    table = pd.DataFrame([{"patient_id": "a", **result}, {"patient_id": "b", **elsewhere}])
    slices = pd.concat([slice_scores(cam, lesion, lungs, 2), slice_scores(np.where(lesion, 0.0, cam), lesion, lungs, 2)])
    summary = cohort_summary(table, slices, seed=0)
    assert summary["pointing_game"]["mean"] == 0.5 and summary["pointing_game"]["n"] == 2
    low, high = summary["pointing_game"]["ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert 0.5 < summary["slice_auc_pooled"]["auc"] < 1.0


def test_a_lesion_mask_reaches_the_map_grid_as_resampling_would_bring_it():
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from lungcam.core.orientation import mask_on_grid

    rng = np.random.default_rng(0)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = lps_to_ras @ np.array([[0.7, 0, 0, -90.0], [0, 0.7, 0, -120.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    mask = nib.Nifti1Image((rng.uniform(size=(30, 26, 12)) > 0.7).astype(np.uint8), affine)
    same_grid = nib.Nifti1Image(np.zeros(mask.shape, np.float32), affine)

    def turned(codes):
        return same_grid.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(codes)))

    ras, feet_first = turned(("R", "A", "S")), turned(("R", "A", "I"))  # as dcm2niix may write them
    assert nib.aff2axcodes(affine) == ("L", "P", "S") and nib.aff2axcodes(feet_first.affine) == ("R", "A", "I")
    shifted = nib.Nifti1Image(
        np.zeros(ras.shape, np.float32), ras.affine @ np.array([[1, 0, 0, 0.3], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    )
    coarser = nib.Nifti1Image(np.zeros((15, 13, 12), np.float32), affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    for reference in (same_grid, ras, feet_first, shifted, coarser):
        expected = np.asarray(resample_from_to(mask, reference, order=0).dataobj)
        assert np.array_equal(mask_on_grid(mask, reference), expected)
    assert not np.array_equal(mask_on_grid(mask, ras), np.asarray(mask.dataobj))  # really turned


def test_key_slices_are_spread_over_the_map_mass(tmp_path):
    from lungcam.core.montage import key_slices, key_slices_figure, key_slices_shown

    cam = np.zeros((16, 32, 32), dtype=np.float32)
    for k, value in ((3, 0.2), (7, 1.0), (8, 0.9), (12, 0.4)):
        cam[k, 10:20, 10:20] = value
    assert key_slices(cam, spacing_z=20.0) == [12, 8, 7]  # 20 mm slices: neighbours are far enough apart
    assert key_slices(cam, spacing_z=5.0) == [12, 7, 3]  # 8 is 5 mm from 7: the next slice 20 mm away instead
    assert key_slices(np.zeros_like(cam), spacing_z=5.0) == []
    labels = np.zeros(cam.shape, dtype=np.uint8)
    labels[:, 5:27, 3:15], labels[:, 5:27, 17:29] = 1, 2
    hu = np.where(labels > 0, -850.0, 40.0).astype(np.float32)
    z_mm = np.arange(16) * 5.0 - 40.0
    shown = key_slices_figure(hu, labels, cam, (5.0, 1.0, 1.0), z_mm, tmp_path / "key.png", "test", "COVID-19")
    assert shown == [12, 7, 3] and (tmp_path / "key.png").stat().st_size > 5000
    assert key_slices_shown(tmp_path / "key.png") == {
        "class": "COVID-19",
        "scale": [0.1, 1.0],
        "slices": [
            {"from_top": 4, "of": 16, "z_mm": 20.0},
            {"from_top": 9, "of": 16, "z_mm": -5.0},
            {"from_top": 13, "of": 16, "z_mm": -25.0},
        ],
    }


def test_slice_labels_count_from_the_most_superior_slice():
    from lungcam.cam.localisation import labelled_slice_scores

    cam = np.zeros((5, 4, 4), dtype=np.float32)  # LPS z: index 4 is the most superior slice
    cam[4] = 0.9
    cam[1] = 0.3
    lungs = np.ones(cam.shape, dtype=np.uint8)
    lungs[2] = 0
    labels = pd.DataFrame({"slice_index": [0, 1, 2, 3, 4, 7], "infection": [1, 0, 0, 1, 0, 1]})
    scores = labelled_slice_scores(cam, lungs, labels)
    assert list(scores["slice_index"]) == [0, 1, 3, 4]  # 2 has no lung, 7 is outside the volume
    assert list(scores["score"]) == pytest.approx([0.9, 0.0, 0.3, 0.0]) and list(scores["infection"]) == [1, 0, 1, 0]


BLOB = 64  # cache slice and model input of the blob task


def blob_slices(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 noise slices; even ones (class 0) hold a bright disc of radius 5 somewhere, odd ones
    (class 1) none. Returns the slices, their classes and the disc masks."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:BLOB, :BLOB]
    slices = rng.normal(80, 20, (count, BLOB, BLOB))
    classes = np.arange(count) % 2
    discs = np.zeros(slices.shape, dtype=bool)
    for k in np.flatnonzero(classes == 0):
        row, column = rng.integers(12, BLOB - 12, 2)
        discs[k] = (rows - row) ** 2 + (columns - column) ** 2 <= 25
    slices[discs] += 100
    return np.clip(slices, 0, 255).astype(np.uint8), classes, discs


@pytest.fixture(scope="module")
def blob_network():
    """A small Hu2020Net trained (60 steps, seeded) to tell slices with a disc from those without."""
    from lungcam.train.models import Hu2020Net
    from lungcam.train.slice_bank import zscore

    torch.manual_seed(0)
    network = Hu2020Net(2, width=0.25, dropout=0.0)
    optimiser = torch.optim.Adam(network.parameters(), 3e-3)
    for step in range(60):
        slices, classes, _ = blob_slices(32, seed=step)
        logits = network.scale_logits(zscore(torch.from_numpy(slices).float()))
        loss = sum(nn.functional.cross_entropy(scale, torch.from_numpy(classes)) for scale in logits) / 3
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return network.eval()


# One 8 x 8 map upsampled bilinearly (pool3 alone) peaks on its cells' centres, 8 pixels apart:
# its peak is within the disc's radius plus half a cell's diagonal of the disc's centre, not
# nearer; the other maps mostly peak within 6 pixels of it, and evaluated densely all of them.
# Integrated Gradients attributes to single pixels, a speckle over the disc and the noise around
# it, so its pixel AUC is lower than the smooth maps' (0.90 on an AMD EPYC, whose float kernels
# train the network a little differently; the others 0.96-0.98 there).
@pytest.mark.parametrize(
    ("method", "shifts", "within_px", "share", "auc"),
    [
        ("lungcam_mean", 1, 6, 0.5, 0.9),
        ("pool3", 1, 5 + 4 * np.sqrt(2), 1.0, 0.9),
        ("gradcampp", 1, 6, 0.5, 0.9),
        ("layercam", 1, 6, 0.5, 0.9),
        ("integrated_gradients", 1, 6, 0.5, 0.85),
        ("lungcam_mean", 4, 6, 1.0, 0.9),
        ("layercam", 4, 6, 1.0, 0.9),
        ("pool4", 1, 5 + 8 * np.sqrt(2), 0.5, 0.85),
        ("joint_saliency", 1, 6, 0.5, 0.85),
    ],
)
def test_each_map_method_finds_the_disc_the_network_learned(blob_network, method, shifts, within_px, share, auc):
    """The network decides by the disc, so each method's map must score disc pixels above the
    rest (pixel AUC above `auc`) and peak on or near the disc (at least `share` of the peaks
    within `within_px` of its centre)."""
    from sklearn.metrics import roc_auc_score

    slices, classes, discs = blob_slices(40, seed=1000)
    slices, discs = slices[classes == 0], discs[classes == 0]
    maps = slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method=method, steps=16, shifts=shifts)
    assert maps.shape == slices.shape and maps.min() >= 0
    assert roc_auc_score(discs.ravel(), maps.ravel()) > auc
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    near = [np.argwhere(d).mean(axis=0) for d in discs]
    assert np.mean([np.hypot(*(np.array(p) - c)) <= within_px for p, c in zip(peaks, near)]) >= share


def test_grad_cam_is_the_gradient_weighted_features_of_the_three_scales(blob_network):
    """Grad-CAM through torchcam equals the definition computed here by hand: per scale,
    ReLU(sum_k mean(d score / d A_k) A_k), upsampled to the slice and averaged unscaled."""
    slices = blob_slices(4, seed=7)[0]
    maps = slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method="gradcam")
    x = zscore(torch.from_numpy(slices).float())
    features, _ = blob_network.features_and_maps(x)
    logits = blob_network.pool([head(f) for head, f in zip(blob_network.heads, features)]).mean(dim=0)
    gradients = torch.autograd.grad(logits[:, 0].sum(), features)
    expected = torch.stack(
        [
            nn.functional.interpolate(
                torch.relu((g.mean(dim=(2, 3), keepdim=True) * f).sum(dim=1, keepdim=True)),
                size=(BLOB, BLOB),
                mode="bilinear",
                align_corners=False,
            )
            for g, f in zip(gradients, features)
        ]
    ).mean(dim=0)[:, 0]
    assert maps == pytest.approx(expected.detach().numpy(), rel=1e-4, abs=1e-6)


def test_scale_maps_are_the_papers_and_lungcam_mean_averages_them(blob_network):
    """`pool3`, `pool4` and `pool5` are each scale's class map upsampled, as the paper's code draws
    them; `lungcam_mean` averages the three upsampled the same way."""
    slices = blob_slices(4, seed=11)[0]
    with torch.no_grad():
        scales = [
            nn.functional.interpolate(m[:, :1], size=(BLOB, BLOB), mode="bilinear", align_corners=False)[:, 0].clamp_min(0).numpy()
            for m in blob_network.maps(zscore(torch.from_numpy(slices).float()))
        ]
    for method, expected in zip(("pool3", "pool4", "pool5"), scales):
        assert slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method=method) == pytest.approx(expected, abs=1e-6)
    fused = slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method="lungcam_mean")
    assert fused == pytest.approx(np.mean(scales, axis=0), abs=1e-6)
    assert not np.allclose(scales[0], fused)


def test_joint_saliency_is_the_product_of_the_scaled_maps_less_the_neutral_value():
    from lungcam.cam.maps import _joint_saliency

    layers = [np.array([[[0.0, 2.0, -4.0]]]), np.array([[[0.0, 1.0, 1.0]]]), np.array([[[0.0, -3.0, 3.0]]])]
    # Scaled by their largest magnitudes (4, 1, 3): [0, .5, -1], [0, 1, 1], [0, -1, 1]; plus 2, multiplied, less 8.
    assert _joint_saliency(layers) == pytest.approx(np.array([[[0.0, max(2.5 * 3 * 1 - 8, 0), max(1 * 3 * 3 - 8, 0)]]]))


class PooledInput(nn.Module):
    """Stands in for a shift-equivariant network: each map (two classes, three scales) is the
    input averaged over `cell` x `cell` blocks, one map pixel per block."""

    def __init__(self, cell: int):
        super().__init__()
        self.cell = cell

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [nn.functional.avg_pool2d(x, self.cell).expand(-1, 2, -1, -1)] * 3


def dot_slices(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark slices (BLOB x BLOB) with one bright pixel each, 8 or more pixels from the border."""
    rng = np.random.default_rng(seed)
    points = rng.integers(8, BLOB - 8, (count, 2))
    slices = np.full((count, BLOB, BLOB), 10, dtype=np.uint8)
    slices[np.arange(count), points[:, 0], points[:, 1]] = 250
    return slices, points


def test_dense_evaluation_leaves_a_shift_equivariant_full_resolution_map_unchanged():
    """Each shifted evaluation's map is moved back by its own offset, so for a network whose
    map follows its input pixel for pixel every evaluation agrees and the average is the one
    evaluation's map, up to the borders: dense evaluation moves nothing."""
    slices = blob_slices(6, seed=3)[0]
    once = slice_cams(PooledInput(1), slices, 0, BLOB, torch.device("cpu"))
    for shifts in (2, 4):
        assert slice_cams(PooledInput(1), slices, 0, BLOB, torch.device("cpu"), shifts=shifts) == pytest.approx(once, abs=1e-5)


def test_dense_evaluation_puts_a_coarse_map_peak_on_its_point():
    """With maps of 8 x 8 pixel cells, one evaluation peaks at the centre of the cell holding a
    bright point (up to 4 pixels per axis away); 4 x 4 shifted evaluations peak within a pixel per
    axis of the point itself."""
    slices, points = dot_slices(40, seed=5)
    distances = {}
    for shifts in (1, 4):
        maps = slice_cams(PooledInput(8), slices, 0, BLOB, torch.device("cpu"), shifts=shifts)
        peaks = np.array([np.unravel_index(np.argmax(m), m.shape) for m in maps])
        distances[shifts] = np.abs(peaks - points).max(axis=1)
    assert distances[4].max() <= 1
    assert np.mean(distances[1] >= 2) > 0.5


def test_integrated_gradients_is_evaluated_once_whatever_the_shifts(blob_network):
    """Its attributions are per input pixel already: dense evaluation would only multiply its cost."""
    slices = blob_slices(2, seed=13)[0]
    once, asked_dense = (
        slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method="integrated_gradients", steps=8, shifts=shifts)
        for shifts in (1, 4)
    )
    assert np.array_equal(once, asked_dense)
    assert slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method="layercam", shifts=4) != pytest.approx(
        slice_cams(blob_network, slices, 0, BLOB, torch.device("cpu"), method="layercam"), abs=1e-3
    )


@pytest.mark.parametrize("shifts", [0, 3, 8])
def test_shift_counts_that_do_not_divide_a_cell_symmetrically_are_refused(shifts):
    assert shift_offsets(2) == [-2, 2] and shift_offsets(4) == [-3, -1, 1, 3] and shift_offsets(1) == [0]
    with pytest.raises(ValueError, match=f"cam shifts must be one of 1, 2, 4, not {shifts}"):
        slice_cams(PooledInput(8), dot_slices(1, seed=0)[0], 0, BLOB, torch.device("cpu"), shifts=shifts)


def test_an_unknown_map_method_is_refused(blob_network):
    with pytest.raises(ValueError, match="unknown CAM method 'saliency'"):
        slice_cams(blob_network, blob_slices(2, seed=0)[0], 0, BLOB, torch.device("cpu"), method="saliency")


def test_the_cam_rule_passes_every_map_setting():
    """The rule's params (a change reruns the maps) hold exactly MapSettings' fields of section cam."""
    rules = (REPO / "workflow" / "rules" / "inputs" / "cam.smk").read_text()
    listed = ast.literal_eval(re.search(r"^MAP_SETTINGS = (\(.*\))$", rules, re.MULTILINE).group(1))
    assert set(listed) == {field.name for field in dataclasses.fields(MapSettings)}
