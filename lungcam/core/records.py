"""Write and read the JSON records each stage leaves behind, and the predictions tables.

One JSON format everywhere: UTF-8, sorted keys, two-space indent, NaN written as null; records
round floats to 4 decimals so that they are stable across runs and diff cleanly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lungcam.core.atomic import write_text, write_tsv


def _plain(value, digits: int | None = 4):
    """`value` in plain JSON types: numpy scalars as Python ones, paths as text, non-finite
    floats as None, floats rounded to `digits` decimals (None: kept exact)."""
    if isinstance(value, dict):
        return {str(k): _plain(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, digits) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else value if digits is None else round(value, digits)
    if isinstance(value, Path):
        return str(value)
    return value


def write_record(path: Path | str, record: dict) -> None:
    """A stage record or figure file: floats rounded to 4 decimals."""
    write_text(path, json.dumps(_plain(record), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_document(path: Path | str, document: dict) -> None:
    """A JSON document that must keep its numbers exact (provenance: the config as run)."""
    write_text(path, json.dumps(_plain(document, None), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_record(path: Path | str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_predictions(table, path: Path | str) -> None:
    """A predictions table (predictions.tsv, or one fold's): patient_id, label, fold, then
    prob_<class> for every class and predicted; probabilities with 6 decimals."""
    write_tsv(table, path, float_format="%.6f")


def read_predictions(path: Path | str):
    """predictions.tsv as a pandas DataFrame, ids, labels and folds as text (an empty label stays
    empty). pandas is imported here, not by every job that reads a record."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype={"patient_id": str, "label": str, "fold": str}, keep_default_na=False)


def read_passed_patients(cohort_qc: Path | str) -> list[str]:
    """The patients whose status is `ok` in cohort_qc.tsv (rule `prepare`), in the table's order."""
    import pandas as pd

    cohort = pd.read_csv(cohort_qc, sep="\t", dtype=str, keep_default_na=False)
    return list(cohort.loc[cohort["status"] == "ok", "patient_id"])


STATUSES = ("ok", "excluded")


class StatusTableError(ValueError):
    """A stage record does not belong to the patient it was made for, or has no valid status."""


def write_status_table(records: dict[str, Path | str], path: Path | str) -> None:
    """One line `patient_id<TAB>status` per patient, from each patient's record of one stage.

    `records` maps each patient id of the sample sheet to its record of the stage. A record
    that names another patient, or holds no valid status, stops the table with an error naming
    both: a table must never lose or alter a patient id, or the next stage would silently run
    for nobody.

    The workflow decides which patients go on to the next stage from this one small table per
    stage (a cohort-level checkpoint) rather than from a checkpoint per patient: Snakemake
    re-plans after every checkpoint, so per-patient checkpoints cost time quadratic in the
    cohort size (benchmarks/checkpoints.py).
    """
    statuses, problems = [], []
    for patient, record_path in records.items():
        record = read_record(record_path)
        if record.get("patient_id") != patient:
            problems.append(f"{record_path}: the record of patient '{patient}' names patient_id {record.get('patient_id')!r}")
        elif record.get("status") not in STATUSES:
            problems.append(f"{record_path}: patient '{patient}' has status {record.get('status')!r}, not one of {', '.join(STATUSES)}")
        statuses.append((patient, record.get("status")))
    if problems:
        raise StatusTableError(f"{len(problems)} stage record(s) do not match the sample sheet:\n  " + "\n  ".join(problems))
    write_text(path, "".join(f"{patient}\t{status}\n" for patient, status in [("patient_id", "status"), *sorted(statuses)]))


def read_status_table(path: Path | str) -> dict[str, str]:
    """patient_id -> status, as written by `write_status_table`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return dict(line.split("\t") for line in lines if line)
