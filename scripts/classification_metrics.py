"""Rule `classification_metrics`: the classification part of metrics.json (lungcam.evaluation)."""

from lungcam.evaluation import classification_metrics
from lungcam.joblog import job_log
from lungcam.records import read_predictions, write_record

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    params = snakemake.params
    document = classification_metrics(read_predictions(snakemake.input.predictions), params.classes, params.seed, params.repeats, params.sites,
                                      params.models if snakemake.input.get("bank") else None, snakemake.input.get("bank"))
    write_record(snakemake.output[0], document)
    overall = (document["classification"] or {}).get("overall")
    log.info("metrics of %s patients: %s", (document["classification"] or {}).get("patients", 0),
             {k: overall[k] for k in ("accuracy", "macro_roc_auc")} if overall else document.get("classification_note"))
