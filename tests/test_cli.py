"""The command line: version, help, and predict-scan on the real scans."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from lungcam import __version__
from lungcam.cli import build_parser, predict_scan
from lungcam.core.records import read_record
from lungcam.ingest import VOLUME_NAME

from .conftest import REPO, write_untrained_model


def test_version_and_help_list_every_subcommand():
    done = subprocess.run([sys.executable, "-m", "lungcam.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"lungcam {__version__}"
    text = build_parser().format_help()
    for command in ("phantom", "ingest", "predict-scan", "train-fold"):
        assert command in text, command


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_untrained_model(tmp_path_factory.mktemp("model") / "model.pt", trained_on=("x1", "x2"))


def test_predict_scan_maps_and_classifies_a_real_nifti(real_ingest, model_file, tmp_path):
    out, _, _, _ = real_ingest
    volume = out / "P001" / VOLUME_NAME
    record = predict_scan(volume, model_file, tmp_path / "P001")
    assert record["status"] == "ok" and record["predicted"] in ("COVID-19", "CAP", "NP")
    assert record["lung_method"] == "threshold"  # no --lung-prior given
    assert abs(sum(record[f"prob_{c}"] for c in ("COVID-19", "CAP", "NP")) - 1.0) < 1e-4
    cam = nib.load(tmp_path / "P001" / "cam.nii.gz")
    assert cam.shape == nib.load(volume).shape and np.allclose(cam.affine, nib.load(volume).affine)
    values = np.asarray(cam.dataobj)
    assert values.min() >= 0.0 and values.max() < 1.0
    written = read_record(tmp_path / "P001" / "prediction.json")
    assert (tmp_path / "P001" / "key_slices.png").is_file() and written["predicted"] == record["predicted"]


def test_predict_scan_says_why_it_refuses_a_head_ct(data, model_file, tmp_path):
    record = predict_scan(data / "dcm-qa-ct" / "GE", model_file, tmp_path / "GE")
    assert record["status"] == "excluded" and record["reasons"]
    assert record["reasons"][0].startswith(("ingest: ", "lungs: "))
    assert not (tmp_path / "GE" / "cam.nii.gz").exists()
