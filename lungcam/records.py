"""Write and read the JSON records each stage leaves behind, and the predictions table.

One format everywhere: UTF-8, sorted keys, two-space indent, floats rounded to 4 decimals and
NaN written as null, so that records are stable across runs and diff cleanly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    if isinstance(value, Path):
        return str(value)
    return value


def _write_text(path: Path | str, text: str) -> None:
    """Write atomically (temporary file, then rename) so a killed job never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_record(path: Path | str, record: dict) -> None:
    _write_text(path, json.dumps(_plain(record), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_record(path: Path | str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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


def write_status_table(records: list[Path | str], path: Path | str) -> None:
    """One line `patient_id<TAB>status` per patient, from each patient's record of one stage.

    The workflow decides which patients go on to the next stage from this one small table per
    stage (a cohort-level checkpoint) rather than from a checkpoint per patient: Snakemake
    re-plans after every checkpoint, so per-patient checkpoints cost time quadratic in the
    cohort size (benchmarks/checkpoints.py).
    """
    statuses = sorted((record["patient_id"], record["status"]) for record in map(read_record, records))
    _write_text(path, "".join(f"{patient}\t{status}\n" for patient, status in [("patient_id", "status"), *statuses]))


def read_status_table(path: Path | str) -> dict[str, str]:
    """patient_id -> status, as written by `write_status_table`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return dict(line.split("\t") for line in lines if line)
