"""Lungs: lung labels on each scan's own grid, lung QC and a QC montage.

An implausible mask excludes the patient: the checkpoint `lungs_status` gathers every
patient's lung status into one table, and the later stages are requested only for the patients
it lists as `ok`. With lungs.method: lungmask, its weights are an input; when they are not found
locally, `download_lungmask_weights` (a local rule: it runs where Snakemake runs, typically a
login node with internet) fetches them once into resources/lungmask/. With the threshold method,
the learned lung prior's weights are an input too: `train_lung_prior` makes them once, from
phantoms whose truth is known, into resources/lung_prior.pt.
"""


include: "inputs/lungs.smk"


rule lungs:
    # With lungmask the jobs need a GPU: named lungs_gpu, so that a profile can send them to a
    # GPU partition (profiles/slurm), and grouped apart from the CPU chain.
    name:
        "lungs_gpu" if LUNGMASK else "lungs"
    input:
        unpack(lungs_inputs),
    output:
        **({"lobes": path("lobes")} if LOBES else {}),
        labels=path("lungs"),
        montage=report(path("lung_montage"), caption="../report/lung_montage.rst", category="Lung QC", labels={"patient": "{patient}"}),
        record=path("lung_record"),
    log:
        log_path("lungs"),
    benchmark:
        benchmark_path("lungs")
    group:
        LUNGS_GROUP
    conda:
        "../../envs/lungs.yaml"
    resources:
        mem_mb=memory_mb(6000),
        runtime=15,
        gpu=1 if LUNGMASK else 0,
    params:
        settings=lookup(dpath="lungs", within=config),
    script:
        "../../scripts/lungs.py"


checkpoint lungs_status:
    input:
        unpack(lungs_status_inputs),
    output:
        path("status", stage="lungs"),
    log:
        log_path("lungs_status", None),
    benchmark:
        benchmark_path("lungs_status", None)
    conda:
        "../../envs/lungs.yaml"
    params:
        record="",  # each input is the record itself
    script:
        "../../scripts/stage_status.py"


localrules:
    download_lungmask_weights,
    lungs_status,


rule download_lungmask_weights:
    output:
        [str(weights) for weights, _ in LUNGMASK_DOWNLOADS],
    log:
        log_path("download_lungmask_weights", None),
    benchmark:
        benchmark_path("download_lungmask_weights", None)
    conda:
        "../../envs/lungs.yaml"
    params:
        urls=[url for _, url in LUNGMASK_DOWNLOADS],
    script:
        "../../scripts/download_lungmask_weights.py"


rule train_lung_prior:
    input:
        background=config["lungs"]["prior"]["train"]["background"] or [],
    output:
        str(PRIOR.path()),
    log:
        log_path("train_lung_prior", None),
    benchmark:
        benchmark_path("train_lung_prior", None)
    conda:
        "../../envs/lung_prior.yaml"
    threads: 4
    resources:
        mem_mb=memory_mb(8000),
        runtime=240,
    params:
        train=lookup(dpath="lungs/prior/train", within=config),
        ingest=lookup(dpath="ingest", within=config),
        classes=lookup(dpath="classes", within=config),
    script:
        "../../scripts/train_lung_prior.py"
