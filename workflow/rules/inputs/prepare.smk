"""What each patient's QC record and the cohort QC table are made from, and patient_qc's job
(run in Snakemake's own process)."""

from lungcam.ingest import RECORD_NAME
from lungcam.report import write_patient_qc


def qc_records(wildcards) -> list[str]:
    """Every patient's QC file, requested once both status tables exist: each patient's QC job
    is then planned once, with its final inputs, instead of waiting on a checkpoint."""
    stage_statuses(checkpoints.lungs_status)
    return expand(path("qc"), patient=PATIENTS)


def patient_qc_inputs(wildcards) -> dict:
    """Stage records of one patient, and the outputs of every stage the patient reached.

    The patient's QC file is the last per-patient output, so requesting it builds the patient's
    whole chain up to the stage that excluded it (if any).
    """
    patient = wildcards.patient
    inputs = {"ingest": path("ingest", patient=patient)}
    if ingest_ok(patient):
        inputs["nifti"] = path("nifti", patient=patient)
        inputs["lungs"] = path("lung_record", patient=patient)
        if lungs_ok(patient):
            inputs["cache"] = path("cache", patient=patient)
    return inputs


def merge_patient_records(patient: str, inputs, qc: str, log: str) -> None:
    """patient_qc's job: the stage records among its inputs (the ingest record inside its
    folder, the lung record when the patient reached lungs) merged into the patient's QC file."""
    records = {"ingest": str(Path(inputs.ingest) / RECORD_NAME)}
    if "lungs" in inputs.keys():
        records["lungs"] = inputs.lungs
    write_patient_qc(patient, records, qc)
    Path(log).write_text(f"merged the {' and '.join(records)} records into {qc}\n")
