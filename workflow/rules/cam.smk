"""Class activation maps: one heatmap per patient, on the grid of its scan (lungcam.cam).

Each patient is mapped by the model that did not see it in training (the fold model that held
it out), or by predict.model in mode predict.
"""


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
        target=lookup(dpath="cam/target", within=config),
        method=lookup(dpath="cam/method", within=config),
        steps=lookup(dpath="cam/ig_steps", within=config),
        shifts=lookup(dpath="cam/shifts", within=config),
        smooth_mm=lookup(dpath="cam/smooth_mm", within=config),
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
