"""Prepare: each patient's QC record from its ingest and lungs records, and the cohort's QC
table; `snakemake prepare` runs ingest, lung masks and the model-input cache, without training.
"""


include: "inputs/prepare.smk"


rule patient_qc:
    # Run inside Snakemake's own process: merging two small JSON records must not start a Python
    # process per patient where Snakemake runs (a cluster's login node, thousands of patients).
    input:
        unpack(patient_qc_inputs),
    output:
        qc=path("qc"),
    log:
        path=log_path("patient_qc"),
    benchmark:
        benchmark_path("patient_qc")
    resources:
        # Merging two small records in Snakemake's process: the jobs must not hold back one
        # another (a profile's default mem_mb, counted against what Snakemake's machine has).
        mem_mb=50,
        runtime=1,
    run:
        merge_patient_records(wildcards.patient, input, output.qc, log.path)


# patient_qc and the status rules only read one or two small records per patient, so on a
# cluster they run where Snakemake runs rather than queueing SLURM jobs.
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
