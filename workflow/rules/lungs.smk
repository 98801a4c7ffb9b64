"""Lungs: lung labels on each scan's own grid, lung QC and a QC montage.

An implausible mask excludes the patient: the checkpoint `lungs_status` gathers every
patient's lung status into one table, and the later stages are requested only for the patients
it lists as `ok`. With lungs.method: lungmask, its weights are an input; when they are not found
locally, `download_lungmask_weights` (a local rule: it runs where Snakemake runs, typically a
login node with internet) fetches them once into resources/lungmask/.
"""


rule lungs:
    input:
        unpack(lungs_inputs),
    output:
        **lobes_output(),
        labels=f"{RESULTS}/lungs/{{patient}}.nii.gz",
        montage=f"{RESULTS}/qc/{{patient}}_lungs.png",
        record=f"{WORK}/lungs/{{patient}}.json",
    log:
        log_path("lungs"),
    benchmark:
        benchmark_path("lungs")
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
        f"{WORK}/status/lungs.tsv",
    log:
        f"{LOGS}/lungs_status.log",
    benchmark:
        f"{LOGS}/benchmarks/lungs_status.tsv"
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
        [str(path) for path, _ in LUNGMASK_DOWNLOADS],
    log:
        f"{LOGS}/download_lungmask_weights.log",
    benchmark:
        f"{LOGS}/benchmarks/download_lungmask_weights.tsv"
    conda:
        "../../envs/lungs.yaml"
    params:
        urls=[url for _, url in LUNGMASK_DOWNLOADS],
    script:
        "../../scripts/download_lungmask_weights.py"
