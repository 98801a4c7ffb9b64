"""Rule `classification_metrics`: the classification part of metrics.json (lungcam.report.evaluation)
and the nuisance-only baseline beside it (lungcam.report.nuisance_baseline)."""

from lungcam.core.joblog import job_log
from lungcam.core.records import read_predictions, write_record
from lungcam.report.evaluation import classification_metrics
from lungcam.report.nuisance_baseline import nuisance_baseline, nuisance_features
from lungcam.report.patient_qc import read_patient_qc

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    params = snakemake.params
    predictions = read_predictions(snakemake.input.predictions)
    document = classification_metrics(
        predictions,
        params.classes,
        params.seed,
        params.repeats,
        params.sites,
        params.models if snakemake.input.get("bank") else None,
        snakemake.input.get("bank"),
    )
    records = {record["patient_id"]: record for record in read_patient_qc(snakemake.input.qc)}
    document["nuisance_baseline"] = nuisance_baseline(nuisance_features(records), predictions, params.classes, params.seed, params.repeats)
    write_record(snakemake.output[0], document)
    overall = (document["classification"] or {}).get("overall")
    log.info(
        "metrics of %s patients: %s",
        (document["classification"] or {}).get("patients", 0),
        {k: overall[k] for k in ("accuracy", "macro_roc_auc")} if overall else document.get("classification_note"),
    )
    log.info(
        "nuisance-only baseline: %s",
        {
            k: document["nuisance_baseline"].get(k)
            for k in ("accuracy", "chance", "above_chance", "note")
            if k in document["nuisance_baseline"]
        },
    )
