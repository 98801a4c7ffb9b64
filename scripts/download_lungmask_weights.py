"""Local rule `download_lungmask_weights`: fetch lungmask weights once into resources/lungmask/."""

from lungcam.core.joblog import job_log
from lungcam.lungs.lungmask_backend import download_weights

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    for url, target in zip(snakemake.params.urls, snakemake.output):
        download_weights(url, target)
        log.info("downloaded %s to %s", url, target)
