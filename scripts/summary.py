"""Rule `summary`: results/summary.html, the cohort summary (lungcam.report.pages, figures)."""

from pathlib import Path

from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions, read_record, write_record
from lungcam.report.figures import qc_strip_svg
from lungcam.report.pages import QC_MEASURES, qc_outliers, qc_table, render, summary_context
from lungcam.report.patient_qc import read_patient_qc

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    inputs, params = snakemake.input, snakemake.params
    burdens = {Path(p).stem: read_record(p) for p in inputs.burdens}
    table = qc_table(read_patient_qc(inputs.qc), read_predictions(inputs.predictions), burdens, params.labels, params.sites)
    outliers = {(o["patient_id"], o["measure"]) for o in qc_outliers(table, QC_MEASURES)}
    strip = qc_strip_svg(table, QC_MEASURES, params.classes, {p: f"reports/{p}.html" for p in table["patient_id"]}, outliers)
    figures = [
        (title, path) for title, path in zip(("ROC and precision-recall curves", "Confusion matrix", "Reliability diagram"), inputs.figures)
    ]
    figures += [(f"Training curves, {Path(p).stem}", p) for p in inputs.curves]
    context = summary_context(
        table, read_record(inputs.metrics), read_record(inputs.provenance), dict(params.config), params.classes, figures, strip
    )
    render("summary.html.j2", context, snakemake.output.summary)
    write_record(snakemake.output.verdict, {"summary": snakemake.output.summary, "verdict": context["verdict"]})
    log.info("summary of %d patients, %d excluded", len(table), len(context["exclusions"]))
