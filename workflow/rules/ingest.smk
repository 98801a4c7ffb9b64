"""Ingest: DICOM study -> one verified NIfTI volume per patient, with header QC.

`ingest` is a checkpoint: whether a patient continues depends on what its DICOM folder holds.
It always succeeds for bad data (the record says `excluded` and why); the patient's later
stages are requested only for patients whose record says `ok`.
"""


checkpoint ingest:
    input:
        dicom=lambda wildcards: SAMPLES.loc[wildcards.patient, "dicom_dir"],
    output:
        stage=directory(f"{WORK}/ingest/{{patient}}"),
    params:
        settings=lookup(dpath="ingest", within=config),
    log:
        log_path("ingest"),
    benchmark:
        benchmark_path("ingest")
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    conda:
        "../../envs/ingest.yaml"
    script:
        "../../scripts/ingest.py"


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
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    conda:
        "../../envs/ingest.yaml"
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
    resources:
        mem_mb=memory_mb(1000),
        runtime=2,
    conda:
        "../../envs/ingest.yaml"
    script:
        "../../scripts/patient_qc.py"


# patient_qc only merges two small JSON records, so on a cluster it runs where Snakemake runs
# rather than queueing a SLURM job. It must stay out of SLURM groups anyway: its input waits on
# a checkpoint, and Snakemake's dry run of a group holding such a job fails now and then with
# "KeyError: patient_qc" (snakemake/snakemake#4202).
localrules:
    patient_qc,
    prepare,


rule prepare:
    """Every patient through ingest, lung masks and the model-input cache, without training
    (`snakemake prepare`, e.g. on CPU nodes before the GPU jobs); ends with one table of every
    patient's QC status."""
    input:
        qc=expand(f"{RESULTS}/qc/{{patient}}.json", patient=PATIENTS),
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
