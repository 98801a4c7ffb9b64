"""Synthetic chest CT cohorts with known truth, for the demo and the tests.

`plan_cohort` decides who has which label; `generate_patient` writes one patient's DICOM study
and truth masks; `cohort_layout` fixes where everything goes, for the command line
(`lungcam phantom`) and the workflow's demo mode alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lungcam.core.atomic import atomic_path
from lungcam.core.interface import lazy_interface

from .cohort import DEFAULT_CLASSES, PatientPlan, plan_cohort

# Loaded on first use: planning a cohort needs none of the image and DICOM writing.
INTERFACE = {"PhantomOptions": "generate", "generate_patient": "generate", "RealBackground": "background"}
__getattr__, _LAZY = lazy_interface(__name__, INTERFACE)

SITES = {"SIEMENS": "site-A", "GE MEDICAL SYSTEMS": "site-B", "Philips": "site-C"}


def cohort_layout(root: Path | str, patient_id: str) -> dict[str, Path]:
    """Paths of one synthetic patient below the cohort folder `root`."""
    root = Path(root)
    return {
        "dicom": root / "dicom" / patient_id,
        "lungs": root / "truth" / f"{patient_id}_lungs.nii.gz",
        "lesions": root / "truth" / f"{patient_id}_lesions.nii.gz",
        "record": root / "truth" / f"{patient_id}.json",
    }


def sample_rows(plans: list[PatientPlan], root: Path | str, relative_to: Path | str | None = None) -> list[dict]:
    """Sample-sheet rows of a synthetic cohort (paths relative to `relative_to` when given)."""
    rows = []
    for plan in plans:
        paths = cohort_layout(root, plan.patient_id)
        if relative_to is not None:
            paths = {k: Path(p).relative_to(relative_to) for k, p in paths.items()}
        rows.append(
            {
                "patient_id": plan.patient_id,
                "label": plan.label,
                "dicom_dir": str(paths["dicom"]),
                "lesion_mask": str(paths["lesions"]),
                "site": SITES[plan.nuisance.manufacturer],
            }
        )
    return rows


def write_sample_sheet(rows: list[dict], path: Path | str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["patient_id", "label", "dicom_dir", "lesion_mask", "site"], delimiter="\t", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)


__all__ = ["DEFAULT_CLASSES", "PatientPlan", "plan_cohort", "cohort_layout", "sample_rows", "write_sample_sheet", *_LAZY]
