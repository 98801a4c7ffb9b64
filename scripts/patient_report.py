"""Rule `patient_report`: reports/{patient_id}.html (lungcam.reports)."""

import pandas as pd

from lungcam.joblog import job_log
from lungcam.records import read_predictions, read_record
from lungcam.reports import patient_context, render, run_times

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
    model = snakemake.params.models.get(str(prediction["fold"])) if prediction else None
    context = patient_context(
        read_record(inputs.qc),
        read_record(inputs.provenance),
        snakemake.params.label,
        prediction,
        snakemake.params.classes,
        lesions,
        burden,
        inputs.get("key_slices"),
        inputs.get("montage"),
        run_times(snakemake.params.benchmarks, patient),
        model,
        "../summary.html",
    )
    render("patient.html.j2", context, snakemake.output[0])
    log.info("report of %s (%s)", patient, context["status"])
