"""Read and check the sample sheet before any job starts.

Every problem is reported at once, each naming the sheet's line and the patient, so that a user
fixes the sheet in one go. Checks: the row schema (schemas/samples.schema.yaml), unique and safe
patient ids (they become file names, so `../x` must never pass), labels among the configured
classes, existing DICOM folders and lesion masks, no DICOM folder given to two patients (one scan
in two cross-validation folds), and no input inside the run's own output folders (Snakemake
deletes outputs it reruns). Relative paths are resolved against the sheet's own folder.

`read_sheet_table` is the one reader of the file: whole lines starting with `#` are comments, a
`#` inside a value is part of the value.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import fastjsonschema
import pandas as pd

from lungcam.core.config import load_schema, record_validator

COLUMNS = ("patient_id", "label", "dicom_dir", "lesion_mask", "site", "study_uid")


class SampleSheetError(ValueError):
    """The sample sheet is unusable; the message lists every problem with its line."""


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def row_checker() -> Callable[[dict], list[str]]:
    """A function from a sheet row to its schema problems (none for a good row).

    The sheet is read at every parse of the workflow, which on a cluster means by every job. A
    validator compiled to Python code (fastjsonschema) passes a good row much faster than
    jsonschema, and jsonschema words every problem of a row the compiled one rejects.
    """
    schema = load_schema("samples.schema.yaml")
    compiled, described = fastjsonschema.compile(schema), record_validator(schema, fill_defaults=False)

    def problems(record: dict) -> list[str]:
        try:
            compiled(record)
        except fastjsonschema.JsonSchemaException:
            return described(record)
        return []

    return problems


def read_sheet_table(path: Path | str) -> tuple[pd.DataFrame, list[int]]:
    """The sheet's rows as text, exactly as written, and each row's line number in the file.

    Only whole lines starting with `#` are comments (and blank lines are skipped): a `#` inside a
    value, as in a folder `scan#2`, is part of the value.
    """
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"sample sheet {path} not found")
    kept, numbers = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            kept.append(line)
            numbers.append(number)
    if not kept:
        raise SampleSheetError(f"sample sheet {path}: no header line")
    try:
        table = pd.read_csv(io.StringIO("\n".join(kept) + "\n"), sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise SampleSheetError(f"sample sheet {path}: cannot be read as TSV ({exc})") from exc
    table.columns = [c.strip() for c in table.columns]
    return table, numbers[1:]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _overlaps(path: str, folder: str) -> bool:
    """Whether either folder holds the other (or they are the same)."""
    return _inside(path, folder) or _inside(folder, path)


def _ancestors(path: str):
    parent = os.path.dirname(path)
    while parent != path:
        yield parent
        path, parent = parent, os.path.dirname(parent)


def shared_folder_problems(folders: list[tuple[str, str, str]]) -> list[str]:
    """A problem for every DICOM folder given to two patients, or holding another patient's
    folder: the same scan would be read for both (and could land in two cross-validation folds).
    `folders` holds (real path, patient id, where in the sheet); linear in the number of rows."""
    owner: dict[str, str] = {}
    problems = []
    for real, pid, where in folders:
        if real in owner:
            problems.append(f"{where}: dicom_dir is also patient '{owner[real]}''s DICOM folder; one scan must belong to one patient")
        else:
            owner[real] = pid
    for real, _, where in folders:
        holder = next((owner[parent] for parent in _ancestors(real) if parent in owner), None)
        if holder is not None:
            problems.append(f"{where}: dicom_dir lies inside patient '{holder}''s DICOM folder; one scan must belong to one patient")
    return problems


def load_sample_sheet(
    path: Path | str, classes: list[str], require_labels: bool = True, output_dirs: Iterable[Path | str] = ()
) -> pd.DataFrame:
    """Return the checked sheet indexed by patient_id, with absolute `dicom_dir`/`lesion_mask`.

    `output_dirs` are the run's output folders (results/, work/, logs/): an input inside one of
    them, or a DICOM folder holding one, is refused.
    """
    path = Path(path)
    table, line_numbers = read_sheet_table(path)
    missing = [c for c in ("patient_id", "dicom_dir") if c not in table.columns]
    if require_labels and "label" not in table.columns:
        missing.append("label")
    if missing:
        raise SampleSheetError(f"sample sheet {path}: missing column(s) {', '.join(missing)}")
    unknown = [c for c in table.columns if c not in COLUMNS]
    if unknown:
        raise SampleSheetError(f"sample sheet {path}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(COLUMNS)}")
    if table.empty:
        raise SampleSheetError(f"sample sheet {path}: no patients")
    check_row = row_checker()
    base = path.resolve().parent
    outputs = [(os.path.realpath(d), Path(d).name) for d in output_dirs]
    problems: list[str] = []
    first_line: dict[str, int] = {}
    folders: list[tuple[str, str, str]] = []  # (real DICOM folder, patient, where in the sheet)
    rows = []
    for line, raw in zip(line_numbers, table.to_dict("records")):
        record = {k: str(v).strip() for k, v in raw.items() if str(v).strip() != ""}
        pid = record.get("patient_id", "")
        where = f"line {line} (patient_id '{pid}')"
        problems.extend(f"{where}: {message}" for message in check_row(record))
        if pid in first_line:
            problems.append(f"{where}: duplicate patient_id, first used on line {first_line[pid]}")
        elif pid:
            first_line[pid] = line
        label = record.get("label", "")
        if label and label not in classes:
            problems.append(f"{where}: unknown label '{label}'; allowed: {', '.join(classes)}")
        if require_labels and not label:
            problems.append(f"{where}: empty label (required for training and evaluation)")
        if record.get("dicom_dir"):
            folder = _resolve(record["dicom_dir"], base)
            if not folder.is_dir():
                problems.append(f"{where}: dicom_dir '{record['dicom_dir']}' is not an existing folder")
            else:
                real = os.path.realpath(folder)
                overlapped = next((name for out, name in outputs if _overlaps(real, out)), None)
                if overlapped:
                    problems.append(
                        f"{where}: dicom_dir '{record['dicom_dir']}' overlaps the run's output folder {overlapped}/; "
                        "keep inputs outside results/, work/ and logs/"
                    )
                folders.append((real, pid, where))
            record["dicom_dir"] = str(folder)
        if record.get("lesion_mask"):
            mask = _resolve(record["lesion_mask"], base)
            if not mask.is_file():
                problems.append(f"{where}: lesion_mask '{record['lesion_mask']}' does not exist")
            elif any(_inside(os.path.realpath(mask), out) for out, _ in outputs):
                problems.append(
                    f"{where}: lesion_mask '{record['lesion_mask']}' is inside the run's output folders; keep inputs outside them"
                )
            record["lesion_mask"] = str(mask)
        rows.append(record)
    problems += shared_folder_problems(folders)
    if problems:
        raise SampleSheetError(f"sample sheet {path} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    sheet = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object).fillna("").astype(str)
    return sheet.set_index("patient_id", drop=False)


def lesion_masks(samples: pd.DataFrame) -> dict[str, str]:
    """patient_id -> lesion mask, for the patients a sample sheet gives one (column optional)."""
    column = samples.get("lesion_mask", pd.Series(dtype=str))
    return {patient: mask for patient, mask in column.items() if isinstance(mask, str) and mask}
