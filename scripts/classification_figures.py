"""Rule `classification_figures`: ROC/PR, confusion matrix and reliability diagram (lungcam.evaluation)."""

from lungcam.evaluation import classification_figures
from lungcam.joblog import job_log
from lungcam.records import read_predictions

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
