"""Rule `models`: work/models.json, each model that classified patients (lungcam.report.provenance)."""

from lungcam.core.joblog import job_log
from lungcam.core.records import write_document
from lungcam.report.provenance import model_summary

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    models = {name: model_summary(path) for name, path in zip(snakemake.params.names, snakemake.input.models)}
    write_document(snakemake.output[0], models)
    log.info("models: %s", {name: m["trained_on"] for name, m in models.items()})
