"""Rule `cam`: one patient's class activation map on its scan's grid (lungcam.cam)."""

from pathlib import Path

import pandas as pd

from lungcam.cam import write_patient_cam
from lungcam.joblog import job_log
from lungcam.training import pick_device

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    patient = snakemake.wildcards.patient
    predictions = pd.read_csv(snakemake.input.predictions, sep="\t", dtype={"patient_id": str, "label": str}, keep_default_na=False)
    row = predictions.set_index("patient_id").loc[patient].to_dict()
    models = {Path(p).stem: p for p in snakemake.input.models}
    model = models[f"fold{row['fold']}"] if str(row["fold"]) != "predict" else snakemake.input.models[0]
    row["patient_id"] = patient
    summary = write_patient_cam(
        model,
        row,
        snakemake.params.target,
        snakemake.input.cache,
        snakemake.input.lungs,
        snakemake.output.cam,
        pick_device(snakemake.params.device),
        snakemake.input.volume,
        snakemake.output.key_slices,
        snakemake.params.method,
        snakemake.params.steps,
        snakemake.params.shifts,
        snakemake.params.smooth_mm,
    )
    log.info("CAM of %s: %s", patient, summary)
