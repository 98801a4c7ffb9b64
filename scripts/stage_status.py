"""Checkpoints `ingest_status` and `lungs_status`: every patient's status after one stage, in one
table (lungcam.core.records.write_status_table) that the workflow reads to decide who goes on."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.core.records import write_status_table

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    # A patient's input is its record ({patient}.json) or its folder holding params.record.
    records = {Path(p).name.removesuffix(".json"): Path(p, snakemake.params.record) for p in snakemake.input.records}
    write_status_table(records, snakemake.output[0])
    log.info("%s status of %d patients", snakemake.rule.removesuffix("_status"), len(records))
