"""Lungs stage: threshold masks on phantoms and real scans, lungmask integration, lung QC."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from lungcam.ingest.stage import VOLUME_NAME, ingest_patient
from lungcam.lungs.lungmask_backend import LungmaskWeightsError, download_weights, require_weights
from lungcam.lungs.margin import add_lesion_margin
from lungcam.lungs.stage import LungSettings, run_lungs, segment
from lungcam.phantom import cohort_layout, plan_cohort
from lungcam.phantom.generate import PhantomOptions, generate_patient

from .conftest import REAL_CASES, lobar_consolidation, pleural_consolidation

R231_REFERENCE_PER_SLICE = {1: 32376, 2: 18268}  # lungmask's own test: R231 on its 2 test slices


@pytest.fixture(scope="module")
def lung_settings(config) -> LungSettings:
    return LungSettings.from_config(config["lungs"])


def run(pid: str, volume: Path, out: Path, settings: LungSettings, **kwargs) -> tuple[dict, np.ndarray]:
    outputs = {
        "labels": out / f"{pid}.nii.gz",
        "montage": out / f"{pid}.png",
        "record": out / f"{pid}.json",
        "lobes": out / f"{pid}_lobes.nii.gz",
    }
    record = run_lungs(pid, volume, outputs, settings, **kwargs)
    assert outputs["montage"].stat().st_size > 10_000
    return record, np.asarray(nib.load(outputs["labels"]).dataobj)


def on_grid(path: Path, volume: Path) -> np.ndarray:
    return np.asarray(resample_from_to(nib.load(path), nib.load(volume), order=0).dataobj)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def right_is_patient_right(labels: np.ndarray, affine: np.ndarray) -> bool:
    """Label 1 lies at larger RAS x (patient right) than label 2."""
    x = {side: nib.affines.apply_affine(affine, np.argwhere(labels == side)[::50])[:, 0].mean() for side in (1, 2)}
    return x[1] > x[2]


def test_threshold_masks_match_phantom_truth(small_cohort, tmp_path, ingest_settings, lung_settings):
    root, plans = small_cohort
    for plan in plans:
        paths = cohort_layout(root, plan.patient_id)
        ingest_patient(plan.patient_id, paths["dicom"], tmp_path / plan.patient_id, ingest_settings)
        volume = tmp_path / plan.patient_id / VOLUME_NAME
        record, labels = run(plan.patient_id, volume, tmp_path / "lungs", lung_settings)
        truth = on_grid(paths["lungs"], volume)
        assert record["status"] == "ok", record["reasons"]
        assert dice(labels > 0, truth > 0) >= 0.97, plan.patient_id
        both = (labels > 0) & (truth > 0)
        assert (labels[both] == truth[both]).mean() > 0.999  # sides agree
        lesions = on_grid(paths["lesions"], volume) > 0
        if plan.label == "COVID-19":
            assert (labels[lesions] > 0).mean() >= 0.9  # peripheral ground glass is lung
        if plan.label == "CAP":
            assert (labels[lesions] > 0).mean() >= 0.9  # consolidation is lung


# Demo patients (default demo: seed 2020) whose consolidation hides the lung's own boundary:
# demo016 a right lower lobe down to the diaphragm (found by its air bronchograms), demo029 a left
# upper lobe from the apex to the fissure against the heart, demo015 a segment on the left
# diaphragm with no bronchogram long enough (found as a large uniform dense region). They are
# rendered as when they were found (slice thickness, field of view, kernel, noise, body size,
# position), before the cohort's nuisance factors were balanced. demo185 of the 201-patient
# cohort (67 per class, same seed): a lobar consolidation whose bronchograms all join the aerated
# lung, so none is loose air; found as islands of the aerated lung in dense tissue.
FOUND_ON = {
    "demo015": dict(slice_thickness_mm=1.5, fov_mm=409.8, kernel="B50f", noise_hu=14.44, body_scale=1.104, patient_position="HFS"),
    "demo016": dict(slice_thickness_mm=1.5, fov_mm=348.2, kernel="B50f", noise_hu=9.04, body_scale=0.99, patient_position="HFS"),
    "demo029": dict(slice_thickness_mm=3.0, fov_mm=399.2, kernel="B50f", noise_hu=9.54, body_scale=1.107, patient_position="FFS"),
}


@pytest.mark.parametrize(("pid", "per_class"), [("demo015", None), ("demo016", None), ("demo029", None), ("demo185", 67)])
def test_consolidation_that_hides_the_lung_boundary_is_lung(pid, per_class, config, tmp_path, ingest_settings, lung_settings):
    demo = config["demo"]
    plan = next(
        p for p in plan_cohort(per_class or demo["patients_per_class"], demo["seed"], tuple(config["classes"])) if p.patient_id == pid
    )
    plan = replace(plan, nuisance=replace(plan.nuisance, **FOUND_ON.get(pid, {})))
    assert plan.label == "CAP"
    paths = cohort_layout(tmp_path, pid)
    generate_patient(plan, PhantomOptions.from_config(demo), paths["dicom"], paths["lungs"], paths["lesions"])
    ingest_patient(pid, paths["dicom"], tmp_path / pid, ingest_settings)
    volume = tmp_path / pid / VOLUME_NAME
    _, labels = run(pid, volume, tmp_path / "lungs", lung_settings)
    truth = on_grid(paths["lungs"], volume)
    lesions = on_grid(paths["lesions"], volume) > 0
    assert dice(labels > 0, truth > 0) >= 0.97
    assert (labels[lesions] > 0).mean() >= 0.95


# A pleural-based consolidation wider than the gaps between ribs: its vessels are not ribs, its
# bronchograms not the lung's edge, and at liver density it must not open the way to the liver.
@pytest.mark.parametrize(("side", "textured"), [(1, True), (2, True), (1, False)])
def test_pleural_consolidation_is_lung_and_the_liver_is_not(real_masks, lung_settings, side, textured):
    hu, labels, spacing = real_masks["normal001"]
    image, lesion = pleural_consolidation(hu, labels, spacing, side, textured)
    found = segment(image, spacing, lung_settings)[0]
    assert (found[lesion] > 0).mean() >= 0.95
    clean = add_lesion_margin(labels, hu, spacing, lung_settings.lesion_margin)  # the clean scan's default mask
    added_ml = ((found > 0) & (clean == 0) & ~lesion).sum() * np.prod(spacing) / 1000
    assert added_ml <= 30.0


# An upper lobe consolidated from the apex to the fissure leaves no air to find the chest wall
# by: the other lung's envelope, mirrored, stands in for it. The lesion margin adds a rim of
# wall along the whole consolidated lobe, hence the allowance outside the lungs.
def test_consolidated_upper_lobe_is_lung(real_masks, lung_settings):
    hu, labels, spacing = real_masks["normal001"]
    image, lesion = lobar_consolidation(hu, labels, spacing, side=1)
    found = segment(image, spacing, lung_settings)[0]
    assert (found[lesion] > 0).mean() >= 0.85
    assert ((found > 0) & (labels == 0)).sum() * np.prod(spacing) / 1000 <= 100.0


def test_lungmask_test_slices_match_r231_reference(real_ingest, tmp_path, lung_settings):
    out, _, _, _ = real_ingest
    volume = out / "LM" / VOLUME_NAME
    _, labels = run("LM", volume, tmp_path, lung_settings)
    for side, reference in R231_REFERENCE_PER_SLICE.items():
        per_slice = (labels == side).sum() / labels.shape[2]
        assert abs(per_slice - reference) / reference <= 0.10, (side, per_slice, reference)
    assert right_is_patient_right(labels, nib.load(volume).affine)


@pytest.fixture(scope="module")
def real_lungs(real_ingest, tmp_path_factory, lung_settings):
    out, _, _, _ = real_ingest
    lungs = tmp_path_factory.mktemp("lungs")
    return {pid: run(pid, out / pid / VOLUME_NAME, lungs, lung_settings) for pid in REAL_CASES}


@pytest.mark.parametrize("pid", sorted(REAL_CASES))
def test_real_cases_have_two_plausible_lungs(real_lungs, real_ingest, pid):
    record, labels = real_lungs[pid]
    assert record["status"] == "ok", record["reasons"]
    assert record["right_ml"] > 1000 and record["left_ml"] > 1000
    assert 2500 <= record["total_ml"] <= 8000
    assert record["right_components"] <= 3 and record["left_components"] <= 3
    out, _, _, _ = real_ingest
    assert right_is_patient_right(labels, nib.load(out / pid / VOLUME_NAME).affine)


# Per side, mL, of the masks whose montages were checked by eye. Neither scan shows air
# bronchograms or a uniform consolidation, so the bold envelope, which would take in liver, spleen
# dome or chest wall, must stay shut and the masks within 20 mL of these.
REAL_LUNG_ML = {"P001": (3128, 3076), "cap001": (2923, 3399), "normal001": (1884, 1665)}


@pytest.mark.parametrize("pid", sorted(REAL_CASES))
def test_bold_envelope_stays_shut_on_real_scans(real_lungs, pid):
    record, _ = real_lungs[pid]
    for found, checked in zip((record["right_ml"], record["left_ml"]), REAL_LUNG_ML[pid]):
        assert abs(found - checked) <= 20.0, (pid, found, checked)


@pytest.mark.parametrize("pid", ["P001", "cap001"])
def test_slices_labelled_infected_contain_lung(real_lungs, data, pid):
    _, labels = real_lungs[pid]
    with open(data / "covid-ct-md" / "slice_labels.tsv") as handle:
        infected = [
            int(r["slice_index"]) for r in csv.DictReader(handle, delimiter="\t") if r["patient_id"] == pid and r["infection"] == "1"
        ]
    assert infected
    has_lung = (labels > 0).any(axis=(0, 1))  # NIfTI k: 0 is the lowest slice (LAS)
    top_down = has_lung[::-1]  # slice_index counts from the top down
    assert np.mean([top_down[i] for i in infected]) >= 0.95


def test_head_scan_is_excluded_by_lung_qc(data, tmp_path, ingest_settings, lung_settings):
    settings = replace(ingest_settings, excluded_body_parts=frozenset())
    ingest_patient("GE", data / "dcm-qa-ct" / "GE", tmp_path / "GE", settings)
    record, _ = run("GE", tmp_path / "GE" / VOLUME_NAME, tmp_path, lung_settings)
    assert record["status"] == "excluded"
    assert any("missing or tiny" in r or "below lungs.qc.min_total_ml" in r for r in record["reasons"])


def test_bronchogram_joined_to_the_lung_is_an_island_in_dense_tissue():
    from lungcam.lungs.threshold import _enclosed_air

    aerated = np.zeros((30, 40, 40), bool)
    aerated[:10, 5:35, 5:35] = True  # aerated lobe above
    aerated[5:26, 19:22, 19:22] = True  # a bronchus from it down into the consolidation
    aerated[10:30, 5:8, 5:35] = True  # a thin strip of air along the consolidation's edge: not enclosed
    consolidation = np.zeros(aerated.shape, bool)
    consolidation[10:30, 5:35, 5:35] = True
    consolidation &= ~aerated
    islands = _enclosed_air(aerated, consolidation, (1.0, 1.0, 1.0))
    assert islands.sum() == 16 * 9 and islands[10:26, 19:22, 19:22].all()  # the bronchus, slices 10-25 only
    assert not _enclosed_air(aerated, np.zeros(aerated.shape, bool), (1.0, 1.0, 1.0)).any()  # ring outside the envelope


def test_fast_morphology_matches_scipy():
    from scipy import ndimage

    from lungcam.lungs.threshold import slice_holes, square_dilation, square_opening

    rng = np.random.default_rng(5)
    for _ in range(3):
        mask = ndimage.binary_opening(rng.random((12, 50, 60)) > 0.45)
        expected = np.stack([ndimage.binary_fill_holes(s) & ~s for s in mask])
        assert expected.any() and np.array_equal(slice_holes(mask), expected)
        for width in (3, 5):
            square = np.ones((1, width, width), bool)
            assert np.array_equal(square_opening(mask, width), ndimage.binary_opening(mask, square))
            assert np.array_equal(square_dilation(mask, width), ndimage.binary_dilation(mask, square))


def test_touching_lungs_are_split_at_the_narrowest_contact():
    from scipy import ndimage

    from lungcam.lungs.threshold import _inplane_depth, split_lungs

    lungs = np.zeros((8, 40, 60), bool)
    lungs[:, 5:35, 4:28] = True  # right lung (image left)
    lungs[:, 5:35, 32:56] = True  # left lung
    lungs[2:6, 8:12, 28:32] = True  # a narrow anterior contact joins them
    eroded = lungs.copy()
    for k in range(1, 4):
        eroded = ndimage.binary_erosion(eroded, structure=np.ones((1, 3, 3), bool))
        assert np.array_equal(_inplane_depth(lungs) > k, eroded)
    labels = split_lungs(lungs, 30.0)
    assert (labels[:, :, :28][lungs[:, :, :28]] == 1).all() and (labels[:, :, 32:][lungs[:, :, 32:]] == 2).all()
    assert (labels[:, :, 28:30][lungs[:, :, 28:30]] == 1).all() and (labels[:, :, 30:32][lungs[:, :, 30:32]] == 2).all()
    # Assigned on every second pixel: the cut may move by a block, nothing else changes.
    coarse = split_lungs(lungs, 30.0, step=2)
    assert ((coarse > 0) == lungs).all() and (coarse[:, :, :27][lungs[:, :, :27]] == 1).all()
    assert (coarse[:, :, 33:][lungs[:, :, 33:]] == 2).all()


# ---- lungmask -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    from .conftest import write_painted_study
    from .lungmask_weights import write_weights

    root = tmp_path_factory.mktemp("painted")
    write_painted_study(root / "dicom", root / "truth.nii.gz")
    return root, write_weights(root / "weights")


@pytest.mark.slow
def test_lungmask_labels_sides_on_the_scan_grid(painted, tmp_path, ingest_settings, lung_settings):
    root, weights = painted
    record = ingest_patient("P", root / "dicom", tmp_path / "P", ingest_settings)
    assert record["volume"]["orientation"] == "RAI"  # feet first: lungmask sees it only after reorientation
    volume = tmp_path / "P" / VOLUME_NAME
    settings = replace(lung_settings, method="lungmask", lungmask=replace(lung_settings.lungmask, force_cpu=True))
    record, labels = run("P", volume, tmp_path, settings, weights=weights)
    truth = on_grid(root / "truth.nii.gz", volume)
    assert record["method"] == "lungmask R231"
    for side in (1, 2):
        assert dice(labels == side, truth == side) > 0.9, side
    assert nib.load(tmp_path / "P.nii.gz").affine.tolist() == nib.load(volume).affine.tolist()


@pytest.mark.slow
def test_lungmask_lobes_fused_with_r231(painted, tmp_path, ingest_settings, lung_settings):
    from .lungmask_weights import write_weights

    root, r231 = painted
    lobes_weights = write_weights(tmp_path / "weights", "unet_ltrclobes", n_classes=6, right=3, left=1)
    ingest_patient("P", root / "dicom", tmp_path / "P", ingest_settings)
    volume = tmp_path / "P" / VOLUME_NAME
    settings = replace(lung_settings, method="lungmask", lungmask=replace(lung_settings.lungmask, model="LTRCLobes", force_cpu=True))
    record, labels = run("P", volume, tmp_path, settings, weights=lobes_weights, fill_weights=r231)
    assert record["method"] == "lungmask LTRCLobes"
    assert {role: entry["file"] for role, entry in record["weights"].items()} == {
        "lungmask": Path(lobes_weights).name,
        "lungmask_fill": Path(r231).name,
    }
    lobes = np.asarray(nib.load(tmp_path / "P_lobes.nii.gz").dataobj)
    truth = on_grid(root / "truth.nii.gz", volume)
    assert dice(lobes == 3, truth == 1) > 0.9 and dice(lobes == 1, truth == 2) > 0.9  # right upper, left upper
    for side in (1, 2):
        assert dice(labels == side, truth == side) > 0.9


def test_weights_resolution_order(tmp_path, monkeypatch):
    from lungcam.lungs.lungmask_backend import LungmaskSettings, weights_path

    settings = LungmaskSettings("R231", "", "", "", 20, False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights_path(settings) == Path("resources/lungmask/unet_r231-d5d2fc3d.pth")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "unet_r231-d5d2fc3d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert weights_path(settings) == cached
    assert weights_path(replace(settings, weights="/data/mine.pth")) == Path("/data/mine.pth")
    url = "file:///w/unet_r231-0123abcd.pth"
    assert weights_path(replace(settings, weights_url=url)) == Path("resources/lungmask/unet_r231-0123abcd.pth")


def test_download_checks_the_hash_in_the_name(tmp_path):
    good = tmp_path / "src" / "weights-7509e5bd.pth"
    good.parent.mkdir()
    good.write_bytes(b"hello world")  # sha256 starts with b94d27b9
    with pytest.raises(ValueError, match="does not match"):
        download_weights(good.as_uri(), tmp_path / "out" / good.name)
    assert not (tmp_path / "out" / good.name).exists()
    right = good.with_name("weights-b94d27b9.pth")
    good.rename(right)
    assert download_weights(right.as_uri(), tmp_path / "out" / right.name).read_bytes() == b"hello world"


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(LungmaskWeightsError, match="download_lungmask_weights"):
        require_weights(tmp_path / "none.pth", "R231", "https://example.org/unet_r231-d5d2fc3d.pth")
