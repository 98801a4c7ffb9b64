"""Rule `patient_report`: reports/{patient_id}.html (lungcam.report.pages)."""

import pandas as pd

from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions, read_record
from lungcam.report.pages import patient_context, render, run_times

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    patient = snakemake.wildcards.patient
    inputs = snakemake.input
    prediction = None
    if inputs.get("predictions"):
        predictions = read_predictions(inputs.predictions).set_index("patient_id", drop=False)
        prediction = predictions.loc[patient].to_dict() if patient in predictions.index else None
    lesions = pd.read_csv(inputs.lesions, sep="\t") if inputs.get("lesions") else None
    burden = read_record(inputs.burden) if inputs.get("burden") else None
    context = patient_context(
        read_record(snakemake.params.qc),
        read_record(inputs.provenance),
        label=snakemake.params.label,
        prediction=prediction,
        classes=snakemake.params.classes,
        lesions=lesions,
        burden=burden,
        key_slices=inputs.get("key_slices"),
        lung_montage=inputs.get("montage"),
        times=run_times(snakemake.params.benchmarks, patient),
        map_target=snakemake.params.map_target,
        models=read_record(inputs.models) if inputs.get("models") else None,
    )
    render("patient.html.j2", context, snakemake.output[0])
    log.info("report of %s (%s)", patient, context["status"])
