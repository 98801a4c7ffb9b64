"""Class activation maps: one heatmap per patient, on the grid of its scan (lungcam.cam.maps).

Each patient is mapped by the model that did not see it in training (the fold model that held
it out), or by predict.model in mode predict.
"""

# The keys of section cam that change a map (not the lesion or localisation settings).
MAP_SETTINGS = ("target", "method", "ig_steps", "shifts", "smooth_mm")


rule cam:
    input:
        cache=f"{WORK}/cache/{{patient}}",
        volume=f"{RESULTS}/nifti/{{patient}}.nii.gz",
        lungs=f"{RESULTS}/lungs/{{patient}}.nii.gz",
        predictions=f"{RESULTS}/predictions.tsv",
        models=CAM_MODELS,
    output:
        cam=f"{RESULTS}/cam/{{patient}}.nii.gz",
        key_slices=report(
            f"{RESULTS}/cam/{{patient}}_key_slices.png",
            caption="../report/key_slices.rst",
            category="Infection maps",
            labels={"patient": "{patient}"},
        ),
    log:
        log_path("cam"),
    benchmark:
        benchmark_path("cam")
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
        cam=rules.cam.output.cam,
        lungs=f"{RESULTS}/lungs/{{patient}}.nii.gz",
    output:
        table=f"{RESULTS}/lesions/{{patient}}.tsv",
        burden=f"{RESULTS}/lesions/{{patient}}.json",
    log:
        log_path("lesions"),
    benchmark:
        benchmark_path("lesions")
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
        patients=f"{RESULTS}/localisation.tsv",
        summary=f"{RESULTS}/localisation.json",
    log:
        f"{LOGS}/localisation.log",
    benchmark:
        f"{LOGS}/benchmarks/localisation.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        settings=lookup(dpath="cam/lesions", within=config),
        seed=lookup(dpath="train/seed", within=config),
        masks=LESION_MASKS,
    script:
        "../../scripts/localisation.py"
