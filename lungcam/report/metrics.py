"""Classification metrics of a cohort's predictions, each with a 95% bootstrap CI over patients.

The metrics themselves come from scikit-learn (confusion matrix, ROC AUC, average precision);
this module arranges them per class, adds the expected calibration error (which scikit-learn
does not compute), and bootstraps: patients
are drawn with replacement (seeded), every metric is recomputed, and the CI is the 2.5th-97.5th
percentile of the draws where the metric is defined (a draw without a class has no AUC for it).
With `groups`, whole patients are drawn with all their rows, so slice-level metrics get CIs over
patients too, not over slices that are far from independent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def expected_calibration_error(truth: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence: sum over equal-width confidence bins of the bin's share of
    samples times |accuracy - mean confidence| in it."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def _one_vs_rest_areas(truth: np.ndarray, probabilities: np.ndarray) -> tuple[list[float], list[float]]:
    """Per class, one-vs-rest ROC AUC and PR AUC (average precision); NaN for a class that is
    absent or alone. One scikit-learn call each for all classes (multilabel indicator input)."""
    indicator = np.eye(probabilities.shape[1], dtype=int)[truth]
    positives = indicator.sum(axis=0)
    columns = np.flatnonzero((positives > 0) & (positives < len(truth)))
    roc, pr = np.full(probabilities.shape[1], np.nan), np.full(probabilities.shape[1], np.nan)
    if len(columns) == 1:  # a single column would be read as a binary target
        k = columns[0]
        roc[k], pr[k] = roc_auc_score(indicator[:, k], probabilities[:, k]), average_precision_score(indicator[:, k], probabilities[:, k])
    elif len(columns):
        roc[columns] = roc_auc_score(indicator[:, columns], probabilities[:, columns], average=None)
        pr[columns] = average_precision_score(indicator[:, columns], probabilities[:, columns], average=None)
    return [float(v) for v in roc], [float(v) for v in pr]


def point_metrics(truth: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Every metric of one set of predictions; `truth` holds class indices, `probabilities` is
    (samples, classes). Per-class entries are one-vs-rest.

    The count-based metrics are read off scikit-learn's confusion matrix by their definitions
    (sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP), NPV TN/(TN+FN), F1, accuracy,
    balanced accuracy = mean sensitivity over the classes present): one call instead of one per
    metric keeps the bootstrap fast. A metric whose denominator is 0 is NaN. The test checks
    every figure against scikit-learn's own function for it.
    """
    labels = list(range(len(classes)))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, labels=labels)
    total, tp = matrix.sum(), np.diag(matrix)
    fn, fp = matrix.sum(axis=1) - tp, matrix.sum(axis=0) - tp
    tn = total - tp - fn - fp
    roc_auc, pr_auc = _one_vs_rest_areas(truth, probabilities)
    per_class = {}
    for k, name in enumerate(classes):
        per_class[name] = {
            "sensitivity": _ratio(tp[k], tp[k] + fn[k]),
            "specificity": _ratio(tn[k], tn[k] + fp[k]),
            "ppv": _ratio(tp[k], tp[k] + fp[k]),
            "npv": _ratio(tn[k], tn[k] + fn[k]),
            "f1": _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]),
            "roc_auc": roc_auc[k],
            "pr_auc": pr_auc[k],
        }
    present = [per_class[c]["sensitivity"] for k, c in enumerate(classes) if tp[k] + fn[k] > 0]
    aucs = [per_class[c]["roc_auc"] for c in classes]
    return {
        "accuracy": _ratio(tp.sum(), total),
        "balanced_accuracy": float(np.mean(present)) if len(present) > 1 else float("nan"),
        "macro_roc_auc": float(np.mean(aucs)) if np.all(np.isfinite(aucs)) else float("nan"),
        "ece": expected_calibration_error(truth, probabilities),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def _scalars(metrics: dict) -> dict[str, float]:
    """Flat name -> value of every scalar metric ("per_class.CAP.f1" for per-class ones)."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
    for name, values in metrics["per_class"].items():
        flat |= {f"per_class.{name}.{k}": v for k, v in values.items()}
    return flat


def bootstrap_metrics(
    truth: np.ndarray, probabilities: np.ndarray, classes: list[str], seed: int, repeats: int = 1000, groups: np.ndarray | None = None
) -> dict:
    """`point_metrics` with every scalar as {"value", "ci95": [low, high]}; draws resample
    `groups` (default: each row its own group)."""
    estimate = point_metrics(truth, probabilities, classes)
    groups = np.arange(len(truth)) if groups is None else np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in _scalars(estimate)}
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):  # inputs checked once, above
        for _ in range(repeats):
            rows = np.concatenate([rows_of[g] for g in rng.integers(0, len(names), len(names))])
            for k, v in _scalars(point_metrics(truth[rows], probabilities[rows], classes)).items():
                draws[k].append(v)

    def with_ci(name: str, value: float) -> dict:
        values = np.asarray(draws[name], dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if values.size else (np.nan, np.nan)
        return {"value": value, "ci95": [float(low), float(high)]}

    out = {k: with_ci(k, v) if isinstance(v, float) else v for k, v in estimate.items() if k != "per_class"}
    out["per_class"] = {c: {k: with_ci(f"per_class.{c}.{k}", v) for k, v in values.items()} for c, values in estimate["per_class"].items()}
    out["n"] = int(len(names))
    return out


def cohort_metrics(
    predictions: pd.DataFrame, classes: list[str], seed: int, repeats: int = 1000, sites: dict[str, str] | None = None
) -> dict:
    """Patient-level metrics of out-of-fold `predictions` (patient_id, label, fold, prob_<class>):
    overall, per fold and per site (where `sites` gives one), each with CIs."""
    labelled = predictions[predictions["label"].isin(classes)]
    truth = labelled["label"].map(classes.index).to_numpy()
    probabilities = labelled[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    result = {
        "classes": classes,
        "patients": int(len(labelled)),
        "overall": bootstrap_metrics(truth, probabilities, classes, seed, repeats),
    }
    for key, column in (("per_fold", labelled["fold"].astype(str)), ("per_site", labelled["patient_id"].map(sites or {}))):
        result[key] = {}
        for value in sorted(column.dropna().unique()):
            rows = (column == value).to_numpy()
            result[key][str(value)] = bootstrap_metrics(truth[rows], probabilities[rows], classes, seed, repeats)
    return result


def slice_metrics(slices: pd.DataFrame, classes: list[str], seed: int, repeats: int = 1000) -> dict:
    """The paper's slice-level metrics (every slice carries its patient's label), with CIs from
    drawing whole patients."""
    truth = slices["label"].map(classes.index).to_numpy()
    probabilities = slices[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    result = bootstrap_metrics(truth, probabilities, classes, seed, repeats, groups=slices["patient_id"].to_numpy())
    return {"slices": int(len(slices))} | result
