"""Rule `patient_qc`: merge a patient's stage records into results/qc/{patient}.json."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.ingest import RECORD_NAME
from lungcam.report.patient_qc import write_patient_qc

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    records = {"ingest": Path(snakemake.input.ingest) / RECORD_NAME}
    if "lungs" in snakemake.input.keys():
        records["lungs"] = snakemake.input.lungs
    write_patient_qc(snakemake.wildcards.patient, records, snakemake.output[0])
