"""Cross-validated classification quality of a finished training run, against issue targets.

Reads a workflow working directory after `snakemake` in mode train (results/predictions.tsv,
results/model/fold*.pt, work/train/bank) and prints:
1. patient level (out-of-fold): accuracy, macro one-vs-rest ROC AUC, confusion matrix, and the
   targets (accuracy >= 0.90, macro AUC >= 0.95);
2. slice level, for hu2020 (as Hu et al. evaluated: every lung slice carries its patient's
   label; each fold's model scores the slices of its own test patients): accuracy, macro AUC,
   per-class sensitivity and specificity.

    .venv/bin/snakemake --cores 2 --directory /tmp/demo-hu2020
    .venv/bin/snakemake --cores 2 --directory /tmp/demo-mil --config 'demo={"train": {"model": "mil"}}'
    .venv/bin/python benchmarks/classifier.py /tmp/demo-hu2020 /tmp/demo-mil
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.inference import load_model, slice_predictions  # noqa: E402
from lungcam.slice_bank import SliceBank  # noqa: E402

TARGET_ACCURACY, TARGET_AUC = 0.90, 0.95


def scores(labels: pd.Series, probabilities: pd.DataFrame, classes: list[str]) -> dict:
    """Accuracy, macro one-vs-rest AUC, confusion matrix, per-class sensitivity and specificity."""
    truth = labels.map(classes.index).to_numpy()
    predicted = probabilities.to_numpy().argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, labels=range(len(classes)))
    sensitivity = np.diag(matrix) / matrix.sum(axis=1).clip(min=1)
    negatives = matrix.sum() - matrix.sum(axis=1)
    specificity = (negatives - (matrix.sum(axis=0) - np.diag(matrix))) / negatives.clip(min=1)
    if len(classes) == 2:
        auc = roc_auc_score(truth, probabilities.to_numpy()[:, 1])
    else:
        auc = roc_auc_score(truth, probabilities.to_numpy(), multi_class="ovr", average="macro", labels=range(len(classes)))
    return {"accuracy": accuracy_score(truth, predicted), "auc": auc, "matrix": matrix, "sensitivity": sensitivity, "specificity": specificity}


def report(name: str, result: dict, classes: list[str], count: int) -> None:
    print(f"{name} ({count}): accuracy {result['accuracy']:.3f}, macro AUC {result['auc']:.3f}")
    for c, sens, spec in zip(classes, result["sensitivity"], result["specificity"]):
        print(f"    {c:>9s}: sensitivity {sens:.3f}, specificity {spec:.3f}")
    print("    confusion (rows true, columns predicted, order " + ", ".join(classes) + "):")
    for row in result["matrix"]:
        print("      " + " ".join(f"{v:5d}" for v in row))


def evaluate(workdir: Path) -> None:
    predictions = pd.read_csv(workdir / "results" / "predictions.tsv", sep="\t")
    classes = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
    _, metadata = load_model(workdir / "results" / "model" / "fold0.pt")
    print(f"== {workdir}: model {metadata['model']}, input {metadata['preprocessing']['input_size']} px, width {metadata['settings']['width']}, "
          f"{predictions['fold'].nunique()} folds")
    patient = scores(predictions["label"], predictions[[f"prob_{c}" for c in classes]], classes)
    report("patient level, out of fold", patient, classes, len(predictions))
    met = patient["accuracy"] >= TARGET_ACCURACY and patient["auc"] >= TARGET_AUC
    print(f"    target accuracy >= {TARGET_ACCURACY}, macro AUC >= {TARGET_AUC}: {'met' if met else 'NOT met'}")
    if metadata["model"] != "hu2020":
        return
    bank = SliceBank.load(workdir / "work" / "train" / "bank")
    tables = []
    for fold, group in predictions.groupby("fold"):
        model, fold_metadata = load_model(workdir / "results" / "model" / f"fold{fold}.pt")
        table = slice_predictions(model, fold_metadata, bank, list(group["patient_id"]), torch.device("cpu"))
        tables.append(table.merge(group[["patient_id", "label"]], on="patient_id"))
    slices = pd.concat(tables, ignore_index=True)
    report("slice level, out of fold", scores(slices["label"], slices[[f"prob_{c}" for c in classes]], classes), classes, len(slices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=Path, help="working directories of finished training runs")
    for workdir in parser.parse_args().workdirs:
        evaluate(workdir)


if __name__ == "__main__":
    main()
