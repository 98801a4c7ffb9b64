"""Rule `ingest`: one patient's DICOM folder -> verified NIfTI and record (lungcam.ingest.stage)."""

from lungcam.core.joblog import job_log
from lungcam.ingest.stage import IngestSettings, ingest_patient

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    ingest_patient(
        snakemake.wildcards.patient,
        snakemake.input.dicom,
        snakemake.output.stage,
        IngestSettings.from_config(snakemake.params.settings),
        study_uid=snakemake.params.study_uid,
    )
