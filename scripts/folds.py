"""Rule `folds`: patient-level stratified folds of the patients that passed QC (lungcam.folds)."""

import pandas as pd

from lungcam.folds import assign_folds
from lungcam.joblog import job_log
from lungcam.records import read_record

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    classes, labels = snakemake.params.classes, snakemake.params.labels
    rows = []
    for path in snakemake.input.qc:
        qc = read_record(path)
        if qc["status"] == "ok" and labels.get(qc["patient_id"]) in classes:
            rows.append({"patient_id": qc["patient_id"], "label": labels[qc["patient_id"]]})
    folds = assign_folds(pd.DataFrame(rows, columns=["patient_id", "label"]), snakemake.params.folds, snakemake.params.seed)
    folds.to_csv(snakemake.output[0], sep="\t", index=False)
    log.info("%d patients in %d folds: %s", len(folds), snakemake.params.folds, folds["label"].value_counts().to_dict())
