"""Model-input cache: each lung-ok patient resampled, cropped and windowed for training and CAM."""


rule cache:
    input:
        volume=rules.nifti.output.volume,
        lungs=rules.lungs.output.labels,
    output:
        directory(f"{WORK}/cache/{{patient}}"),
    params:
        settings=lookup(dpath="cache", within=config),
    log:
        log_path("cache"),
    benchmark:
        benchmark_path("cache")
    resources:
        mem_mb=memory_mb(4000),
        runtime=5,
    conda:
        "../../envs/lungs.yaml"
    script:
        "../../scripts/cache.py"
