"""Cohort figures for the summary: ROC and PR curves, confusion matrix, reliability diagram, and
strip plots of QC measures by class whose points link to the patients' reports.

PNG figures are written to files (the summary embeds them); the strip plots are SVG text, put
inline in the summary so that each point is a link (matplotlib writes a scatter point's url as
an SVG anchor).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from lungcam.core.atomic import atomic_path  # noqa: E402


def _save(fig, path: Path | str) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def roc_pr_figure(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path | str) -> None:
    """One-vs-rest ROC (left) and precision-recall (right) curves, one line per class."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    for k, name in enumerate(classes):
        positive = truth == k
        if 0 < positive.sum() < len(truth):
            fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
            precision, recall, _ = precision_recall_curve(positive, probabilities[:, k])
            roc.plot(fpr, tpr, label=name)
            pr.plot(recall, precision, label=name)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one vs rest)", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    roc.legend(loc="lower right")
    _save(fig, path)


def confusion_figure(matrix: list[list[int]], classes: list[str], path: Path | str) -> None:
    """Confusion matrix with counts, rows the true class."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.4 * len(classes) + 1.5, 1.2 * len(classes) + 1))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes, xlabel="predicted", ylabel="true"
    )
    _save(fig, path)


def reliability_figure(truth: np.ndarray, probabilities: np.ndarray, path: Path | str, bins: int = 10) -> None:
    """Reliability diagram of the top-class confidence: accuracy per confidence bin vs the
    diagonal of perfect calibration, with the share of patients per bin."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == truth).astype(int)
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.5, 5), height_ratios=(3, 1), sharex=True)
    if correct.min() != correct.max():
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
        ax.plot(mean_confidence, accuracy, marker="o", label="model")
    else:  # calibration_curve needs both outcomes; all right or all wrong is one point
        ax.plot([confidence.mean()], [correct.mean()], marker="o", label="model")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.set(ylabel="accuracy", title="Reliability (top-class confidence)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left")
    counts.hist(confidence, bins=np.linspace(0, 1, bins + 1), color="grey")
    counts.set(xlabel="confidence", ylabel="patients")
    _save(fig, path)


def qc_strip_svg(
    table: pd.DataFrame,
    measures: dict[str, str],
    classes: list[str],
    links: dict[str, str],
    outliers: set[tuple[str, str]] = frozenset(),
    seed: int = 0,
) -> str:
    """SVG text of one strip plot per QC measure (`measures`: column of `table` -> axis title;
    `table` also has `patient_id` and `label`), patients grouped by class; each point links to
    links[patient_id]; `outliers` (patient_id, axis title) get a red ring.

    Patients without a label (prediction mode) form their own group; the horizontal jitter is
    seeded so the figure is the same every run.
    """
    groups = [c for c in classes if (table["label"] == c).any()] + (["unlabelled"] if (~table["label"].isin(classes)).any() else [])
    shown = [m for m in measures if m in table and table[m].notna().any()]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 3.4), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, measure in zip(axes[0], shown):
        for position, group in enumerate(groups):
            rows = table[(table["label"] == group) if group != "unlabelled" else ~table["label"].isin(classes)].dropna(subset=[measure])
            x = position + rng.uniform(-0.2, 0.2, len(rows))
            points = ax.scatter(x, rows[measure], s=22, alpha=0.8)
            points.set_urls([links.get(p) for p in rows["patient_id"]])
            flagged = np.array([(p, measures[measure]) in outliers for p in rows["patient_id"]], dtype=bool)
            if flagged.any():
                ax.scatter(x[flagged], rows[measure].to_numpy()[flagged], s=90, facecolors="none", edgecolors="#b3261e", linewidths=1.5)
        ax.set(xticks=range(len(groups)), title=measures[measure])
        ax.set_xticklabels(groups, rotation=20)
    fig.tight_layout()
    out = io.StringIO()
    with plt.rc_context({"svg.hashsalt": "lungcam"}):  # fixed element ids and no date: same data, same text
        fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg") :]  # inline: without the XML declaration and doctype
