"""Rule `predictions`: the out-of-fold predictions of all folds in results/predictions.tsv."""

import pandas as pd

from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions, write_predictions

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    write_predictions(pd.concat([read_predictions(p) for p in snakemake.input]).sort_values("patient_id"), snakemake.output[0])
