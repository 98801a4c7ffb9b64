"""Rule `localisation`: CAM against the sample sheet's lesion masks and the slice-level labels
of `cam.slice_labels` (lungcam.cam.localisation)."""

import pandas as pd

from lungcam.cam.lesions import LesionSettings
from lungcam.cam.localisation import localise_cohort
from lungcam.core.atomic import write_tsv
from lungcam.core.joblog import job_log
from lungcam.core.records import write_record

snakemake = globals()["snakemake"]


with job_log(snakemake.log[0]) as log:
    slice_labels = (
        pd.read_csv(snakemake.input.slice_labels, sep="\t", dtype={"patient_id": str}) if snakemake.input.get("slice_labels") else None
    )
    table, summary = localise_cohort(
        snakemake.input.cams,
        snakemake.input.lungs,
        snakemake.params.masks,
        slice_labels,
        LesionSettings.from_config(snakemake.params.settings),
        snakemake.params.seed,
    )
    if "slice_labels" in summary:
        summary["slice_labels"] = {"file": str(snakemake.input.slice_labels)} | summary["slice_labels"]
    write_tsv(table, snakemake.output.patients, float_format="%.4f")
    write_record(snakemake.output.summary, summary)
    log.info("localisation of %d patients: %s", len(table), summary)
