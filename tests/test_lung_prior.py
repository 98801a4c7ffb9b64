"""The learned lung prior: its training data, fitting, weights file and how it completes a mask."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.nn import functional

from lungcam.core.records import read_record
from lungcam.ingest.stage import VOLUME_NAME, ingest_patient
from lungcam.lungs.prior import (
    LungPriorMissing,
    LungPriorNet,
    PriorSettings,
    load_prior,
    predict_prior,
    refine,
    save_prior,
    trained_on,
    windowed,
)
from lungcam.lungs.prior_training import PriorTraining, case_slices, epoch_slices, train_prior, training_plans, training_slices
from lungcam.lungs.stage import LungSettings, run_lungs, segment
from lungcam.phantom import cohort_layout, plan_cohort
from lungcam.phantom.generate import PhantomOptions, generate_patient

from .conftest import lobar_consolidation, snakemake, without_margin, write_config

TINY = {
    "seeds": [11],
    "patients_per_class": 1,
    "background": "",
    "matrix": 128,
    "slice_step": 1,
    "size": 64,
    "channels": 8,
    "epochs": 12,
    "batch_size": 8,
    "learning_rate": 0.003,
    "lesion_weight": 4.0,
}


@pytest.fixture(scope="module")
def tiny() -> PriorTraining:
    return PriorTraining.from_config(TINY)


def test_refine_adds_the_prior_regions_that_touch_the_mask_with_the_prior_side():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[:, 2:5, 1:4] = 1
    prior = np.zeros_like(labels)
    prior[:, 2:8, 1:4] = 2  # touches the right lung from below; the prior says left
    prior[:, 0, 8:] = 1  # a region apart from the mask
    prior[:, 1, 1:4] = 1  # a rim one pixel wide
    refined = refine(labels, prior, (1.0, 1.0, 1.0), 2.0)
    assert (refined[:, 2:5, 1:4] == 1).all()  # the classical labels stay as they were
    assert (refined[:, 5:8, 1:4] == 2).all()
    assert not refined[:, 0, 8:].any()
    assert not refined[:, 1].any()
    assert refine(labels, np.zeros_like(labels), (1.0, 1.0, 1.0), 2.0) is labels


def test_the_prior_labels_the_scan_grid_where_lung_is_likelier_by_the_margin():
    model = LungPriorNet(4)
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    model.head.bias.data = torch.tensor([0.0, 2.0, 1.0])  # right lung, log-odds 2 against background
    hu = np.full((3, 40, 50), -800.0)
    for margin, expected in ((0.0, 1), (1.5, 1), (2.5, 0)):
        labels = predict_prior(hu, model.eval(), 32, margin)
        assert labels.shape == hu.shape and (labels == expected).all()


def test_the_prior_resized_near_its_lungs_only_matches_the_whole_grid():
    torch.manual_seed(0)
    model = LungPriorNet(4).eval()
    hu = np.random.default_rng(0).uniform(-1000, 200, (5, 45, 70))
    with torch.inference_mode():
        scores = model(windowed(hu, 32))
        whole = functional.interpolate(scores, size=hu.shape[1:], mode="bilinear", align_corners=False).numpy()
        coarse = (torch.maximum(scores[:, 1], scores[:, 2]) - scores[:, 0]).numpy()
    margin = float(np.quantile(coarse, 0.97))  # lung in a few patches of the network's grid
    lung = np.maximum(whole[:, 1], whole[:, 2]) - whole[:, 0] > margin
    expected = np.where(lung, np.where(whole[:, 1] >= whole[:, 2], 1, 2), 0)
    labels = predict_prior(hu, model, 32, margin, batch=2)
    assert 0 < (expected > 0).mean() < 0.2
    assert (labels == expected).all()


def test_case_slices_hold_the_lungs_with_lesions_on_their_sides(tmp_path, ingest_settings, tiny):
    plan = next(p for p in plan_cohort(1, 11, ("COVID-19", "CAP", "NP")) if p.label == "CAP")
    paths = cohort_layout(tmp_path, plan.patient_id)
    generate_patient(plan, PhantomOptions(128, False, False), paths["dicom"], paths["lungs"], paths["lesions"])
    ingest_patient(plan.patient_id, paths["dicom"], tmp_path / "stage", ingest_settings)
    volume = tmp_path / "stage" / VOLUME_NAME
    data = case_slices(volume, paths["lungs"], paths["lesions"], replace(tiny, slice_step=2))
    slices = nib.load(volume).shape[2]
    assert data.inputs.shape == (len(range(0, slices, 2)), 64, 64) == data.targets.shape == data.lesions.shape
    assert 0.0 <= data.inputs.min() and data.inputs.max() <= 1.0
    assert data.lesions.any() and (data.targets[data.lesions] > 0).all()  # every lesion pixel is lung
    columns = np.arange(64)
    right, left = ((data.targets == side).sum(axis=(0, 1)) @ columns / (data.targets == side).sum() for side in (1, 2))
    assert right < 32 < left  # LPS order: the patient's right lung at the low x


@pytest.fixture(scope="module")
def consolidated(real_masks, tiny, tmp_path_factory):
    """normal001 with its right upper lobe consolidated, and a prior fitted to its true lungs."""
    hu, labels, spacing = real_masks["normal001"]
    image, lesion = lobar_consolidation(hu, labels, spacing, side=1)
    truth = labels.copy()
    truth[lesion] = 1
    data = training_slices(image, truth, lesion, tiny.size)
    weights = tmp_path_factory.mktemp("prior") / "prior.pt"
    save_prior(train_prior(data, tiny), tiny.size, weights, {"test": "normal001 consolidated"})
    return image, lesion, truth, spacing, weights


def test_a_fitted_prior_restores_the_lung_the_classical_method_leaves_out(consolidated, config):
    image, lesion, truth, spacing, weights = consolidated
    settings = without_margin(LungSettings.from_config(config["lungs"]))  # the prior alone
    # The tiny prior's light lesion weight needs no log-odds margin, and its 64 px outline strays
    # from the lungs by up to one of its pixels (about 5.5 mm), which min_width_mm must exceed.
    settings = replace(settings, prior=replace(settings.prior, min_log_odds=0.0, min_width_mm=8.0))
    classical = segment(image, spacing, settings)[0]
    refined = segment(image, spacing, settings, prior=weights)[0]
    prior = predict_prior(image, *load_prior(weights), settings.prior.min_log_odds)
    dice = 2 * ((prior == truth) & (truth > 0)).sum() / ((prior > 0).sum() + (truth > 0).sum())
    assert dice >= 0.85  # the network reproduces the lungs, each on its side, back on the scan's grid
    missed, still_missed = ((found[lesion] == 0).mean() for found in (classical, refined))
    assert missed > 0.1 and still_missed <= missed / 2
    assert (refined[classical > 0] == classical[classical > 0]).all()
    # The tiny prior's outline (64 px) is coarse where consolidation meets the chest wall.
    outside_ml = ((refined > 0) & (truth == 0)).sum() * np.prod(spacing) / 1000
    assert outside_ml <= 0.15 * lesion.sum() * np.prod(spacing) / 1000


def test_the_lung_record_names_the_prior(consolidated, real_ingest, config, tmp_path):
    weights = consolidated[-1]
    volume = real_ingest[0] / "normal001" / VOLUME_NAME
    outputs = {"labels": tmp_path / "l.nii.gz", "montage": tmp_path / "l.png", "record": tmp_path / "l.json"}
    settings = LungSettings.from_config(config["lungs"])
    record = run_lungs("normal001", volume, outputs, settings, prior=weights)
    assert record["method"] == "threshold + learned prior"
    # Which weights made the mask: retrained weights differ, and so does the checksum.
    assert record["weights"] == {"prior": {"file": Path(weights).name, "sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest()}}
    assert run_lungs("normal001", volume, outputs, settings)["weights"] == {}


def test_each_epoch_sees_every_lesion_slice_and_as_many_others():
    lesions = torch.zeros((10, 4, 4), dtype=torch.bool)
    lesions[[1, 4, 7], 2, 2] = True
    generator = torch.Generator().manual_seed(0)
    epochs = [epoch_slices(lesions.any(dim=(1, 2)), generator).tolist() for _ in range(4)]
    for chosen in epochs:
        assert len(chosen) == len(set(chosen)) == 6 and {1, 4, 7} <= set(chosen)
    assert len({tuple(sorted(chosen)) for chosen in epochs}) > 1  # the lesion-free ones are drawn anew
    assert sorted(epoch_slices(torch.zeros(5, dtype=torch.bool), generator).tolist()) == list(range(5))


def test_training_plans_are_one_cohort_per_seed_and_background(tiny):
    plans = training_plans(replace(tiny, seeds=[11, 12], background="normal"), ("COVID-19", "CAP", "NP"))
    assert len(plans) == 2 * 2 * 3 and len({plan.patient_id for plan, _ in plans}) == len(plans)
    assert {plan.seed for plan, _ in plans} == {11, 12} and sum(background == "normal" for _, background in plans) == 6


def test_training_is_reproducible(tiny, real_masks):
    hu, labels, _ = real_masks["normal001"]
    data = training_slices(hu[::8], labels[::8], labels[::8] > 0, 32)
    settings = replace(tiny, size=32, epochs=1)
    first, second = (train_prior(data, settings).state_dict() for _ in range(2))
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)


def test_missing_prior_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(LungPriorMissing, match="snakemake train_lung_prior"):
        PriorSettings(use=True, weights=str(tmp_path / "none.pt"), min_log_odds=3.0, min_width_mm=4.0).require()


@pytest.mark.slow
def test_the_workflow_trains_the_prior_once_and_the_lungs_use_it(tmp_path):
    train = {**TINY, "slice_step": 4, "epochs": 1}
    demo = {"patients_per_class": 1, "matrix": 128, "localizer": False, "thick_series": False, "scout_only": 0}
    config = write_config(tmp_path, {"demo": demo, "lungs": {"prior": {"train": train}}})
    snakemake(tmp_path, "prepare", "results/provenance.json", "--configfile", str(config))
    weights = tmp_path / "resources" / "lung_prior.pt"
    assert trained_on(weights)["patients"] == 3
    records = [read_record(p) for p in (tmp_path / "work" / "lungs").glob("*.json")]
    assert len(records) == 3 and {r["method"] for r in records} == {"threshold + learned prior"}
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {r["weights"]["prior"]["sha256"] for r in records} == {digest}
    provenance = read_record(tmp_path / "results" / "provenance.json")
    assert provenance["inputs"]["lung_weights"] == {"prior": {"path": "resources/lung_prior.pt", "sha256": digest}}
    assert "Nothing to be done" in snakemake(tmp_path, "prepare", "--configfile", str(config), "-n").stdout
    changed = write_config(tmp_path / "changed", {"demo": demo, "lungs": {"prior": {"train": {**train, "seeds": [12]}}}})
    planned = snakemake(tmp_path, "prepare", "--configfile", str(changed), "-n").stdout
    assert "rule train_lung_prior" in planned and "rule lungs:" in planned


def test_configured_prior_weights_must_exist(tmp_path):
    config = write_config(tmp_path, {"lungs": {"prior": {"weights": str(tmp_path / "missing.pt")}}})
    result = snakemake(tmp_path, "--configfile", str(config), "-n", check=False)
    assert result.returncode != 0 and "snakemake train_lung_prior" in result.stdout + result.stderr
