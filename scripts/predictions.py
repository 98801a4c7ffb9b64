"""Rule `predictions`: the out-of-fold predictions of all folds in results/predictions.tsv."""

import pandas as pd

from lungcam.atomic import write_tsv
from lungcam.joblog import job_log

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    table = pd.concat([pd.read_csv(p, sep="\t", dtype={"patient_id": str}) for p in snakemake.input])
    write_tsv(table.sort_values("patient_id"), snakemake.output[0], float_format="%.6f")
