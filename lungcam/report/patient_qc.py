"""Merge the per-stage records of each patient into `qc/{patient_id}.json`, and read them back.

Each stage leaves a record with its own status, reasons and warnings. The patient's QC file
carries them all (one key per stage) plus the overall status: `excluded` as soon as one stage
excluded the patient, with every reason prefixed by its stage.
"""

from __future__ import annotations

from pathlib import Path

from lungcam.core.records import read_record, write_record

STAGE_ORDER = ("ingest", "lungs")


def merge_stage_records(patient_id: str, records: dict[str, dict]) -> dict:
    """Combine `{stage: record}` into the patient's QC document."""
    merged: dict = {"patient_id": patient_id, "status": "ok", "reasons": [], "warnings": [], "stages": {}}
    for stage in sorted(records, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER)):
        record = records[stage]
        merged["stages"][stage] = record["status"]
        merged["reasons"] += [f"{stage}: {r}" for r in record.get("reasons", [])]
        merged["warnings"] += [f"{stage}: {w}" for w in record.get("warnings", [])]
        merged[stage] = {k: v for k, v in record.items() if k not in ("patient_id", "stage", "status", "reasons", "warnings")}
    if merged["reasons"]:
        merged["status"] = "excluded"
    return merged


def write_patient_qc(patient_id: str, record_paths: dict[str, Path | str], output: Path | str) -> dict:
    merged = merge_stage_records(patient_id, {stage: read_record(path) for stage, path in record_paths.items()})
    write_record(output, merged)
    return merged


def read_patient_qc(folder: Path | str) -> list[dict]:
    """Every QC record in the QC folder, by patient id. The workflow writes the folder anew
    for each run, so it holds exactly the cohort's patients."""
    return [read_record(path) for path in sorted(Path(folder).glob("*.json"))]
