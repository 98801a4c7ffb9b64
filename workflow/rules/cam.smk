"""Class activation maps: one heatmap per patient, on the grid of its scan (lungcam.cam.maps).

Each patient is mapped by the model that did not see it in training (the fold model that held
it out), or by predict.model in mode predict.
"""


include: "inputs/cam.smk"


rule cam:
    input:
        cache=path("cache"),
        volume=path("nifti"),
        lungs=path("lungs"),
        predictions=path("predictions"),
        models=CAM_MODELS,
    output:
        cam=path("cam"),
        key_slices=report(
            path("key_slices"),
            caption="../report/key_slices.rst",
            category="Infection maps",
            labels={"patient": "{patient}"},
        ),
    log:
        log_path("cam"),
    benchmark:
        benchmark_path("cam")
    group:
        cluster_group("maps")
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=memory_mb(4000),
        runtime=5,
        gpu=CAM_GPUS,
    params:
        settings={key: config["cam"][key] for key in MAP_SETTINGS},
        device=lookup(dpath="train/device", within=config),
    script:
        "../../scripts/cam.py"


rule lesions:
    input:
        cam=path("cam"),
        lungs=path("lungs"),
    output:
        table=path("lesions"),
        burden=path("burden"),
    log:
        log_path("lesions"),
    benchmark:
        benchmark_path("lesions")
    group:
        cluster_group("findings")
    conda:
        "../../envs/lungs.yaml"
    resources:
        mem_mb=memory_mb(3000),
        runtime=5,
    params:
        settings=lookup(dpath="cam/lesions", within=config),
    script:
        "../../scripts/lesions.py"


rule localisation:
    input:
        unpack(localisation_inputs),
    output:
        patients=path("localisation_table"),
        summary=path("localisation"),
    log:
        log_path("localisation", None),
    benchmark:
        benchmark_path("localisation", None)
    conda:
        "../../envs/train.yaml"
    params:
        settings=lookup(dpath="cam/lesions", within=config),
        seed=lookup(dpath="train/seed", within=config),
        masks=LESION_MASKS,
    script:
        "../../scripts/localisation.py"
