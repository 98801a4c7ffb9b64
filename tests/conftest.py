"""Shared fixtures: the real reference data, default settings and a small synthetic cohort."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from nibabel.processing import resample_from_to

from lungcam.core.config import load_config
from lungcam.core.records import write_record
from lungcam.ingest.stage import VOLUME_NAME, IngestSettings, ingest_patient
from lungcam.phantom import cohort_layout, plan_cohort, sample_rows, write_sample_sheet
from lungcam.phantom.generate import PhantomOptions, generate_patient
from lungcam.train.cache import CacheSettings, build_cache

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


REAL_CASES = {"P001": 148, "cap001": 168, "normal001": 154}

# The smallest demo that still trains: 3 patients per class (and the demo's scout-only patient,
# excluded at ingest), 3 folds, one short epoch each; fewer bootstrap draws.
TRAINING_DEMO = {
    "demo": {
        "patients_per_class": 3,
        "matrix": 128,
        "localizer": False,
        "thick_series": False,
        "train": {"input_size": 32, "width": 0.25, "max_epochs": 1, "bag_size": 8, "workers": 0},
    },
    "train": {"folds": 3, "final_model": True},
    "report": {"bootstrap": 200},
    "lungs": {"prior": {"use": False}},  # training the prior is tested on its own (test_lung_prior)
}


# `--config` item for workflow runs that test other things: no lung prior to train first.
NO_PRIOR = "lungs={'prior': {'use': False}}"


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` with 2 cores; fail with its output unless `check` is off."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def write_untrained_model(path: Path, dropout: float = 0.0, trained_on: tuple[str, ...] = ()) -> Path:
    """A small untrained hu2020 model file for 32 px slices of 5 x 2 x 2 mm caches: for tests of
    the prediction chain, where the figures do not matter."""
    import torch

    from lungcam.train.inference import save_model
    from lungcam.train.models import build_model
    from lungcam.train.slice_bank import bank_preprocessing

    torch.manual_seed(0)
    metadata = {
        "model": "hu2020",
        "classes": ["COVID-19", "CAP", "NP"],
        "settings": {"width": 0.25, "dropout": dropout, "aggregation": "topk_mean", "top_k": 5},
        "preprocessing": bank_preprocessing(32, 0.25, load_config()["cache"] | {"spacing_mm": [5.0, 2.0, 2.0]}),
    }
    save_model(path, build_model("hu2020", 3, 0.25, dropout), metadata | ({"trained_on": list(trained_on)} if trained_on else {}))
    return path


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def training_demo(tmp_path_factory) -> tuple[Path, Path]:
    """The workflow run once on TRAINING_DEMO, every stage: (working directory, its config)."""
    workdir = tmp_path_factory.mktemp("training-demo")
    config = write_config(workdir, TRAINING_DEMO)
    result = snakemake(workdir, "--configfile", str(config))
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)  # what the user saw
    return workdir, config


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def real_ingest(data, tmp_path_factory, config):
    """Every real reference series ingested once: (stage root, records, digests before, after)."""
    settings = IngestSettings.from_config(config["ingest"])
    out = tmp_path_factory.mktemp("ingest")
    folders = {pid: data / "covid-ct-md" / pid for pid in REAL_CASES}
    folders["GE"] = data / "dcm-qa-ct" / "GE"
    folders["TS"] = data / "totalsegmentator-example" / "ct_dicom"
    folders["LM"] = data / "lungmask-testdata"
    before = {pid: tree_digest(folder) for pid, folder in folders.items()}
    records = {pid: ingest_patient(pid, folder, out / pid, settings) for pid, folder in folders.items()}
    after = {pid: tree_digest(folder) for pid, folder in folders.items()}
    return out, records, before, after


def without_margin(settings):
    """Lung settings (lungcam.lungs.stage.LungSettings) with the lesion margin off."""
    return replace(settings, lesion_margin=replace(settings.lesion_margin, margin_mm=0.0))


@pytest.fixture(scope="session")
def real_masks(real_ingest, config) -> dict:
    """(HU, labels, spacing) in LPS order for the real normal and CAP scans: default settings
    without the lesion margin, so that lesions planted in these lungs stay inside the lungs."""
    from lungcam.core.orientation import load_hu_lps
    from lungcam.lungs.stage import LungSettings, segment

    out, _, _, _ = real_ingest
    settings = without_margin(LungSettings.from_config(config["lungs"]))
    masks = {}
    for pid in ("normal001", "cap001"):
        hu, view = load_hu_lps(out / pid / VOLUME_NAME)
        masks[pid] = (hu, segment(hu, view.spacing, settings)[0], view.spacing)
    return masks


def ball(shape, centre, radius_mm: float, spacing) -> np.ndarray:
    """Voxels of an array of `shape` within `radius_mm` of `centre` (voxel indices)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s / radius_mm) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 1.0


def pleural_consolidation(hu, labels, spacing, side: int, textured: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 65 mL consolidation (30 HU) planted against the posterior chest wall of lung `side`, half
    way up: (image, lesion). Textured: with 30 contrast-filled vessel sections (3 mm, 350 HU) and
    10 air bronchogram sections (5 mm, -950 HU); otherwise uniform (SD 15 HU)."""
    lung = labels == side
    z = np.nonzero(lung.any(axis=(1, 2)))[0]
    k = (z[0] + z[-1]) // 2
    y, x = max(map(tuple, np.argwhere(lung[k])))  # the most posterior lung in the middle slice
    lesion = ball(hu.shape, (k, y - 12.0 / spacing[1], x), 28.0, spacing) & lung
    rng = np.random.default_rng(5)
    image = hu.copy()
    image[lesion] = rng.normal(30, 15, int(lesion.sum()))
    if textured:
        inner = np.argwhere(lesion)
        for i, centre in enumerate(inner[rng.choice(len(inner), 40, replace=False)]):
            image[ball(hu.shape, tuple(centre), 1.5 if i < 30 else 2.5, spacing) & lesion] = 350 if i < 30 else -950
    return image, lesion


def lobar_consolidation(hu, labels, spacing, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Lung `side` consolidated (30 HU) from the apex down to 40 % of its height, as an upper lobe
    down to a horizontal fissure: (image, lesion). With 30 contrast-filled vessel sections (3 mm,
    350 HU) and 8 air bronchograms (4 mm wide, 40 mm long)."""
    lesion = labels == side
    z = np.nonzero(lesion.any(axis=(1, 2)))[0]
    lesion[: z[0] + int(0.6 * (z[-1] - z[0]))] = False
    rng = np.random.default_rng(5)
    image = hu.copy()
    image[lesion] = rng.normal(30, 15, int(lesion.sum()))
    inner = np.argwhere(lesion)
    for centre in inner[rng.choice(len(inner), 30, replace=False)]:
        image[ball(hu.shape, tuple(centre), 1.5, spacing) & lesion] = 350
    for centre in inner[rng.choice(len(inner), 8, replace=False)]:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        for t in np.arange(-20.0, 20.0):
            image[ball(hu.shape, tuple(centre + direction * t / np.asarray(spacing)), 2.0, spacing) & lesion] = -950
    return image, lesion


def write_painted_study(dicom_dir: Path, truth_path: Path, seed: int = 7, position: str = "FFS") -> None:
    """A synthetic chest written as DICOM with the lungs painted in flat HU values.

    The values are those tests/lungmask_weights.band_classifier tells apart.

    Body +40 HU, right lung -500, left lung -200, outside -1000, no noise; feet first, so that the
    volume reaches lungmask only after reorientation. `truth_path` gets the lung labels.
    """
    from dataclasses import replace

    import numpy as np

    from lungcam.phantom import plan_cohort
    from lungcam.phantom.generate import PhantomOptions, Scan, render_synthetic, save_mask, write_study

    from .lungmask_weights import AIR_HU, LEFT_HU, RIGHT_HU, TISSUE_HU

    plan = plan_cohort(1, seed)[0]
    nuisance = replace(plan.nuisance, patient_position=position, slice_thickness_mm=5.0)
    scan, _ = render_synthetic(plan, nuisance, 128)
    body = scan.hu > -500
    painted = np.where(body, TISSUE_HU, AIR_HU).astype(np.float32)
    painted[scan.lungs == 1] = RIGHT_HU
    painted[scan.lungs == 2] = LEFT_HU
    painted_scan = Scan(painted, scan.lungs, scan.lesions, scan.xs, scan.ys, scan.zs, noise_free=False)
    write_study(painted_scan, plan, nuisance, PhantomOptions(128, localizer=False, thick_series=False), dicom_dir)
    save_mask(scan.lungs, scan.affine(), truth_path)


@pytest.fixture(scope="session", params=["HFS", "FFS"])
def cached(request, tmp_path_factory, config):
    """A painted phantom written head first or feet first, ingested and cached with its true lungs
    (anisotropic cache voxels, 2.5 x 1.25 x 1.25 mm)."""
    root = tmp_path_factory.mktemp(f"cache-{request.param}")
    write_painted_study(root / "dicom", root / "truth.nii.gz", seed=3, position=request.param)
    ingest_patient("P", root / "dicom", root / "stage", IngestSettings.from_config(config["ingest"]))
    volume = root / "stage" / VOLUME_NAME
    truth = resample_from_to(nib.load(root / "truth.nii.gz"), nib.load(volume), order=0)
    nib.save(nib.Nifti1Image(np.asarray(truth.dataobj).astype(np.uint8), truth.affine), root / "lungs.nii.gz")
    summary = build_cache(
        volume,
        root / "lungs.nii.gz",
        root / "cache",
        CacheSettings(spacing_mm=(2.5, 1.25, 1.25), margin_mm=10.0, window_hu=(-1150.0, 350.0), mask_outside_lungs=False, antialias=True),
    )
    return root, volume, summary, request.param
