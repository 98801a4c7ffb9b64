"""Rule `nifti`: publish an ingested patient's volume and sidecar under results/nifti/."""

from lungcam.ingest import publish
from lungcam.joblog import job_log

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    publish(snakemake.input.stage, snakemake.output.volume, snakemake.output.sidecar)
