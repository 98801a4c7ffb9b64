"""metrics.json figures: checked against scikit-learn on known predictions, and the CI logic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lungcam.report.metrics import bootstrap_metrics, cohort_metrics, expected_calibration_error, point_metrics, slice_metrics

CLASSES = ["COVID-19", "CAP", "NP"]


def known_predictions() -> tuple[np.ndarray, np.ndarray]:
    """12 patients, 4 per class, with a few mistakes and uneven confidence."""
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.4, 0.5, 0.1],
            [0.7, 0.2, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.3, 0.2],
            [0.3, 0.6, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.2, 0.6],
            [0.1, 0.5, 0.4],
            [0.05, 0.05, 0.9],
        ]
    )
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
    slices = pd.DataFrame(
        {"patient_id": np.repeat([f"p{i:02d}" for i in range(12)], 5), "label": np.repeat([CLASSES[t] for t in truth], 5)}
    )
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


def plan_records(plans, kernel_of=None) -> dict[str, dict]:
    """QC records as ingest writes them for planned patients; `kernel_of` (label -> kernel)
    overrides the plan's kernel to tie it to the class."""
    from lungcam.phantom.cohort import KERNELS

    records = {}
    for plan in plans:
        n = plan.nuisance
        kernel = kernel_of[plan.label] if kernel_of else n.kernel
        z_extent = round(300.0 * n.body_scale, 1)
        header = {
            "manufacturer": n.manufacturer,
            "model": n.model,
            "kernel": kernel,
            "patient_position": n.patient_position,
            "slice_thickness_mm": n.slice_thickness_mm,
            "slice_spacing_mm": n.slice_thickness_mm,
            "kvp": n.kvp,
            "tube_current_ma": n.tube_current_ma,
            "rows": 256,
            "columns": 256,
            "slices": int(z_extent / n.slice_thickness_mm),
            "z_extent_mm": z_extent,
            "pixel_spacing_mm": [n.fov_mm / 256] * 2,
        }
        hu = {
            "noise_hu": round(n.noise_hu * KERNELS[kernel]["noise_factor"], 1),
            "air_hu": -1024.0 if n.rescale_intercept else -1000.0,
            "min": -1024.0,
            "p01": -1000.0,
            "p50": -850.0 + 100 * n.body_scale,
            "p99": 400.0,
            "max": 1500.0,
        }
        records[plan.patient_id] = {"patient_id": plan.patient_id, "ingest": {"header": header, "hu": hu}}
    return records


def baseline_of(plans, seed: int, kernel_of=None) -> dict:
    from lungcam.core.folds import assign_folds
    from lungcam.report.nuisance_baseline import nuisance_baseline, nuisance_features

    patients = pd.DataFrame({"patient_id": [p.patient_id for p in plans], "label": [p.label for p in plans]})
    predictions = assign_folds(patients, 5, seed).astype({"fold": str})
    return nuisance_baseline(nuisance_features(plan_records(plans, kernel_of)), predictions, CLASSES, seed, repeats=200)


def test_nuisance_baseline_finds_a_kernel_tied_to_the_class_and_nothing_in_the_balanced_demo(config):
    from lungcam.phantom import plan_cohort

    demo = config["demo"]
    plans = plan_cohort(demo["patients_per_class"], demo["seed"], tuple(config["classes"]))
    confounded = baseline_of(plans, demo["seed"], kernel_of={"COVID-19": "B30f", "CAP": "B50f", "NP": "B70f"})
    assert confounded["above_chance"] and confounded["accuracy"]["value"] >= 0.9
    balanced = baseline_of(plans, demo["seed"])
    assert not balanced["above_chance"] and balanced["accuracy"]["value"] <= 0.5
    assert balanced["patients"] == len(plans) and "kernel" in balanced["features"]


def test_nuisance_baseline_needs_folds():
    from lungcam.report.nuisance_baseline import nuisance_baseline

    predictions = pd.DataFrame({"patient_id": ["a", "b"], "label": ["CAP", "NP"], "fold": ["", ""]})
    assert "note" in nuisance_baseline(pd.DataFrame(index=["a", "b"]), predictions, CLASSES, 0)
