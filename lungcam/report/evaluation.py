"""metrics.json of a run and the classification figures, from its predictions.

The classification metrics (the costly part: bootstrap draws) are computed as soon as the
predictions exist, while the maps are still being made; metrics.json adds the localisation
figures once those are done.

Classification metrics need labels: in mode train every patient has one; in mode predict the
sample sheet may give them (an external validation cohort), and patients without one are left
out of the metrics. Slice-level metrics (the paper's evaluation) are computed for hu2020 models,
each patient's slices scored by the model that classified the patient. Localisation figures
come from the `localisation` rule's summary, where lesion masks or slice labels exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungcam.report.figures import confusion_figure, reliability_figure, roc_pr_figure
from lungcam.report.metrics import cohort_metrics, point_metrics, slice_metrics


def labelled(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The rows whose label is one of `classes`."""
    return predictions[predictions["label"].isin(classes)]


def classification_metrics(
    predictions: pd.DataFrame,
    classes: list[str],
    seed: int,
    repeats: int,
    sites: dict[str, str],
    models: dict[str, Path | str] | None = None,
    bank_dir: Path | str | None = None,
) -> dict:
    """The classification part of metrics.json. `models` (fold -> model file) and `bank_dir`
    enable the slice-level metrics when the models are hu2020."""
    document: dict = {"classes": classes, "bootstrap": repeats, "seed": seed, "classification": None, "slice_level": None}
    known = labelled(predictions, classes)
    if known.empty:
        document["classification_note"] = "no patient has a label among the task's classes (prediction without labels)"
        return document
    document["classification"] = cohort_metrics(known, classes, seed, repeats, sites)
    if models and bank_dir is not None:
        import torch

        from lungcam.train import SliceBank, out_of_fold_slice_predictions, read_model_metadata

        kinds = {read_model_metadata(path)["model"] for path in models.values()}
        if kinds == {"hu2020"}:
            slices = out_of_fold_slice_predictions(known, models, SliceBank.load(bank_dir), torch.device("cpu"))
            document["slice_level"] = slice_metrics(slices, classes, seed, repeats)
        else:
            document["slice_level_note"] = "the mil model decides per patient; slice-level metrics are those of hu2020 models"
    return document


def metrics_document(classification: dict, localisation: dict | None) -> dict:
    """metrics.json: the classification metrics with the localisation figures (the
    `localisation` rule's summary, None where no patient has a lesion mask or slice labels)."""
    return classification | {"localisation": localisation or None}


def classification_figures(
    predictions: pd.DataFrame, classes: list[str], roc_pr: Path | str, confusion: Path | str, reliability: Path | str
) -> None:
    """ROC/PR curves, confusion matrix and reliability diagram of the labelled patients."""
    known = labelled(predictions, classes)
    truth = known["label"].map(classes.index).to_numpy()
    probabilities = known[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    roc_pr_figure(truth, probabilities, classes, roc_pr)
    confusion_figure(
        point_metrics(truth, probabilities, classes)["confusion_matrix"]
        if len(known)
        else np.zeros((len(classes),) * 2, dtype=int).tolist(),
        classes,
        confusion,
    )
    reliability_figure(truth, probabilities, reliability)
