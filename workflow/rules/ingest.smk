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


rule patient_qc:
    input:
        unpack(patient_qc_inputs),
    output:
        f"{RESULTS}/qc/{{patient}}.json",
    log:
        log_path("patient_qc"),
    benchmark:
        benchmark_path("patient_qc")
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    script:
        "../../scripts/patient_qc.py"


# patient_qc only merges two small JSON records and the status rules read one record per
# patient, so on a cluster they run where Snakemake runs rather than queueing SLURM jobs.
# patient_qc must stay out of SLURM groups anyway: its input waits on checkpoints, and
# Snakemake's dry run of a group holding such a job fails now and then with
# "KeyError: patient_qc" (snakemake/snakemake#4202).
localrules:
    ingest_status,
    patient_qc,
    prepare,


rule prepare:
    """Every patient through ingest, lung masks and the model-input cache, without training
    (`snakemake prepare`, e.g. on CPU nodes before the GPU jobs); ends with one table of every
    patient's QC status."""
    input:
        qc=qc_records,
        demo_samples=f"{DEMO_ROOT}/samples.tsv" if DEMO else [],
    output:
        f"{RESULTS}/cohort_qc.tsv",
    log:
        f"{LOGS}/prepare.log",
    benchmark:
        f"{LOGS}/benchmarks/prepare.tsv"
    conda:
        "../../envs/ingest.yaml"
    script:
        "../../scripts/cohort_qc.py"
