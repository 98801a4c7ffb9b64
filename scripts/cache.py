"""Rule `cache`: one patient's model-input cache (lungcam.train.cache)."""

from lungcam.core.joblog import job_log
from lungcam.train.cache import CacheSettings, build_cache

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    summary = build_cache(
        snakemake.input.volume, snakemake.input.lungs, snakemake.output[0], CacheSettings.from_config(snakemake.params.settings)
    )
    log.info("cache of %s: %s", snakemake.wildcards.patient, summary)
