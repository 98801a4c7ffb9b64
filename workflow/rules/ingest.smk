"""Ingest: DICOM study -> one verified NIfTI volume per patient, with header QC.

`ingest` always succeeds for bad data (the record says `excluded` and why). Whether a patient
continues depends on what its DICOM folder holds, so the checkpoint `ingest_status` gathers
every patient's status into one table, and the later stages are requested only for the
patients it lists as `ok`. One checkpoint for the cohort, not one per patient: Snakemake
re-plans the whole DAG after each checkpoint (benchmarks/checkpoints.py).
"""


include: "inputs/ingest.smk"


rule ingest:
    input:
        dicom=lambda wildcards: DICOM_DIRS[wildcards.patient],
    output:
        stage=directory(path("ingest")),
    log:
        log_path("ingest"),
    benchmark:
        benchmark_path("ingest")
    group:
        cluster_group("prepare")
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
        records=expand(path("ingest"), patient=PATIENTS),
    output:
        path("status", stage="ingest"),
    log:
        log_path("ingest_status", None),
    benchmark:
        benchmark_path("ingest_status", None)
    conda:
        "../../envs/ingest.yaml"
    params:
        record=RECORD_NAME,  # inside each patient's ingest folder
    script:
        "../../scripts/stage_status.py"


rule nifti:
    input:
        stage=path("ingest"),
    output:
        volume=path("nifti"),
        sidecar=path("sidecar"),
    log:
        log_path("nifti"),
    benchmark:
        benchmark_path("nifti")
    group:
        cluster_group("prepare")
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    script:
        "../../scripts/nifti.py"


localrules:
    ingest_status,
