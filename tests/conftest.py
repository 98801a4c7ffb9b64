"""Shared fixtures: the real reference data, default settings and a small synthetic cohort."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lungcam.config import load_config
from lungcam.ingest import IngestSettings
from lungcam.phantom import cohort_layout, plan_cohort, sample_rows, write_sample_sheet
from lungcam.phantom.generate import PhantomOptions, generate_patient
from lungcam.records import write_record

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """../shared/data beside the checkout (CI provides it), or $LUNGCAM_SHARED_DATA."""
    path = Path(os.environ.get("LUNGCAM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "covid-ct-md").is_dir():
        raise RuntimeError(f"real reference data not found at {path}; set LUNGCAM_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def config() -> dict:
    return load_config()


@pytest.fixture()
def ingest_settings(config) -> IngestSettings:
    return IngestSettings.from_config(config["ingest"])


def make_cohort(root: Path, patients_per_class: int, seed: int, matrix: int = 128) -> list:
    """Write a synthetic cohort (DICOM, truth, samples.tsv) below `root`; returns the plans."""
    plans = plan_cohort(patients_per_class, seed)
    options = PhantomOptions(matrix=matrix, localizer=True, thick_series=True)
    for plan in plans:
        paths = cohort_layout(root, plan.patient_id)
        result = generate_patient(plan, options, paths["dicom"], paths["lungs"], paths["lesions"])
        write_record(paths["record"], result.record)
    write_sample_sheet(sample_rows(plans, root, relative_to=root), root / "samples.tsv")
    return plans


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> tuple[Path, list]:
    """One synthetic patient per class at 128x128, written once per test session."""
    root = tmp_path_factory.mktemp("cohort")
    return root, make_cohort(root, 1, seed=11)


def copy_files(sources, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, target / Path(source).name)
    return target
