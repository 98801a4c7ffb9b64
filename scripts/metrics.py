"""Rule `metrics`: results/metrics.json (lungcam.evaluation)."""

import json

from lungcam.evaluation import metrics_document, read_predictions, write_metrics
from lungcam.joblog import job_log

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    localisation = json.loads(open(snakemake.input.localisation).read()) if snakemake.input.get("localisation") else None
    document = metrics_document(read_predictions(snakemake.input.predictions), snakemake.params.classes, snakemake.params.seed, snakemake.params.repeats,
                                snakemake.params.sites, snakemake.params.models if snakemake.input.get("bank") else None, snakemake.input.get("bank"), localisation)
    write_metrics(document, snakemake.output[0])
    overall = (document["classification"] or {}).get("overall")
    log.info("metrics of %s patients: %s", (document["classification"] or {}).get("patients", 0),
             {k: overall[k] for k in ("accuracy", "macro_roc_auc")} if overall else document.get("classification_note"))
