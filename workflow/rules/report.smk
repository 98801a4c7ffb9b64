"""Metrics, figures, provenance, per-patient audit reports and the cohort summary
(lungcam.report.metrics, evaluation, figures, provenance, reports).

Every patient gets a report, excluded ones too (with the reason in its Errors section); the
summary links them all and lists every exclusion.
"""


rule classification_metrics:
    input:
        unpack(classification_metrics_inputs),
    output:
        f"{WORK}/metrics/classification.json",
    log:
        f"{LOGS}/classification_metrics.log",
    benchmark:
        f"{LOGS}/benchmarks/classification_metrics.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        classes=TASK_CLASSES,
        seed=lookup(dpath="train/seed", within=config),
        repeats=lookup(dpath="report/bootstrap", within=config),
        sites=SITES,
        models=REPORT_MODELS,
    script:
        "../../scripts/classification_metrics.py"


rule metrics:
    input:
        unpack(metrics_inputs),
    output:
        f"{RESULTS}/metrics.json",
    log:
        f"{LOGS}/metrics.log",
    benchmark:
        f"{LOGS}/benchmarks/metrics.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/metrics.py"


rule classification_figures:
    input:
        predictions=f"{RESULTS}/predictions.tsv",
    output:
        roc_pr=report(f"{RESULTS}/figures/roc_pr.png", caption="../report/roc_pr.rst", category="Classification"),
        confusion=report(f"{RESULTS}/figures/confusion.png", caption="../report/confusion.rst", category="Classification"),
        reliability=report(f"{RESULTS}/figures/reliability.png", caption="../report/reliability.rst", category="Classification"),
    log:
        f"{LOGS}/classification_figures.log",
    benchmark:
        f"{LOGS}/benchmarks/classification_figures.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        classes=TASK_CLASSES,
    script:
        "../../scripts/classification_figures.py"


rule provenance:
    input:
        unpack(provenance_inputs),
    output:
        f"{RESULTS}/provenance.json",
    log:
        f"{LOGS}/provenance.log",
    benchmark:
        f"{LOGS}/benchmarks/provenance.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        config=config,
        lesion_masks=LESION_MASKS,
    script:
        "../../scripts/provenance.py"


rule patient_report:
    input:
        unpack(patient_report_inputs),
    output:
        f"{RESULTS}/reports/{{patient}}.html",
    log:
        log_path("patient_report"),
    benchmark:
        benchmark_path("patient_report")
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    params:
        classes=TASK_CLASSES,
        benchmarks=f"{LOGS}/benchmarks",
        models=REPORT_MODELS,
        label=lambda wildcards: SAMPLES.loc[wildcards.patient, "label"],
    script:
        "../../scripts/patient_report.py"


rule summary:
    input:
        unpack(summary_inputs),
    output:
        report(f"{RESULTS}/summary.html", caption="../report/summary.rst", category="Summary"),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/benchmarks/summary.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        classes=TASK_CLASSES,
        labels=SAMPLES["label"].to_dict(),
        sites=SITES,
        config=config,
    script:
        "../../scripts/summary.py"
