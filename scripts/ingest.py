"""Rule `ingest`: one patient's DICOM folder -> verified NIfTI and record (lungcam.ingest)."""

from lungcam.ingest import IngestSettings, ingest_patient
from lungcam.joblog import job_log

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    ingest_patient(
        snakemake.wildcards.patient,
        snakemake.input.dicom,
        snakemake.output.stage,
        IngestSettings.from_config(snakemake.params.settings),
        study_uid=snakemake.params.study_uid,
    )
