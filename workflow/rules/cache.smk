"""Model-input cache: each lung-ok patient resampled, cropped and windowed for training and CAM."""


rule cache:
    input:
        volume=path("nifti"),
        lungs=path("lungs"),
    output:
        directory(path("cache")),
    log:
        log_path("cache"),
    benchmark:
        benchmark_path("cache")
    group:
        LUNGS_GROUP
    conda:
        "../../envs/lungs.yaml"
    resources:
        mem_mb=memory_mb(4000),
        runtime=5,
    params:
        settings=lookup(dpath="cache", within=config),
    script:
        "../../scripts/cache.py"
