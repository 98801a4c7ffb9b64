"""Ingest stage on the real reference data and on damaged studies built from it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lungcam.dcm2niix import read_sidecar
from lungcam.hu_check import verify_hu
from lungcam.ingest import RECORD_NAME, SIDECAR_NAME, VOLUME_NAME, ingest_patient, publish

from .conftest import REAL_CASES, copy_files

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
    files = list((data / "covid-ct-md" / "P001").iterdir())
    return sorted(files, key=lambda p: -float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def rewrite(files, folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        for key, value in changes.items():
            if key == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            else:
                setattr(ds, key, value)
        ds.save_as(folder / path.name)
    return folder


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
    assert record["reasons"] == ["slices missing: a gap of 14.0 mm between neighbouring slices exceeds ingest.max_slice_gap_mm (10)"]


def test_small_gap_is_resampled_with_warning(p001_files, tmp_path, ingest_settings):
    kept = p001_files[:20] + p001_files[21:40]  # one slice missing: a 4 mm gap
    record = ingest_patient("X9", copy_files(kept, tmp_path / "gap1"), tmp_path / "out", ingest_settings)
    assert record["status"] == "ok", record["reasons"]
    assert record["volume"]["variant"] == "equalized"
    assert any("uneven slice spacing" in w for w in record["warnings"])


def test_too_few_slices(p001_files, tmp_path, ingest_settings):
    record = ingest_patient("X10", copy_files(p001_files[:8], tmp_path / "few"), tmp_path / "out", ingest_settings)
    assert record["reasons"] == ["too few slices (8 < ingest.min_slices 16)"]


def test_unreadable_encoding(p001_files, tmp_path, ingest_settings):
    folder = rewrite(p001_files[:20], tmp_path / "htj2k", TransferSyntaxUID="1.2.840.10008.1.2.4.201")
    record = ingest_patient("X11", folder, tmp_path / "out", ingest_settings)
    assert record["status"] == "excluded"
    assert "unsupported encoding (transfer syntax 1.2.840.10008.1.2.4.201)" in record["reasons"][0]


def test_unexpected_error_excludes_only_that_patient(p001_files, tmp_path, ingest_settings, monkeypatch):
    import lungcam.ingest

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(lungcam.ingest.dcm2niix, "convert_files", broken)
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
