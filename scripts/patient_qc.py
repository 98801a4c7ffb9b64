"""Rule `patient_qc`: every patient's stage records merged into results/qc/{patient_id}.json."""

from lungcam.core.joblog import job_log
from lungcam.report.patient_qc import write_patient_qc

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    excluded = 0
    for patient, records in snakemake.params.records.items():
        excluded += write_patient_qc(patient, records, snakemake.params.files[patient])["status"] != "ok"
    log.info("%d QC records, %d excluded", len(snakemake.params.records), excluded)
