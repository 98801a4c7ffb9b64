"""Metrics, figures, provenance, per-patient audit reports and the cohort summary
(lungcam.report: metrics, evaluation, figures, provenance, pages).

Every patient gets a report, excluded ones too (with the reason in its Errors section); the
summary links them all and lists every exclusion.
"""


include: "inputs/report.smk"


rule classification_metrics:
    input:
        unpack(classification_metrics_inputs),
    output:
        path("classification_metrics"),
    log:
        log_path("classification_metrics", None),
    benchmark:
        benchmark_path("classification_metrics", None)
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
        path("metrics"),
    log:
        log_path("metrics", None),
    benchmark:
        benchmark_path("metrics", None)
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/metrics.py"


rule classification_figures:
    input:
        predictions=path("predictions"),
    output:
        roc_pr=report(CLASSIFICATION_FIGURES["roc_pr"], caption="../report/roc_pr.rst", category="Classification"),
        confusion=report(CLASSIFICATION_FIGURES["confusion"], caption="../report/confusion.rst", category="Classification"),
        reliability=report(CLASSIFICATION_FIGURES["reliability"], caption="../report/reliability.rst", category="Classification"),
    log:
        log_path("classification_figures", None),
    benchmark:
        benchmark_path("classification_figures", None)
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
        path("provenance"),
    log:
        log_path("provenance", None),
    benchmark:
        benchmark_path("provenance", None)
    conda:
        "../../envs/train.yaml"
    params:
        config=config,
        lesion_masks=LESION_MASKS,
        models=list(REPORT_MODELS) if MODE == "predict" else [],
        lung_weights=list(LUNG_WEIGHTS),
        run=path("run"),  # written at the start of each run; not an input, it changes every run
    script:
        "../../scripts/provenance.py"


rule models:
    """Each model that classified patients: path, checksum, classes, training-set size (for the
    reports' About)."""
    input:
        models=list(REPORT_MODELS.values()),
    output:
        path("models"),
    log:
        log_path("models", None),
    benchmark:
        benchmark_path("models", None)
    conda:
        "../../envs/train.yaml"
    params:
        names=list(REPORT_MODELS),
    script:
        "../../scripts/models.py"


rule patient_report:
    input:
        unpack(patient_report_inputs),
    output:
        path("report"),
    log:
        log_path("patient_report"),
    benchmark:
        benchmark_path("patient_report")
    group:
        cluster_group("findings")
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    params:
        qc=path("qc"),
        classes=TASK_CLASSES,
        benchmarks=path("benchmarks"),
        map_target=lookup(dpath="cam/target", within=config),
        label=lambda wildcards: SAMPLES.loc[wildcards.patient, "label"],
    script:
        "../../scripts/patient_report.py"


rule summary:
    input:
        unpack(summary_inputs),
    output:
        summary=path("summary"),
        verdict=path("verdict"),  # printed when the run ends
    log:
        log_path("summary", None),
    benchmark:
        benchmark_path("summary", None)
    conda:
        "../../envs/train.yaml"
    params:
        classes=TASK_CLASSES,
        labels=SAMPLES["label"].to_dict(),
        sites=SITES,
        config=config,
    script:
        "../../scripts/summary.py"


localrules:
    report_site,


rule report_site:
    """The summary and the patient reports in one folder, linked as in results/, for
    `snakemake --report report.zip`."""
    input:
        unpack(report_site_inputs),
    output:
        report(directory(path("report_site")), htmlindex="summary.html", caption="../report/summary.rst", category="Summary"),
    log:
        log_path("report_site", None),
    benchmark:
        benchmark_path("report_site", None)
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/report_site.py"
