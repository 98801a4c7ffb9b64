"""What made a run's outputs: code version, software versions, resolved config, input checksums.

`provenance.json` (CONTRACT.md) lets an auditor trace every output to the code, settings and
inputs that made it. The DICOM folders are checksummed per patient in the ingest job, in parallel
across patients (qc/{patient_id}.json, `ingest.files.sha256`): a second pass over files the job
has just listed and read, so mostly from the page cache. This module gathers those and
checksums the small inputs itself. Paths are written as the sample sheet and config give them,
so the file holds no path of the machine that the user did not write.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from lungcam.core.folders import file_digest

# Distributions whose versions matter for the numbers (import names differ; these are pip names).
PACKAGES = (
    "lungcam",
    "numpy",
    "scipy",
    "pandas",
    "pydicom",
    "nibabel",
    "SimpleITK",
    "dcm2niix",
    "scikit-image",
    "scikit-learn",
    "torch",
    "lungmask",
    "torchcam",
    "captum",
    "matplotlib",
    "Jinja2",
    "jsonschema",
    "snakemake",
)


def software_versions() -> dict[str, str]:
    """Python, the platform, and the installed version of each of PACKAGES."""
    versions = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version(repository: Path | str) -> dict:
    """Git commit of the workflow's repository and whether its tracked files had uncommitted
    changes; `commit` is null outside a git checkout (e.g. an unpacked release)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit,
        "dirty": bool(status) if commit else None,
        "describe": git("describe", "--always", "--dirty") if commit else None,
    }


def input_file(path: Path | str) -> dict:
    """An input file's path, as the user or config gave it, and its checksum."""
    return {"path": str(path), "sha256": file_digest(path)}


def model_summary(path: Path | str) -> dict:
    """A model file's path, checksum, classes and how many patients it was trained on."""
    from lungcam.train import read_model_metadata

    metadata = read_model_metadata(path)
    return input_file(path) | {
        "classes": metadata["classes"],
        "trained_on": len(metadata.get("trained_on", [])),
    }


def provenance_document(
    config: dict,
    qc_records: list[dict],
    sample_sheet: Path | str,
    lesion_masks: dict[str, str],
    slice_labels: Path | str | None = None,
    models: dict[str, Path | str] | None = None,
    run: dict | None = None,
    lung_weights: dict[str, Path | str] | None = None,
) -> dict:
    """provenance.json: code and software versions, the resolved config and its hash, the run
    (`run`: the command and when it started, as Snakemake's main process wrote them), and the
    checksums of every input (DICOM folders from the QC records, the sample sheet, lesion
    masks, slice labels, the `lung_weights` the lung masks were made with (the learned prior's
    or lungmask's, by role), and the `models` that classified the patients, by fold, with how
    many patients each was trained on)."""
    from lungcam import __version__
    from lungcam.core.config import config_hash
    from lungcam.core.samplesheet import read_sheet_table

    given = read_sheet_table(sample_sheet)[0].set_index("patient_id")  # paths as the user wrote them
    patients = {}
    for record in sorted(qc_records, key=lambda r: r["patient_id"]):
        patient, files = record["patient_id"], record.get("ingest", {}).get("files", {})
        patients[patient] = {
            "dicom_dir": given.loc[patient, "dicom_dir"] if patient in given.index else None,
            "files": files.get("found"),
            "sha256": files.get("sha256"),
            "status": record.get("status"),
        }
    software = software_versions() | {
        "dcm2niix binary": sorted({r["ingest"]["dcm2niix_version"] for r in qc_records if r.get("ingest", {}).get("dcm2niix_version")})
    }
    inputs: dict = {
        "sample_sheet": input_file(sample_sheet),
        "patients": patients,
        "lesion_masks": {p: file_digest(path) for p, path in sorted(lesion_masks.items())},
    }
    if slice_labels:
        inputs["slice_labels"] = input_file(slice_labels)
    if lung_weights:
        inputs["lung_weights"] = {role: input_file(path) for role, path in sorted(lung_weights.items())}
    if models:
        inputs["models"] = {name: model_summary(path) for name, path in sorted(models.items())}
    return {
        "lungcam": __version__,
        "code": code_version(Path(__file__).resolve().parents[1]),
        "run": {"command": None, "started": None} | (run or {}),
        "software": software,
        "config_hash": config_hash(config),
        "config": config,
        "inputs": inputs,
    }
