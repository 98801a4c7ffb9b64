"""Cross-validated classification quality of a finished training run, against issue targets.

Reads a workflow working directory after `snakemake` in mode train (results/predictions.tsv,
results/model/fold*.pt, work/train/bank) and prints, with the metrics of results/metrics.json
(lungcam.report.metrics, scikit-learn):
1. patient level (out-of-fold): accuracy, macro one-vs-rest ROC AUC, per-class sensitivity and
   specificity, confusion matrix, and the targets (accuracy >= 0.90, macro AUC >= 0.95);
2. slice level, for hu2020 (as Hu et al. evaluated: every lung slice carries its patient's
   label; each fold's model scores the slices of its own test patients);
3. for hu2020, the patient level again from those same slice probabilities under every
   `train.aggregation` (the run's own is the one its early stopping used).

    .venv/bin/snakemake --cores 2 --directory demo-hu2020
    .venv/bin/snakemake --cores 2 --directory demo-mil --config 'train={"model": "mil"}'
    .venv/bin/python benchmarks/classifier.py demo-hu2020 demo-mil
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungcam.core.records import read_predictions  # noqa: E402
from lungcam.report.metrics import point_metrics  # noqa: E402
from lungcam.train.inference import AGGREGATIONS, aggregate_slices, load_model, out_of_fold_slice_predictions  # noqa: E402
from lungcam.train.slice_bank import SliceBank  # noqa: E402

TARGET_ACCURACY, TARGET_AUC = 0.90, 0.95


def scores(table: pd.DataFrame, classes: list[str]) -> dict:
    """point_metrics of a table with `label` and prob_<class> columns."""
    return point_metrics(table["label"].map(classes.index).to_numpy(), table[[f"prob_{c}" for c in classes]].to_numpy(dtype=float), classes)


def report(name: str, result: dict, classes: list[str], count: int) -> None:
    print(f"{name} ({count}): accuracy {result['accuracy']:.3f}, macro AUC {result['macro_roc_auc']:.3f}")
    for c in classes:
        print(
            f"    {c:>9s}: sensitivity {result['per_class'][c]['sensitivity']:.3f}, specificity {result['per_class'][c]['specificity']:.3f}"
        )
    print("    confusion (rows true, columns predicted, order " + ", ".join(classes) + "):")
    for row in result["confusion_matrix"]:
        print("      " + " ".join(f"{v:5d}" for v in row))


def evaluate(workdir: Path) -> None:
    predictions = read_predictions(workdir / "results" / "predictions.tsv")
    classes = [c[len("prob_") :] for c in predictions.columns if c.startswith("prob_")]
    _, metadata = load_model(workdir / "results" / "model" / "fold0.pt")
    print(
        f"== {workdir}: model {metadata['model']}, input {metadata['preprocessing']['input_size']} px, width "
        f"{metadata['settings']['width']}, "
        f"{predictions['fold'].nunique()} folds"
    )
    patient = scores(predictions, classes)
    report("patient level, out of fold", patient, classes, len(predictions))
    met = patient["accuracy"] >= TARGET_ACCURACY and patient["macro_roc_auc"] >= TARGET_AUC
    print(f"    target accuracy >= {TARGET_ACCURACY}, macro AUC >= {TARGET_AUC}: {'met' if met else 'NOT met'}")
    if metadata["model"] != "hu2020":
        return
    models = {str(fold): workdir / "results" / "model" / f"fold{fold}.pt" for fold in predictions["fold"].unique()}
    slices = out_of_fold_slice_predictions(predictions, models, SliceBank.load(workdir / "work" / "train" / "bank"), torch.device("cpu"))
    report("slice level, out of fold", scores(slices, classes), classes, len(slices))
    columns = [f"prob_{c}" for c in classes]
    top_k = metadata["settings"]["top_k"]
    patients = [(group["label"].iloc[0], group[columns].to_numpy()) for _, group in slices.groupby("patient_id")]
    print(f"patient level from the same slices, top_k {top_k} (the run's: {metadata['settings']['aggregation']}):")
    for method in AGGREGATIONS:
        pooled = pd.DataFrame(
            [
                {"label": label, **dict(zip(columns, aggregate_slices(probabilities, method, top_k, classes)))}
                for label, probabilities in patients
            ]
        )
        result = scores(pooled, classes)
        print(f"    {method:>9s}: accuracy {result['accuracy']:.3f}, macro AUC {result['macro_roc_auc']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=Path, help="working directories of finished training runs")
    for workdir in parser.parse_args().workdirs:
        evaluate(workdir)


if __name__ == "__main__":
    main()
