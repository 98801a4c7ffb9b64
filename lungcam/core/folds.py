"""Patient-level stratified cross-validation folds and the classification tasks.

Folds split patients, never slices: all slices of a patient are in one fold, so no patient is
ever seen in training and test. Inside each training set a stratified validation subset chooses
the best checkpoint and stops training early, unless `train.validation_fraction` is 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NO_PNEUMONIA = "NP"  # the class whose scans show no lesion (task covid_vs_np, aggregation `presence`)
TASKS = {
    "multiclass": None,  # all configured classes
    "covid_vs_np": ("COVID-19", NO_PNEUMONIA),
    "covid_vs_cap": ("COVID-19", "CAP"),
}


def task_classes(task: str, classes: list[str]) -> list[str]:
    """The classes a task distinguishes, in the configured order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {list(TASKS)}")
    wanted = TASKS[task]
    if wanted is None:
        return list(classes)
    missing = [c for c in wanted if c not in classes]
    if missing:
        raise ValueError(f"task {task} needs the classes {wanted}; {missing} not configured")
    return [c for c in classes if c in wanted]


def assign_folds(patients: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Add a `fold` column (0..k-1): stratified by label, shuffled with `seed`."""
    from sklearn.model_selection import StratifiedKFold  # imported here: the workflow reads task_classes at parse time

    counts = patients["label"].value_counts()
    if (counts < k).any():
        raise ValueError(f"{k}-fold cross-validation needs at least {k} patients per class; have {counts.to_dict()}")
    out = patients.reset_index(drop=True).copy()
    out["fold"] = -1
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(out, out["label"])):
        out.loc[test, "fold"] = fold
    return out


def validation_split(train: pd.DataFrame, fraction: float, seed: int, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, validation) patients: `fraction` of each class, at least one, for validation;
    none for `fraction` 0 (every training patient trains, and the last epoch is kept).

    `fold` is the fold number, or -1 for the final model trained on every patient.
    """
    if fraction == 0:
        return train, train.iloc[:0]
    rng = np.random.default_rng([seed, fold + 1, 17])
    held = []
    for _, group in train.groupby("label", sort=True):
        n = max(1, int(round(fraction * len(group))))
        held += list(group.index[rng.permutation(len(group))[:n]])
    validation = train.loc[sorted(held)]
    return train.drop(index=held), validation


def target_class(row: dict, classes: list[str], target: str) -> str:
    """The class to map for a patient's predictions row: `predicted`, or `label` when given."""
    if target == "label" and isinstance(row.get("label"), str) and row["label"] in classes:
        return row["label"]
    return row["predicted"]
