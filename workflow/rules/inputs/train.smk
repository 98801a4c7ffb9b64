"""Training's settings as the jobs get them, and the cohort-level targets."""

import json

FOLDS = range(config["train"]["folds"])
TASK_CLASSES_JSON = json.dumps(TASK_CLASSES)
TRAIN_SETTINGS_JSON = json.dumps(config["train"], sort_keys=True)
TRAIN_GPUS = config["train"]["gpus"] if config["train"]["device"] != "cpu" else 0
TRAIN_LAUNCHER = f"torchrun --standalone --nproc_per_node {config['train']['gpus']}" if config["train"]["gpus"] > 1 else "python"


def final_targets() -> list[str]:
    """Cohort-level outputs requested by `rule all`."""
    targets = [path("predictions")]
    if MODE == "train" and config["train"]["final_model"]:
        targets.append(path("model", model="final"))
    return targets
