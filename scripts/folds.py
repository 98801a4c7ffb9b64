"""Rule `folds`: patient-level stratified folds of the patients that passed QC (lungcam.core.folds)."""

import pandas as pd

from lungcam.core.atomic import write_tsv
from lungcam.core.folds import assign_folds
from lungcam.core.joblog import job_log
from lungcam.core.records import read_passed_patients

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    classes, labels = snakemake.params.classes, snakemake.params.labels
    passed = set(read_passed_patients(snakemake.input.cohort_qc))
    ok = [p for p, label in labels.items() if p in passed and label in classes]  # in sample-sheet order
    rows = pd.DataFrame({"patient_id": ok, "label": [labels[p] for p in ok]}, columns=["patient_id", "label"])
    folds = assign_folds(rows, snakemake.params.folds, snakemake.params.seed)
    write_tsv(folds, snakemake.output[0])
    log.info("%d patients in %d folds: %s", len(folds), snakemake.params.folds, folds["label"].value_counts().to_dict())
