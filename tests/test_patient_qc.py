"""The patients' QC files: stage records merged per patient, read back from the QC folder."""

from lungcam.core.records import write_record
from lungcam.report.patient_qc import read_patient_qc, write_patient_qc


def test_a_stage_that_excluded_the_patient_excludes_it_with_the_stage_named(tmp_path):
    ingest = tmp_path / "ingest.json"
    lungs = tmp_path / "lungs.json"
    write_record(ingest, {"patient_id": "P1", "stage": "ingest", "status": "ok", "warnings": ["gantry tilt corrected"], "slices": 80})
    write_record(lungs, {"patient_id": "P1", "stage": "lungs", "status": "excluded", "reasons": ["left lung missing"], "total_ml": 900.0})
    merged = write_patient_qc("P1", {"lungs": lungs, "ingest": ingest}, tmp_path / "qc" / "P1.json")
    assert merged["status"] == "excluded"
    assert merged["stages"] == {"ingest": "ok", "lungs": "excluded"}
    assert merged["reasons"] == ["lungs: left lung missing"]
    assert merged["warnings"] == ["ingest: gantry tilt corrected"]
    assert merged["ingest"] == {"slices": 80} and merged["lungs"] == {"total_ml": 900.0}


def test_the_qc_folder_reads_back_every_record_and_nothing_else(tmp_path):
    ingest = tmp_path / "ingest.json"
    write_record(ingest, {"patient_id": "x", "stage": "ingest", "status": "ok"})
    folder = tmp_path / "qc"
    for patient in ("P2", "P10", "P1"):
        write_patient_qc(patient, {"ingest": ingest}, folder / f"{patient}.json")
    (folder / ".snakemake_timestamp").touch()  # Snakemake's mark in a directory output
    records = read_patient_qc(folder)
    assert [r["patient_id"] for r in records] == ["P1", "P10", "P2"]
    assert all(r["status"] == "ok" and r["stages"] == {"ingest": "ok"} for r in records)
