"""Rule `nifti`: publish an ingested patient's volume and sidecar under results/nifti/."""

from lungcam.core.joblog import job_log
from lungcam.ingest.stage import publish

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    publish(snakemake.input.stage, snakemake.output.volume, snakemake.output.sidecar)
