"""Checkpoints `ingest_status` and `lungs_status`: every patient's status after one stage, in one
table (lungcam.records.write_status_table) that the workflow reads to decide who goes on."""

from pathlib import Path

from lungcam.ingest import RECORD_NAME
from lungcam.joblog import job_log
from lungcam.records import write_status_table

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    # ingest leaves a folder per patient with its record inside, lungs a record file per patient:
    # work/ingest/{patient}/record.json, work/lungs/{patient}.json.
    records = {}
    for path in map(Path, snakemake.input.records):
        patient, record = (path.name, path / RECORD_NAME) if path.is_dir() else (path.name.removesuffix(".json"), path)
        records[patient] = record
    write_status_table(records, snakemake.output[0])
    log.info("%s status of %d patients", snakemake.rule.removesuffix("_status"), len(records))
