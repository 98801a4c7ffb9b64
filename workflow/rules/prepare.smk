"""Prepare: each patient's QC record from its ingest and lungs records, and the cohort's QC
table; `snakemake prepare` runs ingest, lung masks and the model-input cache, without training.
"""


include: "inputs/prepare.smk"


rule patient_qc:
    input:
        unpack(patient_qc_inputs),
    output:
        path("qc"),
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
    patient_qc,
    prepare,


rule prepare:
    """Every patient through ingest, lung masks and the model-input cache, without training
    (`snakemake prepare`, e.g. on CPU nodes before the GPU jobs); ends with one table of every
    patient's QC status."""
    input:
        qc=qc_records,
        demo_samples=path("demo_samples") if DEMO else [],
    output:
        path("cohort_qc"),
    log:
        log_path("prepare", None),
    benchmark:
        benchmark_path("prepare", None)
    conda:
        "../../envs/ingest.yaml"
    script:
        "../../scripts/cohort_qc.py"
