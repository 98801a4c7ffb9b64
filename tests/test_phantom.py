"""Synthetic cohort generator: anatomy, class-specific lesions, nuisance independence, DICOM."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage, stats

from lungcam.phantom import cohort_layout, plan_cohort
from lungcam.phantom.anatomy import LEFT, RIGHT
from lungcam.phantom.cohort import KERNELS, SLICE_THICKNESSES_MM
from lungcam.phantom.generate import PhantomOptions, generate_patient, render_synthetic


def headers(folder: Path) -> dict[int, list[pydicom.Dataset]]:
    """DICOM headers of a study folder, grouped by series number."""
    series = defaultdict(list)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series[int(ds.SeriesNumber)].append(ds)
    return series


@pytest.fixture(scope="module")
def renders():
    """Noise-free renders of two patients per class (128x128), with their plans."""
    plans = plan_cohort(2, seed=5)
    return [(plan, *render_synthetic(plan, plan.nuisance, 128)) for plan in plans]


def test_same_seed_gives_identical_files(tmp_path):
    plan = plan_cohort(1, seed=3)[0]
    options = PhantomOptions(matrix=128, localizer=True, thick_series=False)
    digests = []
    for run in ("a", "b"):
        paths = cohort_layout(tmp_path / run, plan.patient_id)
        generate_patient(plan, options, paths["dicom"], paths["lungs"], paths["lesions"])
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths["dicom"].iterdir()})
    assert digests[0] == digests[1]


def test_scout_only_patients_follow_the_cohort_with_a_localizer_alone(tmp_path):
    """The extra patients come after the balanced cohort (whose plans they leave unchanged),
    and their study folder holds the localizer only."""
    plans = plan_cohort(1, seed=3, scout_only=2)
    assert plans[:3] == plan_cohort(1, seed=3) and [p.patient_id for p in plans[3:]] == ["demo004", "demo005"]
    assert plans[:4] == plan_cohort(1, seed=3, scout_only=1)  # nor does a second one change the first
    assert [p.scout_only for p in plans] == [False, False, False, True, True]
    paths = cohort_layout(tmp_path, plans[3].patient_id)
    generate_patient(
        plans[3], PhantomOptions(matrix=128, localizer=False, thick_series=True), paths["dicom"], paths["lungs"], paths["lesions"]
    )
    files = list(paths["dicom"].iterdir())
    assert len(files) == 1 and list(pydicom.dcmread(files[0]).ImageType)[2] == "LOCALIZER"


def test_drawn_demo_cohort_has_every_nuisance_factor_balanced_across_classes(config):
    """Each class of the demo cohort holds exactly the same values of every nuisance factor, so no
    factor (kernel, slice thickness, noise, scanner...) can stand in for the diagnosis."""
    demo = config["demo"]
    plans = [
        p
        for p in plan_cohort(demo["patients_per_class"], demo["seed"], tuple(config["classes"]), scout_only=demo["scout_only"])
        if not p.scout_only
    ]
    by_class = defaultdict(list)
    for plan in plans:
        by_class[plan.label].append(plan.nuisance.as_dict())
    assert sorted(by_class) == sorted(config["classes"])
    for key in plans[0].nuisance.as_dict():
        values = [sorted(row[key] for row in rows) for rows in by_class.values()]
        assert all(v == values[0] for v in values), key
    kernels = [row["kernel"] for row in by_class["NP"]]
    assert len(set(kernels)) == 3  # balanced, not constant


def test_nuisance_factors_vary_and_are_combined_freely():
    nuisances = [p.nuisance for p in plan_cohort(100, seed=4)]
    assert {n.slice_thickness_mm for n in nuisances} == set(SLICE_THICKNESSES_MM)
    assert {n.patient_position for n in nuisances} == {"HFS", "FFS"}
    assert {(n.pixel_representation, n.rescale_intercept) for n in nuisances} == {(0, -1024.0), (1, 0.0), (1, -1024.0)}
    assert len({n.kernel for n in nuisances}) == 3
    assert min(n.body_scale for n in nuisances) < 0.92 and max(n.body_scale for n in nuisances) > 1.08
    # Each factor is ordered on its own: kernel and slice thickness are not tied together.
    table = [[sum(1 for n in nuisances if n.kernel == k and n.slice_thickness_mm == t) for t in SLICE_THICKNESSES_MM] for k in KERNELS]
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_anatomy_is_plausible(renders):
    for plan, scan, _ in renders:
        voxel_ml = scan.pixel_mm**2 * scan.thickness_mm / 1000
        right, left = (scan.lungs == RIGHT).sum() * voxel_ml, (scan.lungs == LEFT).sum() * voxel_ml
        assert 1200 < right < 4500 and 1000 < left < 4000, plan.patient_id
        assert right > 0.9 * left  # the right lung is the larger one
        xs_right = scan.xs[np.nonzero(scan.lungs == RIGHT)[2]]
        assert xs_right.mean() < 0  # patient right is -x in LPS
        lung = scan.hu[(scan.lungs > 0) & (scan.lesions == 0)]
        assert -900 < np.median(lung) < -780
        assert (scan.hu > 300).sum() > 1000  # ribs, spine, sternum
        top = scan.hu[-3]
        body = top > -500
        trachea = ndimage.binary_fill_holes(body) & ~body
        assert trachea.sum() * scan.pixel_mm**2 > 100  # an air-filled trachea (mm^2) in the neck


def test_covid_lesions_are_peripheral_ground_glass(renders):
    for plan, scan, _ in renders:
        if plan.label != "COVID-19":
            continue
        assert scan.lesions.any()
        assert -720 < np.median(scan.hu[scan.lesions > 0]) < -280
        pleura = ndimage.distance_transform_edt(scan.lungs > 0, sampling=(scan.thickness_mm, scan.pixel_mm, scan.pixel_mm))
        assert np.median(pleura[scan.lesions > 0]) < 15.0  # subpleural


def test_covid_lesions_are_mostly_bilateral_and_multifocal():
    from lungcam.phantom.anatomy import draw_chest
    from lungcam.phantom.cohort import STREAM_ANATOMY, STREAM_LESIONS, patient_rng
    from lungcam.phantom.lesions import LungSampler, draw_lesions

    bilateral, counts = [], []
    for plan in [p for p in plan_cohort(40, seed=21) if p.label == "COVID-19"]:
        chest = draw_chest(patient_rng(plan.seed, plan.index, STREAM_ANATOMY), plan.nuisance.body_scale)
        lo = np.array([-chest.cavity_a, -chest.cavity_b, chest.z_range[0]])
        hi = np.array([chest.cavity_a, chest.cavity_b, chest.z_range[1]])
        sampler = LungSampler.from_function(chest.lung_labels, lo, hi, spacing=6.0)
        lesions = draw_lesions(plan.label, sampler, patient_rng(plan.seed, plan.index, STREAM_LESIONS))
        bilateral.append(lesions.describe()["sides"] == [RIGHT, LEFT])
        counts.append(len(lesions.ground_glass))
    assert np.mean(bilateral) > 0.8
    assert min(counts) >= 2


def test_cap_lesions_are_consolidation_with_air_bronchograms(renders):
    found = 0
    for plan, scan, description in renders:
        if plan.label != "CAP":
            continue
        found += 1
        values = scan.hu[scan.lesions > 0]
        assert -120 < np.median(values) < 70
        assert (values < -700).sum() > 20  # air bronchograms inside the consolidation
        assert description["lesions"]["consolidations"] >= 1
    assert found == 2


def test_np_has_no_lesions(renders):
    for plan, scan, description in renders:
        if plan.label == "NP":
            assert not scan.lesions.any()
            assert description["lesions"]["ground_glass"] == description["lesions"]["consolidations"] == 0


def test_dicom_study_is_realistic(small_cohort):
    root, plans = small_cohort
    for plan in plans:
        folder = cohort_layout(root, plan.patient_id)["dicom"]
        series = headers(folder)
        assert set(series) == {1, 2, 3}  # localizer, thin, thick
        assert "LOCALIZER" in series[1][0].ImageType
        assert len(series[2]) > len(series[3])
        for number, items in series.items():
            for key in ("SeriesDate", "SeriesTime", "StudyDate", "StudyTime", "SeriesInstanceUID", "StudyInstanceUID"):
                assert len({str(ds.get(key)) for ds in items}) == 1, (number, key)
            for ds in items:
                for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
                    assert pydicom.uid.UID(uid).is_valid
        assert len({ds.StudyInstanceUID for items in series.values() for ds in items}) == 1
        nuisance = plan.nuisance
        thin = series[2][0]
        assert float(thin.SliceThickness) == nuisance.slice_thickness_mm
        assert thin.PatientPosition == nuisance.patient_position
        assert thin.PixelRepresentation == nuisance.pixel_representation
        assert float(thin.RescaleIntercept) == nuisance.rescale_intercept
        assert thin.ConvolutionKernel == nuisance.kernel
        by_name = sorted(series[2], key=lambda ds: ds.filename)
        assert [ds.InstanceNumber for ds in by_name] != sorted(ds.InstanceNumber for ds in by_name)  # random names
        assert thin.PatientName and thin.PatientBirthDate and "DOB" in thin.ImageComments


def test_truth_masks_match_the_scan(small_cohort, tmp_path, ingest_settings):
    from nibabel.processing import resample_from_to

    from lungcam.ingest.stage import VOLUME_NAME, ingest_patient

    root, plans = small_cohort
    for plan in plans:
        paths = cohort_layout(root, plan.patient_id)
        record = ingest_patient(plan.patient_id, paths["dicom"], tmp_path / plan.patient_id, ingest_settings)
        assert record["status"] == "ok", record["reasons"]
        assert "more slices" in record["series"]["why"]
        volume = nib.load(tmp_path / plan.patient_id / VOLUME_NAME)
        lungs = np.asanyarray(resample_from_to(nib.load(paths["lungs"]), volume, order=0).dataobj)
        hu = np.asanyarray(volume.dataobj)
        assert -900 < np.median(hu[lungs > 0]) < -700
        assert np.median(hu[lungs == 0]) > -200 or np.median(hu[lungs == 0]) < -950
        if plan.label != "NP":
            lesions = np.asanyarray(resample_from_to(nib.load(paths["lesions"]), volume, order=0).dataobj)
            assert np.median(hu[lesions > 0]) > np.median(hu[(lungs > 0) & (lesions == 0)]) + 150


@pytest.mark.slow
def test_real_background_receives_lesions(data, tmp_path):
    from lungcam.phantom.background import RealBackground

    background = RealBackground.load(data / "covid-ct-md" / "normal001")
    voxel_ml = (
        float(np.prod([background.xs[1] - background.xs[0], background.ys[1] - background.ys[0], background.zs[1] - background.zs[0]]))
        / 1000
    )
    assert 2500 < (background.lungs > 0).sum() * voxel_ml < 8000
    plan = next(p for p in plan_cohort(1, seed=3) if p.label == "CAP")
    paths = cohort_layout(tmp_path, plan.patient_id)
    result = generate_patient(plan, PhantomOptions(256, False, False), paths["dicom"], paths["lungs"], paths["lesions"], background)
    assert result.record["background"] == "real" and result.record["lesion_ml"] > 20
    lesions = nib.load(paths["lesions"])
    assert lesions.shape == (512, 512, 154)
    series = headers(paths["dicom"])
    assert list(series) == [2] and len(series[2]) == 154


def test_command_line_writes_a_cohort(tmp_path):
    from lungcam.cli import main
    from lungcam.core.samplesheet import load_sample_sheet

    assert (
        main(
            ["phantom", str(tmp_path / "c"), "--patients-per-class", "1", "--matrix", "128", "--seed", "4", "--no-localizer", "--jobs", "2"]
        )
        == 0
    )
    sheet = load_sample_sheet(tmp_path / "c" / "samples.tsv", ["COVID-19", "CAP", "NP"])
    assert sorted(sheet["label"]) == ["CAP", "COVID-19", "NP"]
    assert all(Path(p).is_file() for p in sheet["lesion_mask"])
    assert set(headers(Path(sheet["dicom_dir"].iloc[0]))) == {2, 3}
