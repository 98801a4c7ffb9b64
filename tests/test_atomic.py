"""Outputs are written through a temporary name and renamed: a job killed mid-write (kill -9)
leaves no truncated output for a later stage, or a rerun, to trip over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lungcam.core.atomic import PARTIAL_PREFIX, atomic_path
from lungcam.train.cache import CacheSettings, build_cache

from .conftest import REPO, snakemake, write_config

SETTINGS = CacheSettings(spacing_mm=(5.0, 2.0, 2.0), margin_mm=10.0, window_hu=(-1150.0, 350.0), mask_outside_lungs=False, antialias=True)


def killed_while_writing(source, target) -> int:
    """Write a lung mask on `source`'s grid to `target` in a child process that kills itself
    (SIGKILL) after a few blocks of the compressed file; returns its exit code."""
    code = textwrap.dedent(f"""
        import gzip, os, signal
        import numpy as np, nibabel as nib
        from lungcam.core.orientation import LPSView

        original, calls = gzip.GzipFile.write, []
        def dying_write(self, data):
            calls.append(len(data))
            if len(calls) == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, data)
        gzip.GzipFile.write = dying_write
        view = LPSView.of(nib.load({str(source)!r}))
        view.save(np.random.default_rng(0).integers(0, 3, (60, 128, 128)).astype(np.uint8), {str(target)!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode


def test_a_mask_killed_mid_write_leaves_no_output(tmp_path):
    """Before: the truncated mask stayed in place, and every later cache job failed on it with
    EOFError. Now only a hidden partial file is left, the mask counts as missing, and the next
    attempt replaces the partial file."""
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 60), np.int16), np.diag([1.5, 1.5, 5.0, 1.0])), source)
    target = tmp_path / "lungs" / "P1.nii.gz"
    assert killed_while_writing(source, target) == -signal.SIGKILL
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [f"{PARTIAL_PREFIX}P1.nii.gz"]
    with pytest.raises(FileNotFoundError):
        build_cache(source, target, tmp_path / "cache", SETTINGS)
    assert not (tmp_path / "cache").exists()
    mask = np.zeros((128, 128, 60), np.uint8)
    mask[30:60, 30:90, 10:50], mask[70:100, 30:90, 10:50] = 1, 2
    with atomic_path(target) as tmp:
        nib.save(nib.Nifti1Image(mask, nib.load(source).affine), tmp)
    assert [p.name for p in target.parent.iterdir()] == ["P1.nii.gz"]
    build_cache(source, target, tmp_path / "cache", SETTINGS)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["image.npy", "lungs.npy", "transform.json"]


def test_a_failed_write_removes_its_partial_file_and_keeps_the_old_output(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]


@pytest.mark.slow
def test_a_run_killed_during_the_lung_masks_recovers_with_unlock_and_rerun(tmp_path):
    """The README's recovery advice: after Snakemake is killed (kill -9) while lung masks are
    being written, `--unlock` and a rerun with `--rerun-incomplete` finish the cohort with
    complete outputs."""
    demo = {"patients_per_class": 1, "matrix": 128, "localizer": False, "thick_series": False}
    config = write_config(tmp_path, {"demo": demo, "lungs": {"prior": {"use": False}}})
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "prepare",
        "--configfile",
        str(config),
    ]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any((tmp_path / "results" / "lungs").glob("*.nii.gz")):
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # Snakemake and its running jobs at once
    run.wait()
    assert not (tmp_path / "results" / "cohort_qc.tsv").exists()  # it really stopped mid-run
    assert "cannot be locked" in snakemake(tmp_path, "prepare", "--configfile", str(config), check=False).stderr
    snakemake(tmp_path, "prepare", "--configfile", str(config), "--unlock")
    snakemake(tmp_path, "prepare", "--configfile", str(config), "--rerun-incomplete")
    cohort = pd.read_csv(tmp_path / "results" / "cohort_qc.tsv", sep="\t", keep_default_na=False)
    assert list(cohort["status"]) == ["ok", "ok", "ok", "excluded"]
    for patient in cohort.loc[cohort["status"] == "ok", "patient_id"]:
        assert np.asarray(nib.load(tmp_path / "results" / "lungs" / f"{patient}.nii.gz").dataobj).max() == 2
        assert (tmp_path / "work" / "cache" / patient / "image.npy").is_file()
    assert not list(tmp_path.rglob(f"{PARTIAL_PREFIX}*"))
