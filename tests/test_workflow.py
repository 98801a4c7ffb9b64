"""The Snakemake workflow end to end: lint, demo, failure isolation, incremental reruns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from lungcam.cam.lesions import COLUMNS as LESION_COLUMNS
from lungcam.core.config import config_hash
from lungcam.core.folders import folder_digest
from lungcam.core.records import read_record
from lungcam.ingest.leak_scan import find_leaks
from lungcam.phantom import plan_cohort
from lungcam.phantom.cohort import STREAM_IDENTITY, patient_rng
from lungcam.phantom.dicom_writer import draw_identity
from lungcam.train.inference import load_model, predict_patients
from lungcam.train.slice_bank import SliceBank

from .conftest import NO_PRIOR, REPO, TRAINING_DEMO, snakemake, write_config, write_untrained_model

SMALL_DEMO = {"demo": {"patients_per_class": 1, "matrix": 128}}


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and parts and parts[0] == "total":
            break
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_lint_is_clean(tmp_path):
    config = write_config(tmp_path, SMALL_DEMO)
    result = snakemake(tmp_path, "--configfile", str(config), "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_fresh_plan_waits_on_one_status_checkpoint_per_stage(tmp_path):
    """Who goes on after ingest and lung QC is read from one status table per stage, not from a
    checkpoint per patient (Snakemake re-plans after every checkpoint: quadratic in patients,
    benchmarks/checkpoints.py). So a fresh dry run plans every patient's ingest, the two status
    checkpoints, one cohort QC job, and no per-patient job that would wait on a checkpoint."""
    config = write_config(tmp_path, SMALL_DEMO)
    jobs = planned_jobs(snakemake(tmp_path, "--configfile", str(config), "-n").stdout)
    assert jobs["ingest"] == 4 and jobs["ingest_status"] == 1 and jobs["lungs_status"] == 1 and jobs["patient_qc"] == 1
    assert not {"nifti", "lungs", "cache", "cam", "patient_report"} & set(jobs)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaks_nothing(training_demo):
    tmp_path, config = training_demo
    plans = plan_cohort(3, 2020, scout_only=1)
    included, scout = plans[:-1], plans[-1]
    for plan in included:
        qc = read_record(tmp_path / "results" / "qc" / f"{plan.patient_id}.json")
        assert qc["status"] == "ok", qc["reasons"]
        assert (tmp_path / "results" / "nifti" / f"{plan.patient_id}.nii.gz").is_file()
        assert qc["ingest"]["files"]["sha256"] == folder_digest(tmp_path / "demo" / "dicom" / plan.patient_id)
    assert read_record(tmp_path / "results" / "qc" / f"{scout.patient_id}.json")["reasons"] == [
        "ingest: only localizer (scout) images, no axial CT series"
    ]
    assert (tmp_path / "demo" / "samples.tsv").is_file()
    # Pseudonymised patients (DICOM PatientID = their sheet id) go through every stage too.
    pseudonymised = [
        p.patient_id
        for p in included
        if pydicom.dcmread(next((tmp_path / "demo" / "dicom" / p.patient_id).iterdir()), stop_before_pixels=True).PatientID == p.patient_id
    ]
    assert pseudonymised and all((tmp_path / "results" / "cam" / f"{p}.nii.gz").is_file() for p in pseudonymised)
    predictions = pd.read_csv(tmp_path / "results" / "predictions.tsv", sep="\t")
    assert sorted(predictions["patient_id"]) == sorted(p.patient_id for p in included)
    assert sorted(predictions["fold"].unique()) == [0, 1, 2]
    probabilities = predictions[["prob_COVID-19", "prob_CAP", "prob_NP"]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    for plan in included:
        cam = nib.load(tmp_path / "results" / "cam" / f"{plan.patient_id}.nii.gz")
        scan = nib.load(tmp_path / "results" / "nifti" / f"{plan.patient_id}.nii.gz")
        lungs = np.asarray(nib.load(tmp_path / "results" / "lungs" / f"{plan.patient_id}.nii.gz").dataobj)
        values = np.asarray(cam.dataobj)
        assert cam.shape == scan.shape and np.allclose(cam.affine, scan.affine) and values.dtype == np.float32
        assert values.min() >= 0 and values.max() <= 1 and not values[lungs == 0].any()
        assert (tmp_path / "results" / "cam" / f"{plan.patient_id}_key_slices.png").stat().st_size > 5000
        lesions = pd.read_csv(tmp_path / "results" / "lesions" / f"{plan.patient_id}.tsv", sep="\t")
        assert list(lesions.columns) == LESION_COLUMNS and set(lesions["side"]) <= {"right", "left"}
    localisation = json.loads((tmp_path / "results" / "localisation.json").read_text())
    assert localisation["patients"] == 9 and localisation["lesion_positive"] == 6 and localisation["pointing_game"]["n"] == 6
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert metrics["classification"]["patients"] == 9 and set(metrics["classification"]["per_fold"]) == {"0", "1", "2"}
    assert metrics["classification"]["overall"]["accuracy"]["value"] == pytest.approx(
        (predictions["label"] == predictions["predicted"]).mean(), abs=1e-4
    )
    assert metrics["slice_level"]["n"] == 9 and metrics["localisation"]["pointing_game"]["mean"] == pytest.approx(
        localisation["pointing_game"]["mean"], abs=1e-4
    )
    assert metrics["nuisance_baseline"]["patients"] == 9 and 0 <= metrics["nuisance_baseline"]["accuracy"]["value"] <= 1
    provenance = json.loads((tmp_path / "results" / "provenance.json").read_text())
    assert provenance["config_hash"] == config_hash(provenance["config"]) and provenance["config"]["train"]["folds"] == 3
    files = read_record(tmp_path / "results" / "qc" / "demo001.json")["ingest"]["files"]["found"]
    assert provenance["inputs"]["patients"]["demo001"] == {
        "dicom_dir": "dicom/demo001",
        "files": files,
        "sha256": folder_digest(tmp_path / "demo" / "dicom" / "demo001"),
        "status": "ok",
    }
    assert sorted(p.name for p in (tmp_path / "results" / "reports").iterdir()) == sorted(f"{p.patient_id}.html" for p in plans)
    scout_report = (tmp_path / "results" / "reports" / f"{scout.patient_id}.html").read_text()
    report = (tmp_path / "results" / "reports" / f"{included[0].patient_id}.html").read_text()
    assert "<th>run started</th><td>20" in report and "<th>command</th><td><code>snakemake " in report
    assert re.search(r"model file</th><td>results/model/fold\d\.pt \(sha256 [0-9a-f]{12}&hellip;\), trained on \d+ patients", report)
    assert 'id="errors"' in scout_report and "only localizer (scout) images" in scout_report
    summary = (tmp_path / "results" / "summary.html").read_text()
    exclusions = summary[summary.index('id="exclusions"') : summary.index('id="metrics"')]
    assert f'href="reports/{scout.patient_id}.html"' in exclusions and "only localizer (scout) images" in exclusions
    assert "Nuisance-only baseline" in summary[summary.index('id="metrics"') :]
    assert "lungcam: done; the cohort summary is results/summary.html" in (tmp_path / "snakemake.out").read_text()
    run = json.loads((tmp_path / "results" / "provenance.json").read_text())["run"]
    assert run["command"].startswith("snakemake ")
    assert "--configfile" in run["command"] and run["started"].startswith("20")
    planted = [
        v for plan in plans for v in draw_identity(patient_rng(plan.seed, plan.index, STREAM_IDENTITY), plan.patient_id).planted_values()
    ]
    header = pydicom.dcmread(next((tmp_path / "demo" / "dicom" / plans[0].patient_id).iterdir()), stop_before_pixels=True)
    assert str(header.PatientName) in planted  # the planted values are really in the input...
    assert find_leaks(tmp_path / "results", planted) == []  # ...and nowhere in the outputs
    machine_paths = [str(tmp_path), str(REPO), str(Path.home()) + "/", tempfile.gettempdir() + "/"]
    assert find_leaks(tmp_path / "results", machine_paths) == []  # nor any absolute path of this machine
    again = snakemake(tmp_path, "--configfile", str(config), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    retrain = write_config(
        tmp_path / "retrain",
        {**TRAINING_DEMO, "demo": {**TRAINING_DEMO["demo"], "train": {**TRAINING_DEMO["demo"]["train"], "max_epochs": 2}}},
    )
    planned = planned_jobs(snakemake(tmp_path, "--configfile", str(retrain), "-n").stdout)
    assert planned["train_fold"] == 3 and "phantom" not in planned and "ingest" not in planned  # retrains only

    # Prediction mode: the final model on the demo's sample sheet, in a working directory whose
    # config does not repeat the demo's cache settings: the model file's preprocessing is used,
    # so the predictions equal the model applied to the training run's own slices.
    model_file = tmp_path / "results" / "model" / "final.pt"
    predict_dir = tmp_path / "predict"
    snakemake(
        predict_dir,
        "--config",
        f"samples={tmp_path / 'demo' / 'samples.tsv'}",
        "mode=predict",
        f"predict={{'model': '{model_file}'}}",
        NO_PRIOR,
    )
    predicted = pd.read_csv(predict_dir / "results" / "predictions.tsv", sep="\t").set_index("patient_id")
    model, metadata = load_model(model_file)
    bank = SliceBank.load(tmp_path / "work" / "train" / "bank")
    expected = predict_patients(model, metadata, bank, sorted(predicted.index), torch.device("cpu")).set_index("patient_id")
    assert np.allclose(predicted[expected.columns].to_numpy(), expected.to_numpy(), atol=1e-5)
    assert set(predicted["fold"]) == {"predict"} and predicted["trained_on"].all()  # the final model saw them all
    assert sorted(p.name for p in (predict_dir / "results" / "cam").glob("*.nii.gz")) == sorted(f"{p.patient_id}.nii.gz" for p in included)
    assert dict(predicted["label"]) == {p.patient_id: p.label for p in included}
    # The sheet gives labels, so the prediction run is evaluated too (an external validation).
    evaluated = json.loads((predict_dir / "results" / "metrics.json").read_text())
    assert evaluated["classification"]["patients"] == 9 and list(evaluated["classification"]["per_fold"]) == ["predict"]
    assert "note" in evaluated["nuisance_baseline"]  # no folds: nothing to compare with
    assert len(list((predict_dir / "results" / "reports").iterdir())) == len(plans)
    assert "were in the model's training set" in (predict_dir / "results" / "summary.html").read_text()
    assert "trained on" in (predict_dir / "results" / "reports" / f"{included[0].patient_id}.html").read_text()


def variant(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, section by section."""
    merged = {**base}
    for key, value in changes.items():
        merged[key] = variant(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


@pytest.mark.slow
def test_incremental_reruns_touch_only_what_a_change_concerns(training_demo):
    """Dry runs on the finished training demo: each change plans exactly the stages it concerns."""
    workdir, _ = training_demo

    def planned(changes: dict) -> set[str]:
        config = write_config(workdir / "variants" / str(abs(hash(str(changes)))), variant(TRAINING_DEMO, changes))
        return planned_jobs(snakemake(workdir, "--configfile", str(config), "-n").stdout)

    reports = {"metrics", "provenance", "patient_report", "summary", "report_site", "all"}
    cam_method = planned({"cam": {"method": "layercam"}})
    assert set(cam_method) == {"cam", "lesions", "localisation"} | reports and cam_method["cam"] == 9
    assert planned({"cam": {"shifts": 1}}) == cam_method
    assert set(planned({"report": {"bootstrap": 300}})) == reports | {"classification_metrics"}
    added = planned({"demo": {"scout_only": 2}})  # one more patient (whose study holds only a localizer)
    assert added["phantom"] == 1 and added["ingest"] == 1 and added["train_fold"] == 3 and added["summary"] == 1
    assert "nifti" not in added  # nobody else is converted again


@pytest.fixture()
def mixed_cohort(small_cohort, data, tmp_path):
    """Sample sheet: the synthetic patients plus three bad ones."""
    root, plans = small_cohort
    bad = tmp_path / "bad"
    (bad / "empty").mkdir(parents=True)
    scout = bad / "scout"
    scout.mkdir()
    for path in sorted((root / "dicom" / plans[0].patient_id).iterdir())[:5]:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.StudyInstanceUID = ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["scout"])  # another patient's study
        ds.save_as(scout / path.name)
    rows = ["patient_id\tlabel\tdicom_dir"]
    rows += [f"{p.patient_id}\t{p.label}\t{root / 'dicom' / p.patient_id}" for p in plans[:2]]
    rows += [f"bad-empty\tNP\t{bad / 'empty'}", f"bad-scout\tCAP\t{scout}", f"bad-head\tNP\t{data / 'dcm-qa-ct' / 'GE'}"]
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet, plans, root


@pytest.mark.slow
def test_bad_patients_are_excluded_and_the_cohort_continues(mixed_cohort, tmp_path):
    sheet, plans, root = mixed_cohort
    work = tmp_path / "run"
    snakemake(work, "prepare", "--config", f"samples={sheet}", NO_PRIOR)
    qc = {p.name[:-5]: read_record(p) for p in (work / "results" / "qc").glob("*.json")}
    assert {pid for pid, r in qc.items() if r["status"] == "ok"} == {p.patient_id for p in plans[:2]}
    assert qc["bad-empty"]["reasons"] == ["ingest: the DICOM folder is empty"]
    assert qc["bad-scout"]["reasons"] == ["ingest: only localizer (scout) images, no axial CT series"]
    assert qc["bad-head"]["reasons"] == ["ingest: not a chest CT (BodyPartExamined 'HEAD')"]
    assert qc["bad-head"]["ingest"]["header"]["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.2)
    published = sorted(p.name for p in (work / "results" / "nifti").glob("*.nii.gz"))
    assert published == sorted(f"{p.patient_id}.nii.gz" for p in plans[:2])
    assert sorted(p.name for p in (work / "results" / "lungs").glob("*.nii.gz")) == published
    assert sorted(p.name for p in (work / "work" / "cache").iterdir()) == sorted(p.patient_id for p in plans[:2])
    cohort = pd.read_csv(work / "results" / "cohort_qc.tsv", sep="\t", keep_default_na=False).set_index("patient_id")
    assert cohort.loc["bad-scout", "status"] == "excluded" and cohort.loc["bad-scout", "reasons"] == qc["bad-scout"]["reasons"][0]
    assert set(cohort.index) == set(qc) and (cohort.loc[[p.patient_id for p in plans[:2]], "status"] == "ok").all()
    for plan in plans[:2]:
        assert qc[plan.patient_id]["stages"] == {"ingest": "ok", "lungs": "ok"}
        assert qc[plan.patient_id]["lungs"]["total_ml"] > 1000

    # Nothing changed: nothing to do. One patient added: only that patient is converted, and the
    # QC folder (one job's output) is written anew with the others' records unchanged.
    assert "Nothing to be done" in snakemake(work, "prepare", "--config", f"samples={sheet}", NO_PRIOR, "-n").stdout
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
    records_before = {p.name: p.read_bytes() for p in (work / "results" / "qc").glob("*.json")}
    new = plans[2]
    with open(sheet, "a") as handle:
        handle.write(f"{new.patient_id}\t{new.label}\t{root / 'dicom' / new.patient_id}\n")
    dry = snakemake(work, "prepare", "--config", f"samples={sheet}", NO_PRIOR, "-n").stdout
    assert planned_jobs(dry)["ingest"] == 1 and f"patient={new.patient_id}" in dry
    snakemake(work, "prepare", "--config", f"samples={sheet}", NO_PRIOR)
    after = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
    assert {p for p in after if before.get(p) != after[p] and p.parent.name != "qc"} == {
        work / "results" / "nifti" / f"{new.patient_id}.nii.gz",
        work / "results" / "nifti" / f"{new.patient_id}.json",
        work / "results" / "lungs" / f"{new.patient_id}.nii.gz",
        work / "results" / "lungs" / f"{new.patient_id}.png",
        work / "results" / "cohort_qc.tsv",
    }
    records_after = {p.name: p.read_bytes() for p in (work / "results" / "qc").glob("*.json")}
    assert set(records_after) == set(records_before) | {f"{new.patient_id}.json"}
    assert all(records_after[name] == record for name, record in records_before.items())


def test_sample_sheet_error_stops_before_any_job(tmp_path):
    (tmp_path / "p1").mkdir()
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("patient_id\tlabel\tdicom_dir\nP1\tFLU\tp1\n../x\tNP\tp1\n")
    result = snakemake(tmp_path / "run", "--config", f"samples={sheet}", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "line 2 (patient_id 'P1'): unknown label 'FLU'" in output
    assert "line 3 (patient_id '../x'): patient_id: '../x' does not match" in output
    assert not (tmp_path / "run" / "results").exists()


@pytest.mark.slow
def test_lungmask_method_with_weights_from_the_download_rule(tmp_path):
    """lungs.method lungmask: the download rule fetches the weights (a file:// URL here), then
    the lungs rule runs lungmask and writes both lungs, on the scan's grid, on the right sides."""
    import os

    import nibabel as nib
    from nibabel.processing import resample_from_to

    from .conftest import write_painted_study
    from .lungmask_weights import write_weights

    write_painted_study(tmp_path / "in" / "dicom", tmp_path / "in" / "truth.nii.gz")
    weights = write_weights(tmp_path / "release")
    sheet = tmp_path / "in" / "patients.tsv"
    sheet.write_text(f"patient_id\tlabel\tdicom_dir\nP1\tNP\t{tmp_path / 'in' / 'dicom'}\n")
    config = write_config(
        tmp_path / "run",
        {
            "samples": str(sheet),
            "lungs": {"method": "lungmask", "lungmask": {"weights_url": weights.as_uri(), "force_cpu": True}},
        },
    )
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}  # no torch hub cache to fall back on
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path / "run"),
        "--cores",
        "2",
        "prepare",
        "--configfile",
        str(config),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "run" / "resources" / "lungmask" / weights.name).read_bytes() == weights.read_bytes()
    volume = nib.load(tmp_path / "run" / "results" / "nifti" / "P1.nii.gz")
    labels = nib.load(tmp_path / "run" / "results" / "lungs" / "P1.nii.gz")
    assert labels.shape == volume.shape and np.allclose(labels.affine, volume.affine)
    truth = np.asarray(resample_from_to(nib.load(tmp_path / "in" / "truth.nii.gz"), volume, order=0).dataobj)
    found = np.asarray(labels.dataobj)
    for side in (1, 2):
        overlap = ((found == side) & (truth == side)).sum()
        assert 2 * overlap / ((found == side).sum() + (truth == side).sum()) > 0.9
    assert read_record(tmp_path / "run" / "results" / "qc" / "P1.json")["lungs"]["method"] == "lungmask R231"


@pytest.mark.slow
def test_prediction_mode_on_the_real_covid_ct_md_cases(data, tmp_path):
    """A model file (untrained here: the figures do not matter, the chain does) applied to the
    real COVID-19, CAP and normal scans: predictions, heatmaps, lesion tables, and the slice-level
    AUC against the radiologists' slice labels."""
    model_file = write_untrained_model(tmp_path / "model.pt", dropout=0.5)
    cases = {"P001": "COVID-19", "cap001": "CAP", "normal001": "NP"}
    sheet = tmp_path / "patients.tsv"
    sheet.write_text(
        "patient_id\tlabel\tdicom_dir\n" + "".join(f"{p}\t{label}\t{data / 'covid-ct-md' / p}\n" for p, label in cases.items())
    )
    config = write_config(
        tmp_path / "run",
        {
            "samples": str(sheet),
            "mode": "predict",
            "predict": {"model": str(model_file)},
            "cam": {"slice_labels": str(data / "covid-ct-md" / "slice_labels.tsv")},
            "lungs": {"prior": {"use": False}},
        },
    )
    snakemake(tmp_path / "run", "--configfile", str(config))
    results = tmp_path / "run" / "results"
    predictions = pd.read_csv(results / "predictions.tsv", sep="\t")
    assert sorted(predictions["patient_id"]) == sorted(cases) and set(predictions["fold"]) == {"predict"}
    for patient in cases:
        cam = nib.load(results / "cam" / f"{patient}.nii.gz")
        assert cam.shape == nib.load(results / "nifti" / f"{patient}.nii.gz").shape
        assert list(pd.read_csv(results / "lesions" / f"{patient}.tsv", sep="\t").columns) == LESION_COLUMNS
    labelled = json.loads((results / "localisation.json").read_text())["slice_labels"]
    assert labelled["patients"] == 2 and set(labelled["auc_per_patient"]) == {"P001", "cap001"}
    assert 0.0 <= labelled["auc_pooled"] <= 1.0 and labelled["slices"] > 100
