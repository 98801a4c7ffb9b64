"""Training: patient-level folds, the slice bank, one model per fold, out-of-fold predictions.

In mode predict, the model file predict.model is applied to the cohort instead.
"""


include: "inputs/train.smk"


localrules:
    folds,


rule folds:
    input:
        cohort_qc=path("cohort_qc"),
    output:
        path("folds"),
    log:
        log_path("folds", None),
    benchmark:
        benchmark_path("folds", None)
    conda:
        "../../envs/train.yaml"
    params:
        labels=SAMPLES["label"].to_dict(),
        classes=TASK_CLASSES,
        folds=lookup(dpath="train/folds", within=config),
        seed=lookup(dpath="train/seed", within=config),
    script:
        "../../scripts/folds.py"


rule slice_bank:
    input:
        cohort_qc=path("cohort_qc"),
    output:
        directory(path("bank")),
    log:
        log_path("slice_bank", None),
    benchmark:
        benchmark_path("slice_bank", None)
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=memory_mb(8000),
    params:
        input_size=lookup(dpath="train/input_size", within=config),
        min_lung_fraction=lookup(dpath="train/min_lung_fraction", within=config),
        cache=config["cache"],
        cache_root=str(Path(path("cache")).parent),  # each patient's cache below it
    script:
        "../../scripts/slice_bank.py"


rule train_fold:
    input:
        bank=path("bank"),
        folds=path("folds"),
    output:
        model=path("model", model="fold{fold}"),
        curves=path("curves", model="fold{fold}"),
        curves_png=report(
            path("curves_png", model="fold{fold}"),
            caption="../report/training_curves.rst",
            category="Training",
            labels={"model": "fold {fold}"},
        ),
        predictions=path("fold_predictions", model="fold{fold}"),
    log:
        log_path("train_fold", "fold{fold}"),
    benchmark:
        benchmark_path("train_fold", "fold{fold}")
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=memory_mb(16000),
        runtime=720,
    params:
        launcher=TRAIN_LAUNCHER,
        settings=TRAIN_SETTINGS_JSON,
        classes=TASK_CLASSES_JSON,
        work=path("training_work", model="fold{fold}"),
    shell:
        "{params.launcher} -m lungcam.cli train-fold --bank {input.bank} --folds {input.folds} --fold {wildcards.fold}"
        " --work {params.work} --model {output.model} --curves {output.curves} --curves-png {output.curves_png}"
        " --predictions {output.predictions} --settings '{params.settings}' --classes '{params.classes}'"
        " --threads {threads} > {log} 2>&1"


rule train_final:
    input:
        bank=path("bank"),
        folds=path("folds"),
    output:
        model=path("model", model="final"),
        curves=path("curves", model="final"),
        curves_png=path("curves_png", model="final"),
    log:
        log_path("train_final", None),
    benchmark:
        benchmark_path("train_final", None)
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=memory_mb(16000),
        runtime=720,
    params:
        launcher=TRAIN_LAUNCHER,
        settings=TRAIN_SETTINGS_JSON,
        classes=TASK_CLASSES_JSON,
        work=path("training_work", model="final"),
    shell:
        "{params.launcher} -m lungcam.cli train-fold --bank {input.bank} --folds {input.folds} --fold final"
        " --work {params.work} --model {output.model} --curves {output.curves} --curves-png {output.curves_png}"
        " --settings '{params.settings}' --classes '{params.classes}' --threads {threads} > {log} 2>&1"


if MODE == "train":

    localrules:
        predictions,

    rule predictions:
        input:
            expand(path("fold_predictions", model="fold{fold}"), fold=FOLDS),
        output:
            path("predictions"),
        log:
            log_path("predictions", None),
        benchmark:
            benchmark_path("predictions", None)
        conda:
            "../../envs/train.yaml"
        script:
            "../../scripts/predictions.py"

else:

    rule predict:
        input:
            bank=path("bank"),
            model=config["predict"]["model"],
        output:
            path("predictions"),
        log:
            log_path("predict", None),
        benchmark:
            benchmark_path("predict", None)
        conda:
            "../../envs/train.yaml"
        resources:
            gpu=TRAIN_GPUS,
        params:
            labels=SAMPLES["label"].to_dict(),
            device=lookup(dpath="train/device", within=config),
        script:
            "../../scripts/predict.py"
