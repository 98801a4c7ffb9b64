"""Ingest stage on the real reference data and on damaged studies built from it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lungcam.ingest.dcm2niix import read_sidecar
from lungcam.ingest.hu_check import verify_hu
from lungcam.ingest.stage import RECORD_NAME, SIDECAR_NAME, VOLUME_NAME, ingest_patient, publish

from .bad_inputs import rewrite, slice_z, sorted_series
from .conftest import REAL_CASES, copy_files, tree_digest


@pytest.mark.parametrize("pid", sorted(REAL_CASES))
def test_covid_ct_md_cases_convert_with_hu(real_ingest, pid):
    out, records, _, _ = real_ingest
    record = records[pid]
    assert record["status"] == "ok", record["reasons"]
    img = nib.load(out / pid / VOLUME_NAME)
    assert img.shape == (512, 512, REAL_CASES[pid])
    assert record["hu"]["dicom_crosscheck"] == "identical"
    assert -1030 <= record["hu"]["air_hu"] <= -990
    hu = np.asanyarray(img.dataobj)[:, :, img.shape[2] // 2]
    assert hu.min() >= -1025 and hu.max() < 3100
    assert record["header"]["transfer_syntax"] == "JPEG Lossless SV1"
    assert record["header"]["manufacturer"] == "SIEMENS"
    assert "only axial CT volume" in record["series"]["why"]


def test_slice_positions_are_those_of_the_dicom_headers(real_ingest, data):
    """The reports give each key slice's z in mm so that a reader finds it in PACS: the NIfTI's
    LPS slices must sit where the DICOM headers put them (ImagePositionPatient z), top last."""
    from lungcam.core.orientation import LPSView

    out, _, _, _ = real_ingest
    z_mm = LPSView.of(nib.load(out / "P001" / VOLUME_NAME)).slice_z_mm()
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((data / "covid-ct-md" / "P001").iterdir()) if f.is_file()]
    dicom_z = sorted(float(h.ImagePositionPatient[2]) for h in headers if "ImagePositionPatient" in h)
    assert len(z_mm) == len(dicom_z) and np.all(np.diff(z_mm) > 0)
    assert np.allclose(z_mm, dicom_z, atol=0.01)


def test_tilted_ge_series_is_detected_corrected_and_excluded_as_head(real_ingest):
    out, records, _, _ = real_ingest
    record = records["GE"]
    assert record["header"]["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.2)
    assert record["volume"]["variant"] == "tilt-corrected+equalized"
    assert any("gantry tilt of 18.5 deg" in w for w in record["warnings"])
    assert any("uneven slice spacing" in w for w in record["warnings"])
    assert record["status"] == "excluded"
    assert record["reasons"] == ["not a chest CT (BodyPartExamined 'HEAD')"]
    corrected = nib.load(out / "GE" / VOLUME_NAME)
    assert corrected.shape[2] > 28  # equalised onto a regular, finer grid
    spacing_z = np.linalg.norm(corrected.affine[:3, 2])
    assert spacing_z == pytest.approx(record["volume"]["spacing_mm"][2], rel=1e-3)


def test_tilt_corrected_volume_kept_when_body_part_allowed(data, tmp_path, ingest_settings):
    settings = replace(ingest_settings, excluded_body_parts=frozenset())
    record = ingest_patient("GE", data / "dcm-qa-ct" / "GE", tmp_path / "GE", settings)
    assert record["status"] == "ok", record["reasons"]
    assert record["volume"]["variant"] == "tilt-corrected+equalized"


def test_totalsegmentator_geometry_matches_reference(real_ingest, data):
    out, records, _, _ = real_ingest
    assert records["TS"]["status"] == "ok", records["TS"]["reasons"]
    converted = nib.load(out / "TS" / VOLUME_NAME)
    reference = nib.load(data / "totalsegmentator-example" / "seg_dicom.nii.gz")
    assert converted.shape == reference.shape
    np.testing.assert_allclose(converted.affine, reference.affine, atol=1e-3)


def test_lungmask_testdata_converts_to_two_slices(real_ingest, data, tmp_path, ingest_settings):
    out, records, _, _ = real_ingest
    assert nib.load(out / "LM" / VOLUME_NAME).shape == (512, 512, 2)
    assert records["LM"]["reasons"] == ["too few slices (2 < ingest.min_slices 16)"]
    assert records["LM"]["header"]["modality"] == "CT"  # no Modality tag: from the SOP class
    relaxed = ingest_patient("LM", data / "lungmask-testdata", tmp_path / "LM", replace(ingest_settings, min_slices=2))
    assert relaxed["status"] == "ok"


def test_inputs_are_never_modified(real_ingest):
    _, _, before, after = real_ingest
    assert before == after


def test_outputs_carry_no_identifiers(real_ingest, data):
    out, records, _, _ = real_ingest
    ds = pydicom.dcmread(next((data / "covid-ct-md" / "P001").iterdir()), stop_before_pixels=True)
    sidecar = json.loads((out / "P001" / SIDECAR_NAME).read_text())
    for key in ("InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "StudyDescription", "AcquisitionTime"):
        assert key not in sidecar
    for path in (out / "P001").iterdir():
        assert ds.PatientID.encode() not in path.read_bytes(), path.name


def test_sidecar_with_unescaped_backslash_is_repaired(real_ingest):
    out, records, _, _ = real_ingest
    assert records["TS"]["status"] == "ok"  # dcm2niix writes "Br38f\" for this series
    sidecar = json.loads((out / "TS" / SIDECAR_NAME).read_text())
    assert sidecar["ConvolutionKernel"] == "Br38f\\3"


def test_read_sidecar_repairs_only_broken_lines(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{\n\t"A": "ok\\\\fine",\n\t"B": "broken\\",\n\t"C": 3\n}\n')
    assert read_sidecar(path) == {"A": "ok\\fine", "B": "broken\\", "C": 3}


def test_publish_links_and_makes_outputs_newer(real_ingest, tmp_path):
    out, _, _, _ = real_ingest
    stage = tmp_path / "stage"
    copy_files([out / "P001" / VOLUME_NAME, out / "P001" / SIDECAR_NAME, out / "P001" / RECORD_NAME], stage)
    publish(stage, tmp_path / "nifti" / "P001.nii.gz", tmp_path / "nifti" / "P001.json")
    assert (tmp_path / "nifti" / "P001.nii.gz").stat().st_ino == (stage / VOLUME_NAME).stat().st_ino
    assert json.loads((tmp_path / "nifti" / "P001.json").read_text())["Modality"] == "CT"


def test_hu_check_detects_missing_rescale(tmp_path):
    data = np.full((64, 64, 4), 24, np.int16)  # air stored raw, the rescale intercept lost
    data[16:48, 16:48] = 1064
    raw = nib.Nifti1Image(data, np.eye(4))
    nib.save(raw, tmp_path / "raw.nii")
    report = verify_hu(nib.load(tmp_path / "raw.nii"), None, None)
    assert any("air reads 24 HU" in p for p in report.problems)
    nib.save(nib.Nifti1Image((data - 1024).astype(np.int16), np.eye(4)), tmp_path / "hu.nii")
    assert verify_hu(nib.load(tmp_path / "hu.nii"), None, None).problems == []


# ---- one bad patient at a time: each is excluded with its own reason -------------------------


@pytest.fixture(scope="module")
def p001_files(data) -> list[Path]:
    """P001's files from the top slice down (its instance numbers are not in spatial order)."""
    return sorted_series(data / "covid-ct-md" / "P001")


def test_missing_folder(tmp_path, ingest_settings):
    record = ingest_patient("X1", tmp_path / "nowhere", tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded" and record["reasons"] == ["DICOM folder not found"]


def test_empty_folder(tmp_path, ingest_settings):
    (tmp_path / "empty").mkdir()
    record = ingest_patient("X2", tmp_path / "empty", tmp_path / "out", ingest_settings)
    assert record["reasons"] == ["the DICOM folder is empty"]


def test_no_dicom_files(tmp_path, ingest_settings):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "scan.dcm").write_bytes(b"\x00" * 300)
    record = ingest_patient("X3", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert record["reasons"][0].startswith("no readable DICOM image among 2 file(s)")


def test_not_ct(p001_files, tmp_path, ingest_settings):
    folder = rewrite(p001_files[:20], tmp_path / "mr", Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    record = ingest_patient("X4", folder, tmp_path / "out", ingest_settings)
    assert record["reasons"] == ["not a CT study (modality MR)"]


def test_localizer_only(p001_files, tmp_path, ingest_settings):
    folder = rewrite(p001_files[:3], tmp_path / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    record = ingest_patient("X5", folder, tmp_path / "out", ingest_settings)
    assert record["reasons"] == ["only localizer (scout) images, no axial CT series"]


def test_truncated_file_rejects_the_series(p001_files, tmp_path, ingest_settings):
    folder = copy_files(p001_files[:40], tmp_path / "trunc")
    victim = folder / p001_files[10].name
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    record = ingest_patient("X6", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert "1 of 40 files damaged: pixel data truncated (file ends early)" in record["reasons"][0]


def test_corrupt_extra_file_is_ignored_with_warning(p001_files, tmp_path, ingest_settings):
    folder = copy_files(p001_files[:30], tmp_path / "extra")
    (folder / "DOE_garbage.bin").write_bytes(b"garbage" * 100)
    record = ingest_patient("X7", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert "1 file(s) ignored: not DICOM (1)" in record["warnings"]


def test_missing_slices_beyond_gap(p001_files, tmp_path, ingest_settings):
    kept = p001_files[:20] + p001_files[26:40]  # 6 slices of 2 mm missing: a 14 mm gap
    record = ingest_patient("X8", copy_files(kept, tmp_path / "gap"), tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    where = ", ".join(f"{slice_z(p):g}" for p in sorted(p001_files[20:26], key=slice_z))
    assert record["reasons"] == [
        "slices missing: a gap of 14.0 mm between neighbouring slices exceeds "
        f"ingest.max_slice_gap_mm (10); missing slice(s) at z = {where} mm"
    ]


def test_one_missing_slice_is_named_with_its_position(p001_files, tmp_path, ingest_settings):
    """A slice missing from the series is named as such, with its position, not only as uneven
    spacing; its gap is filled by interpolation (the equalised volume)."""
    kept = p001_files[:20] + p001_files[21:40]  # one slice missing: a 4 mm gap
    record = ingest_patient("X9", copy_files(kept, tmp_path / "gap1"), tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert record["volume"]["variant"] == "equalized"
    assert record["header"]["missing_slices_z_mm"] == [slice_z(p001_files[20])]
    assert (
        f"missing slice(s) at z = {slice_z(p001_files[20]):g} mm: filled by interpolation between the neighbouring slices"
        in record["warnings"]
    )
    assert not any("uneven slice spacing" in w for w in record["warnings"])  # explained by the missing slice


def test_a_file_cut_inside_its_header_is_a_damaged_file(p001_files, tmp_path, ingest_settings):
    """A file cut inside its header is a damaged file, not "no image (structured report)", and
    the slice it held is named as missing."""
    folder = copy_files(p001_files[:30], tmp_path / "cut")
    victim = folder / p001_files[10].name
    victim.write_bytes(victim.read_bytes()[:1200])
    record = ingest_patient("X14", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert "1 file(s) ignored: damaged file (ends inside its header) (1)" in record["warnings"]
    assert (
        f"missing slice(s) at z = {slice_z(p001_files[10]):g} mm: filled by interpolation between the neighbouring slices"
        in record["warnings"]
    )
    assert not any("structured report" in w for w in record["warnings"])


def test_too_few_slices(p001_files, tmp_path, ingest_settings):
    record = ingest_patient("X10", copy_files(p001_files[:8], tmp_path / "few"), tmp_path / "out", ingest_settings)
    assert record["reasons"] == ["too few slices (8 < ingest.min_slices 16)"]


def test_unreadable_encoding(p001_files, tmp_path, ingest_settings):
    folder = rewrite(p001_files[:20], tmp_path / "htj2k", TransferSyntaxUID="1.2.840.10008.1.2.4.201")
    record = ingest_patient("X11", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert "unsupported encoding (transfer syntax 1.2.840.10008.1.2.4.201)" in record["reasons"][0]


def test_unexpected_error_excludes_only_that_patient(p001_files, tmp_path, ingest_settings, monkeypatch):
    import lungcam.ingest.stage

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(lungcam.ingest.stage.dcm2niix, "convert_files", broken)
    record = ingest_patient("X12", copy_files(p001_files[:20], tmp_path / "in"), tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert record["reasons"] == ["unexpected error during ingest (RuntimeError: decoder exploded); see the job log"]
    assert (tmp_path / "out" / RECORD_NAME).is_file()


def test_name_typed_into_series_description_is_scrubbed(p001_files, tmp_path, ingest_settings):
    folder = rewrite(p001_files[:20], tmp_path / "named", PatientName="Quillfeather^Jane", SeriesDescription="Thorax QUILLFEATHER lung")
    record = ingest_patient("X13", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert any("SeriesDescription" in w and "identifiers" in w for w in record["warnings"])
    for path in (tmp_path / "out").iterdir():
        if path.suffix == ".json":
            assert b"quillfeather" not in path.read_bytes().lower(), path.name


# ---- realistic cohorts: pseudonyms, mixed folders, duplicates, logs, reruns -------------------


@pytest.fixture(scope="module")
def cap001_files(data) -> list[Path]:
    return sorted_series(data / "covid-ct-md" / "cap001")


def test_a_pseudonym_in_the_dicom_header_is_never_scrubbed(p001_files, tmp_path, ingest_settings):
    """A cohort pseudonymised before sharing carries the sheet's id in PatientID (and a name built
    from it): the id stays the record's patient_id; the real identifiers are still scrubbed."""
    folder = rewrite(
        p001_files[:20],
        tmp_path / "pseudo",
        PatientID="P0042",
        PatientName="STUDY^X^P0042",
        InstitutionName="Quillfeather Clinic",
        SeriesDescription="Thorax P0042 Quillfeather Clinic",
    )
    record = ingest_patient("P0042", folder, tmp_path / "out", ingest_settings)
    assert record["patient_id"] == "P0042" and record["status"] == "ok", record["reasons"]
    assert "[removed" not in json.dumps({k: v for k, v in record.items() if k != "series"})
    assert record["series"]["chosen"]["description"] == "[removed: contained an identifier]"  # the institution in it
    assert json.loads((tmp_path / "out" / RECORD_NAME).read_text())["patient_id"] == "P0042"


def test_a_folder_with_two_studies_excludes_the_patient_unless_one_is_chosen(p001_files, cap001_files, tmp_path, ingest_settings):
    """Another patient's scan in the folder must not win by having more slices."""
    folder = copy_files(p001_files[:20], tmp_path / "mixed")
    copy_files(cap001_files[:30], folder)
    record = ingest_patient("X15", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert record["reasons"][0].startswith("the folder holds 2 studies (StudyInstanceUID differs; study 1: series ")
    assert "give the sample sheet's study_uid, or set ingest.series.multiple_studies: earliest" in record["reasons"][0]
    p001_study = str(pydicom.dcmread(p001_files[0], stop_before_pixels=True).StudyInstanceUID)
    picked = ingest_patient("X15", folder, tmp_path / "picked", ingest_settings, study_uid=p001_study)
    assert picked["status"] == "ok" and picked["header"]["images"] == 20
    assert any("not the study given by the sample sheet's study_uid" in r for s in picked["series"]["rejected"] for r in s["reasons"])
    earliest = ingest_patient(
        "X15", folder, tmp_path / "earliest", replace(ingest_settings, series=replace(ingest_settings.series, multiple_studies="earliest"))
    )
    assert earliest["status"] == "ok" and earliest["header"]["images"] == 30  # cap001 was scanned in 2019, P001 in 2020
    assert any(w.startswith("the folder holds 2 studies; the earliest was kept") for w in earliest["warnings"])
    assert p001_study not in json.dumps(earliest)


def test_series_of_two_patients_in_one_study_exclude_the_patient(p001_files, cap001_files, tmp_path, ingest_settings):
    study = str(pydicom.dcmread(p001_files[0], stop_before_pixels=True).StudyInstanceUID)
    folder = copy_files(p001_files[:20], tmp_path / "two")
    rewrite(cap001_files[:30], folder, StudyInstanceUID=study)
    record = ingest_patient("X16", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert record["reasons"][0].startswith("the folder holds series of 2 different patients (PatientID differs")
    for patient_id in ("98C14734-ASSH", "98C1066-ASAD"):
        assert patient_id.lower() not in json.dumps(record).lower()


def test_duplicate_files_and_a_link_loop_are_read_once(p001_files, tmp_path, ingest_settings):
    """A series exported twice into sub-folders and a folder linking back to its parent: each
    image is read once and the duplicates counted, not a false "HU check failed"."""
    folder = tmp_path / "twice"
    copy_files(p001_files[:20], folder / "export1")
    copy_files(p001_files[:20], folder / "export2")
    (folder / "export1" / "loop").symlink_to(folder)
    before = tree_digest(folder / "export1")
    record = ingest_patient("X17", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert record["header"]["images"] == 20 and record["files"]["dicom_images"] == 20
    assert record["files"]["duplicates_dropped"] == 20  # the second export; the loop is not entered again
    assert any(w.startswith("20 duplicate file(s) dropped") for w in record["warnings"])
    assert tree_digest(folder / "export1") == before


def test_two_scans_without_series_uid_are_not_merged(p001_files, cap001_files, tmp_path, ingest_settings):
    """Anonymised exports may blank SeriesInstanceUID: two scans then must stay two stacks, not
    one impossible volume with a false gantry tilt."""
    folder = rewrite(p001_files[:20], tmp_path / "blank", SeriesInstanceUID="", SeriesNumber=2)
    rewrite(cap001_files[:20], folder, SeriesInstanceUID="", SeriesNumber=2)
    record = ingest_patient("X18", folder, tmp_path / "out", ingest_settings)
    assert len(record["series"]["rejected"]) == 0 and record["status"] == "excluded"
    assert record["reasons"][0].startswith("the folder holds 2 studies")
    assert not any("gantry tilt" in w for w in record["warnings"])


def test_the_job_log_and_sidecar_carry_no_identifiers(p001_files, tmp_path, ingest_settings):
    """Logs are outputs too: the series description, file names and sidecar fields that carry a
    planted PatientID, institution or operator are blanked."""
    from lungcam.core.joblog import job_log

    folder = rewrite(
        p001_files[:20],
        tmp_path / "planted",
        PatientID="MRN55501234",
        InstitutionName="Quillfeather Clinic",
        StationName="QFC-CT7",
        OperatorsName="Marchetti^Lucia",
        SeriesDescription="Thorax MRN55501234 Quillfeather Clinic",
        ProtocolName="Quillfeather Clinic chest",
    )
    (folder / "MRN55501234_notes.txt").write_text("not an image")
    log_path = tmp_path / "logs" / "ingest.log"
    with job_log(log_path):
        record = ingest_patient("X19", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    text = log_path.read_text()
    assert "skipped [removed]_notes.txt: not DICOM" in text and "patient X19 ingested" in text
    sidecar = (tmp_path / "out" / SIDECAR_NAME).read_text()
    assert "ProtocolName" in sidecar
    for planted in ("MRN55501234", "Quillfeather", "QFC-CT7", "Marchetti"):
        assert planted.lower() not in text.lower(), planted
        assert planted.lower() not in sidecar.lower() and planted.lower() not in json.dumps(record).lower(), planted


def test_reingesting_gives_byte_identical_outputs(p001_files, tmp_path, ingest_settings):
    """The gzip header of the volume holds no time stamp or name: reruns compare byte for byte."""
    import time

    folder = copy_files(p001_files[:20], tmp_path / "in")
    ingest_patient("X20", folder, tmp_path / "a", ingest_settings)
    time.sleep(1.1)
    ingest_patient("X20", folder, tmp_path / "b", ingest_settings)
    first = (tmp_path / "a" / VOLUME_NAME).read_bytes()
    assert first[4:8] == b"\0\0\0\0" and not first[3] & 0x08  # MTIME 0, no FNAME field
    assert first == (tmp_path / "b" / VOLUME_NAME).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [RECORD_NAME, SIDECAR_NAME, VOLUME_NAME]
