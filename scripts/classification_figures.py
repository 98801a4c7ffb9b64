"""Rule `classification_figures`: ROC/PR, confusion matrix and reliability diagram (lungcam.report.evaluation)."""

from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions
from lungcam.report.evaluation import classification_figures

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    classification_figures(
        read_predictions(snakemake.input.predictions),
        snakemake.params.classes,
        snakemake.output.roc_pr,
        snakemake.output.confusion,
        snakemake.output.reliability,
    )
    log.info("classification figures written")
