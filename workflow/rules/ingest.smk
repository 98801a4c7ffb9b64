"""Ingest: DICOM study -> one verified NIfTI volume per patient, with header QC.

`ingest` always succeeds for bad data (the record says `excluded` and why). Whether a patient
continues depends on what its DICOM folder holds, so the checkpoint `ingest_status` gathers
every patient's status into one table, and the later stages are requested only for the
patients it lists as `ok`. One checkpoint for the cohort, not one per patient: Snakemake
re-plans the whole DAG after each checkpoint (benchmarks/checkpoints.py).
"""


rule ingest:
    input:
        dicom=lambda wildcards: DICOM_DIRS[wildcards.patient],
    output:
        stage=directory(f"{WORK}/ingest/{{patient}}"),
    log:
        log_path("ingest"),
    benchmark:
        benchmark_path("ingest")
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        settings=lookup(dpath="ingest", within=config),
        study_uid=lambda wildcards: STUDY_UIDS.get(wildcards.patient, ""),
    script:
        "../../scripts/ingest.py"


checkpoint ingest_status:
    input:
        records=expand(rules.ingest.output.stage, patient=PATIENTS),
    output:
        f"{WORK}/status/ingest.tsv",
    log:
        f"{LOGS}/ingest_status.log",
    benchmark:
        f"{LOGS}/benchmarks/ingest_status.tsv"
    conda:
        "../../envs/ingest.yaml"
    params:
        record=RECORD_NAME,  # inside each patient's ingest folder
    script:
        "../../scripts/stage_status.py"


rule nifti:
    input:
        stage=rules.ingest.output.stage,
    output:
        volume=f"{RESULTS}/nifti/{{patient}}.nii.gz",
        sidecar=f"{RESULTS}/nifti/{{patient}}.json",
    log:
        log_path("nifti"),
    benchmark:
        benchmark_path("nifti")
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    script:
        "../../scripts/nifti.py"


localrules:
    ingest_status,
