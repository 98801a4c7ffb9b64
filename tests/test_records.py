"""Stage records and the per-stage status tables the workflow decides from."""

from __future__ import annotations

import numpy as np
import pytest

from lungcam.core.records import (
    StatusTableError,
    read_passed_patients,
    read_record,
    read_status_table,
    write_document,
    write_record,
    write_status_table,
)


def test_a_status_table_lists_every_patient_with_its_record_status(tmp_path):
    records = {}
    for patient, status in (("p2", "ok"), ("p10", "excluded"), ("p1", "ok")):
        path = tmp_path / "records" / f"{patient}.json"
        write_record(path, {"patient_id": patient, "status": status, "reasons": [] if status == "ok" else ["lungs: no lung found"]})
        records[patient] = path
    table = tmp_path / "status" / "lungs.tsv"
    write_status_table(records, table)
    assert read_status_table(table) == {"p1": "ok", "p10": "excluded", "p2": "ok"}
    assert table.read_text().splitlines() == ["patient_id\tstatus", "p1\tok", "p10\texcluded", "p2\tok"]  # sorted, stable
    assert list(table.parent.iterdir()) == [table]  # written through a temporary file, renamed


def test_a_record_that_lost_its_patient_id_stops_the_status_table(tmp_path):
    """A record whose patient_id was altered (e.g. scrubbed as an identifier) must stop the
    checkpoint with both ids named, not leave the patient out of the next stages."""
    good, altered = tmp_path / "P0042.json", tmp_path / "P0043.json"
    write_record(good, {"patient_id": "P0042", "status": "ok"})
    write_record(altered, {"patient_id": "[removed: contained an identifier]", "status": "ok"})
    with pytest.raises(StatusTableError, match=r"the record of patient 'P0043' names patient_id '\[removed"):
        write_status_table({"P0042": good, "P0043": altered}, tmp_path / "ingest.tsv")
    assert not (tmp_path / "ingest.tsv").exists()
    write_record(altered, {"patient_id": "P0043", "status": "done"})
    with pytest.raises(StatusTableError, match="has status 'done'"):
        write_status_table({"P0043": altered}, tmp_path / "ingest.tsv")


def test_an_empty_cohort_gives_an_empty_status_table(tmp_path):
    write_status_table({}, tmp_path / "ingest.tsv")
    assert read_status_table(tmp_path / "ingest.tsv") == {}


def test_the_passed_patients_are_read_from_the_cohort_table_in_its_order(tmp_path):
    table = tmp_path / "cohort_qc.tsv"
    table.write_text(
        "patient_id\tstatus\tstages\treasons\twarnings\n"
        "b\tok\tingest ok, lungs ok\t\t\n"
        "a\texcluded\tingest excluded\tingest: the DICOM folder is empty\t\n"
        "007\tok\tingest ok, lungs ok\t\tgantry tilt 18.5 degrees\n"
    )
    assert read_passed_patients(table) == ["b", "007"]  # ids stay text


def test_records_round_and_documents_keep_numbers_exact(tmp_path):
    """Records round floats (stable files); provenance keeps the config's numbers as run."""
    values = {"learning_rate": 1e-05, "dice": 0.123456789, "missing": float("nan"), "path": tmp_path, "n": np.int64(3)}
    write_record(tmp_path / "record.json", values)
    write_document(tmp_path / "document.json", values)
    assert read_record(tmp_path / "record.json") == {"learning_rate": 0.0, "dice": 0.1235, "missing": None, "path": str(tmp_path), "n": 3}
    assert read_record(tmp_path / "document.json") == {
        "learning_rate": 1e-05,
        "dice": 0.123456789,
        "missing": None,
        "path": str(tmp_path),
        "n": 3,
    }
