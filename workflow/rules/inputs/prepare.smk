"""What the patients' QC records are made from."""

from lungcam.ingest import RECORD_NAME


def status_tables() -> list[str]:
    """Both stage status tables, which decide whose later records exist (waits for them; the
    lungs table first, so that a fresh plan already holds both checkpoints)."""
    return [checkpoints.lungs_status.get().output[0], checkpoints.ingest_status.get().output[0]]


def patient_qc_inputs(wildcards) -> dict:
    """Every patient's stage records, and the outputs of every stage each patient reached.

    The QC folder is the last output of the per-patient chains, so requesting it builds each
    patient's chain up to the stage that excluded it (if any). Requested once both status
    tables exist, so that the job is planned once, with its final inputs.
    """
    inputs = {"statuses": status_tables()}
    inputs |= {"ingest": [], "nifti": [], "lungs": [], "cache": []}
    for patient in PATIENTS:
        inputs["ingest"].append(path("ingest", patient=patient))
        if ingest_ok(patient):
            inputs["nifti"].append(path("nifti", patient=patient))
            inputs["lungs"].append(path("lung_record", patient=patient))
            if lungs_ok(patient):
                inputs["cache"].append(path("cache", patient=patient))
    return inputs


def patient_qc_records(wildcards) -> dict[str, dict[str, str]]:
    """patient -> the stage records merged into its QC file: the ingest record inside its
    folder, and the lung record when the patient reached lungs."""
    status_tables()  # the same checkpoints as the inputs (Snakemake refuses params that wait on others)
    records = {}
    for patient in PATIENTS:
        records[patient] = {"ingest": str(Path(path("ingest", patient=patient)) / RECORD_NAME)}
        if ingest_ok(patient):
            records[patient]["lungs"] = path("lung_record", patient=patient)
    return records
