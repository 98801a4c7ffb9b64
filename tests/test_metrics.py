"""metrics.json figures: checked against scikit-learn on known predictions, and the CI logic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from lungcam.metrics import bootstrap_metrics, cohort_metrics, expected_calibration_error, point_metrics, slice_metrics

CLASSES = ["COVID-19", "CAP", "NP"]


def known_predictions() -> tuple[np.ndarray, np.ndarray]:
    """12 patients, 4 per class, with a few mistakes and uneven confidence."""
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    probabilities = np.array([
        [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1], [0.7, 0.2, 0.1],
        [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.3, 0.6, 0.1],
        [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4], [0.05, 0.05, 0.9],
    ])
    return truth, probabilities


def test_point_metrics_equal_scikit_learn_and_the_hand_counts():
    truth, probabilities = known_predictions()
    predicted = probabilities.argmax(axis=1)
    m = point_metrics(truth, probabilities, CLASSES)
    assert m["accuracy"] == accuracy_score(truth, predicted) == 9 / 12
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 3, 0], [0, 1, 3]]
    for k, name in enumerate(CLASSES):
        c = m["per_class"][name]
        assert c["sensitivity"] == pytest.approx(recall_score(truth == k, predicted == k))
        assert c["ppv"] == pytest.approx(precision_score(truth == k, predicted == k))
        assert c["f1"] == pytest.approx(f1_score(truth == k, predicted == k))
        assert c["specificity"] == pytest.approx(recall_score(truth != k, predicted != k))
        assert c["npv"] == pytest.approx(precision_score(truth != k, predicted != k))
        assert c["roc_auc"] == pytest.approx(roc_auc_score(truth == k, probabilities[:, k]))
        assert c["pr_auc"] == pytest.approx(average_precision_score(truth == k, probabilities[:, k]))
    assert m["per_class"]["CAP"]["specificity"] == 6 / 8 and m["per_class"]["NP"]["npv"] == 8 / 9  # by hand
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(truth, probabilities, multi_class="ovr", average="macro"))


def test_expected_calibration_error():
    # Confidence 0.9 and always right: |1 - 0.9| = 0.1. Half at 0.6 right, half at 0.6 wrong: 0.1.
    sure = np.array([[0.9, 0.1]] * 4)
    assert expected_calibration_error(np.zeros(4, dtype=int), sure) == pytest.approx(0.1)
    mixed = np.array([[0.6, 0.4]] * 4)
    assert expected_calibration_error(np.array([0, 0, 1, 1]), mixed) == pytest.approx(0.1)
    # Two bins: 0.95 (right) and 0.55 (wrong): 0.5 * 0.05 + 0.5 * 0.55.
    assert expected_calibration_error(np.array([0, 1]), np.array([[0.95, 0.05], [0.55, 0.45]])) == pytest.approx(0.3)


def test_bootstrap_intervals_are_seeded_contain_the_estimate_and_narrow_with_more_patients():
    truth, probabilities = known_predictions()
    first = bootstrap_metrics(truth, probabilities, CLASSES, seed=3, repeats=300)
    assert first == bootstrap_metrics(truth, probabilities, CLASSES, seed=3, repeats=300)
    assert first["accuracy"]["value"] == 0.75 and first["n"] == 12
    low, high = first["accuracy"]["ci95"]
    assert low < 0.75 < high
    # The interval is the 2.5th-97.5th percentile of the accuracy of patients drawn with replacement.
    rng = np.random.default_rng(3)
    correct = probabilities.argmax(axis=1) == truth
    draws = [correct[rng.integers(0, 12, 12)].mean() for _ in range(300)]
    assert [low, high] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])))
    bigger = bootstrap_metrics(np.tile(truth, 8), np.tile(probabilities, (8, 1)), CLASSES, seed=3, repeats=300)
    assert bigger["accuracy"]["value"] == 0.75
    assert bigger["accuracy"]["ci95"][1] - bigger["accuracy"]["ci95"][0] < high - low
    perfect = bootstrap_metrics(truth, np.eye(3)[truth], CLASSES, seed=0, repeats=100)
    assert perfect["accuracy"] == {"value": 1.0, "ci95": [1.0, 1.0]} and perfect["per_class"]["NP"]["roc_auc"]["ci95"] == [1.0, 1.0]


def test_slice_metrics_draw_whole_patients():
    """Slices of one patient are drawn together: with every patient's slices identical, the
    slice-level CI equals the patient-level one."""
    truth, probabilities = known_predictions()
    slices = pd.DataFrame({"patient_id": np.repeat([f"p{i:02d}" for i in range(12)], 5), "label": np.repeat([CLASSES[t] for t in truth], 5)})
    for k, name in enumerate(CLASSES):
        slices[f"prob_{name}"] = np.repeat(probabilities[:, k], 5)
    by_slice = slice_metrics(slices, CLASSES, seed=1, repeats=200)
    by_patient = bootstrap_metrics(truth, probabilities, CLASSES, seed=1, repeats=200)
    assert by_slice["slices"] == 60 and by_slice["n"] == 12
    assert by_slice["accuracy"] == by_patient["accuracy"]


def test_cohort_metrics_per_fold_and_per_site():
    truth, probabilities = known_predictions()
    predictions = pd.DataFrame({"patient_id": [f"p{i}" for i in range(12)], "label": [CLASSES[t] for t in truth], "fold": [0, 1] * 6})
    for k, name in enumerate(CLASSES):
        predictions[f"prob_{name}"] = probabilities[:, k]
    sites = {f"p{i}": "site-A" if i < 6 else "site-B" for i in range(12)}
    result = cohort_metrics(predictions, CLASSES, seed=0, repeats=50, sites=sites)
    assert result["patients"] == 12 and result["overall"]["accuracy"]["value"] == 0.75
    assert set(result["per_fold"]) == {"0", "1"} and set(result["per_site"]) == {"site-A", "site-B"}
    fold0 = predictions["fold"] == 0
    assert result["per_fold"]["0"]["accuracy"]["value"] == accuracy_score(truth[fold0], probabilities[fold0].argmax(axis=1))
    assert result["per_site"]["site-A"]["n"] == 6
    assert cohort_metrics(predictions, CLASSES, seed=0, repeats=10)["per_site"] == {}
