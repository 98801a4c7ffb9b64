"""A nuisance-only baseline: can the diagnosis be told from how the scan was taken?

A logistic regression on each patient's DICOM header fields (scanner, kernel, slice thickness,
kVp, tube current, pixel spacing, position) and whole-volume intensity statistics (HU
percentiles, noise), trained and scored out of fold on the model's own folds. It never sees the
lungs or the lesions. Near chance, the cohort offers the model no acquisition shortcut; clearly
above chance, a site, scanner or protocol differs between the classes and the model's figures
may owe something to it. On a cohort balanced by design (the demo) it falls below chance: each
held-out patient's values are then scarcer in its own class's training folds than in the others'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungcam.report.metrics import bootstrap_metrics

CATEGORICAL = ("manufacturer", "model", "kernel", "patient_position")
HEADER_NUMBERS = ("slice_thickness_mm", "slice_spacing_mm", "kvp", "tube_current_ma", "rows", "columns", "slices", "z_extent_mm")
INTENSITY_NUMBERS = ("noise_hu", "air_hu", "min", "p01", "p50", "p99", "max")


def nuisance_features(records: dict[str, dict]) -> pd.DataFrame:
    """One row per patient (index: patient id) from the QC records' ingest section; patients
    excluded before their header was read have no row."""
    rows = {}
    for patient, record in records.items():
        ingest = record.get("ingest") or {}
        header, hu = ingest.get("header"), ingest.get("hu")
        if not header or not hu:
            continue
        row = {name: str(header.get(name, "")) for name in CATEGORICAL}
        row |= {name: header.get(name) for name in HEADER_NUMBERS}
        row["pixel_spacing_mm"] = float(np.mean(header["pixel_spacing_mm"])) if header.get("pixel_spacing_mm") else None
        row |= {f"hu_{name}": hu.get(name) for name in INTENSITY_NUMBERS}
        rows[patient] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _classifier(numbers: list[str]):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL)),
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
        ]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=2000))


def nuisance_baseline(features: pd.DataFrame, predictions: pd.DataFrame, classes: list[str], seed: int, repeats: int = 1000) -> dict:
    """Out-of-fold accuracy and macro AUC of the nuisance-only classifier, with bootstrap CIs,
    for the labelled patients of `predictions` (patient_id, label, fold); `chance` is the share of
    the largest class, `above_chance` whether the accuracy's CI lies wholly above it."""
    known = predictions[predictions["label"].isin(classes) & (predictions["fold"].astype(str) != "")]
    known = known[known["patient_id"].isin(features.index)]
    if known.empty or known["fold"].nunique() < 2:
        return {"note": "no out-of-fold predictions to compare with (folds are made in mode train)"}
    table = features.loc[known["patient_id"]]
    numbers = [c for c in table.columns if c not in CATEGORICAL and table[c].notna().any()]
    truth = known["label"].map(classes.index).to_numpy()
    probabilities = np.zeros((len(known), len(classes)))
    folds = known["fold"].astype(str).to_numpy()
    for fold in np.unique(folds):
        test = folds == fold
        model = _classifier(numbers).fit(table[~test], truth[~test])
        probabilities[np.ix_(test, model.classes_)] = model.predict_proba(table[test])
    metrics = bootstrap_metrics(truth, probabilities, classes, seed, repeats)
    chance = float(np.bincount(truth).max() / len(truth))
    return {
        "patients": int(len(known)),
        "features": list(CATEGORICAL) + numbers,
        "accuracy": metrics["accuracy"],
        "macro_roc_auc": metrics["macro_roc_auc"],
        "chance": chance,
        "above_chance": bool(metrics["accuracy"]["ci95"][0] > chance),
    }
