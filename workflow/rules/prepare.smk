"""Prepare: every patient's QC record from its ingest and lungs records, and the cohort's QC
table; `snakemake prepare` runs ingest, lung masks and the model-input cache, without training.
"""


include: "inputs/prepare.smk"


rule patient_qc:
    """Every patient's QC file, in one job: thousands of per-patient jobs that each merge two
    small JSON records would cost Snakemake more to schedule than to run."""
    input:
        unpack(patient_qc_inputs),
    output:
        folder=directory(path("qc_records")),
    log:
        log_path("patient_qc", None),
    benchmark:
        benchmark_path("patient_qc", None)
    conda:
        "../../envs/ingest.yaml"
    params:
        records=patient_qc_records,
        files={patient: path("qc", patient=patient) for patient in PATIENTS},
    script:
        "../../scripts/patient_qc.py"


# patient_qc and prepare only read small records, so on a cluster they run where Snakemake runs
# rather than queueing SLURM jobs.
localrules:
    patient_qc,
    prepare,


rule prepare:
    """Every patient through ingest, lung masks and the model-input cache, without training
    (`snakemake prepare`, e.g. on CPU nodes before the GPU jobs); ends with one table of every
    patient's QC status."""
    input:
        qc=path("qc_records"),
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
