"""What each patient's QC record and the cohort QC table are made from."""


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
