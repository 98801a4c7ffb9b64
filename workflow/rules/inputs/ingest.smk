"""What the ingest rules are given, and who passed ingest."""

from lungcam.ingest import RECORD_NAME


def ingest_ok(patient: str) -> bool:
    """Whether `patient` passed ingest (waits for the cohort's ingest status)."""
    return stage_statuses(checkpoints.ingest_status).get(patient) == "ok"
