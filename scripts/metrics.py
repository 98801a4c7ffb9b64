"""Rule `metrics`: results/metrics.json, the classification metrics with the localisation figures (lungcam.report.evaluation)."""

from lungcam.core.joblog import job_log
from lungcam.core.records import read_record, write_record
from lungcam.report.evaluation import metrics_document

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    localisation = read_record(snakemake.input.localisation) if snakemake.input.get("localisation") else None
    write_record(snakemake.output[0], metrics_document(read_record(snakemake.input.classification), localisation))
    log.info("metrics.json written%s", " with localisation figures" if localisation else "")
