"""Training: patient-level folds, the slice bank, one model per fold, out-of-fold predictions.

In mode predict, the model file predict.model is applied to the cohort instead.
"""


localrules:
    folds,


rule folds:
    input:
        cohort_qc=rules.prepare.output[0],
    output:
        f"{WORK}/train/folds.tsv",
    log:
        f"{LOGS}/folds.log",
    benchmark:
        f"{LOGS}/benchmarks/folds.tsv"
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
        cohort_qc=rules.prepare.output[0],
    output:
        directory(f"{WORK}/train/bank"),
    log:
        f"{LOGS}/slice_bank.log",
    benchmark:
        f"{LOGS}/benchmarks/slice_bank.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=memory_mb(8000),
    params:
        input_size=lookup(dpath="train/input_size", within=config),
        min_lung_fraction=lookup(dpath="train/min_lung_fraction", within=config),
        cache=config["cache"],
        cache_root=f"{WORK}/cache",
    script:
        "../../scripts/slice_bank.py"


rule train_fold:
    input:
        bank=rules.slice_bank.output[0],
        folds=rules.folds.output[0],
    output:
        model=f"{RESULTS}/model/fold{{fold}}.pt",
        curves=f"{RESULTS}/training/fold{{fold}}.tsv",
        curves_png=report(
            f"{RESULTS}/training/fold{{fold}}.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"model": "fold {fold}"},
        ),
        predictions=f"{WORK}/train/fold{{fold}}/predictions.tsv",
    log:
        f"{LOGS}/train_fold/fold{{fold}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train_fold/fold{{fold}}.tsv"
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
        work=f"{WORK}/train/fold{{fold}}",
    shell:
        "{params.launcher} -m lungcam.cli train-fold --bank {input.bank} --folds {input.folds} --fold {wildcards.fold}"
        " --work {params.work} --model {output.model} --curves {output.curves} --curves-png {output.curves_png}"
        " --predictions {output.predictions} --settings '{params.settings}' --classes '{params.classes}'"
        " --threads {threads} > {log} 2>&1"


rule train_final:
    input:
        bank=rules.slice_bank.output[0],
        folds=rules.folds.output[0],
    output:
        model=f"{RESULTS}/model/final.pt",
        curves=f"{RESULTS}/training/final.tsv",
        curves_png=f"{RESULTS}/training/final.png",
    log:
        f"{LOGS}/train_final.log",
    benchmark:
        f"{LOGS}/benchmarks/train_final.tsv"
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
        work=f"{WORK}/train/final",
    shell:
        "{params.launcher} -m lungcam.cli train-fold --bank {input.bank} --folds {input.folds} --fold final"
        " --work {params.work} --model {output.model} --curves {output.curves} --curves-png {output.curves_png}"
        " --settings '{params.settings}' --classes '{params.classes}' --threads {threads} > {log} 2>&1"


if MODE == "train":

    localrules:
        predictions,

    rule predictions:
        input:
            expand(f"{WORK}/train/fold{{fold}}/predictions.tsv", fold=range(config["train"]["folds"])),
        output:
            f"{RESULTS}/predictions.tsv",
        log:
            f"{LOGS}/predictions.log",
        benchmark:
            f"{LOGS}/benchmarks/predictions.tsv"
        conda:
            "../../envs/train.yaml"
        script:
            "../../scripts/predictions.py"

else:

    rule predict:
        input:
            bank=rules.slice_bank.output[0],
            model=config["predict"]["model"],
        output:
            f"{RESULTS}/predictions.tsv",
        log:
            f"{LOGS}/predict.log",
        benchmark:
            f"{LOGS}/benchmarks/predict.tsv"
        conda:
            "../../envs/train.yaml"
        resources:
            gpu=TRAIN_GPUS,
        params:
            labels=SAMPLES["label"].to_dict(),
            device=lookup(dpath="train/device", within=config),
        script:
            "../../scripts/predict.py"
