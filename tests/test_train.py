"""Classifier training: folds, models, loss, aggregation, determinism, resume, data parallel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungcam.core.config import load_config
from lungcam.core.folds import assign_folds, task_classes, validation_split
from lungcam.train.inference import aggregate_slices, bf16_autocast, check_preprocessing, load_model
from lungcam.train.models import AttentionMIL, Hu2020Net, focal_cross_entropy
from lungcam.train.slice_bank import IMAGES_NAME, INDEX_NAME, PREPROCESSING_NAME, SliceBank, bank_preprocessing, zscore
from lungcam.train.training import STATE_NAME, TrainSettings, _weight_average, augment, train_fold, write_curves

from .conftest import REPO

CLASSES = ["COVID-19", "CAP", "NP"]


def toy_bank(folder: Path, per_class: int = 4, slices: int = 6, size: int = 32, seed: int = 0) -> pd.DataFrame:
    """A slice bank of noise images; COVID-19 and CAP patients have a faint or a bright blob."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    patients, images, rows = [], [], []
    yy, xx = np.mgrid[:size, :size]
    for label in CLASSES:
        for i in range(per_class):
            pid = f"{label[:3].lower()}{i}"
            patients.append({"patient_id": pid, "label": label})
            for s in range(slices):
                image = rng.normal(100, 20, (size, size))
                if label != "NP" and s % 2 == 0:
                    cy, cx = rng.integers(6, size - 6, 2)
                    image += (60 if label == "COVID-19" else 140) * (np.hypot(yy - cy, xx - cx) < 4)
                rows.append({"patient_id": pid, "row": len(images), "cache_slice": s})
                images.append(np.clip(image, 0, 255).astype(np.uint8))
    np.save(folder / IMAGES_NAME, np.stack(images))
    pd.DataFrame(rows).to_csv(folder / INDEX_NAME, sep="\t", index=False)
    (folder / PREPROCESSING_NAME).write_text(json.dumps(bank_preprocessing(size, 0.1, {"spacing_mm": [5.0, 2.0, 2.0], "antialias": True})))
    return pd.DataFrame(patients)


def toy_settings(**changes) -> TrainSettings:
    train = load_config()["train"]
    base = TrainSettings.from_config(
        {
            **train,
            "input_size": 32,
            "width": 0.25,
            "learning_rate": 0.003,
            "max_epochs": 4,
            "patience": 10,
            "batch_size": 8,
            "bag_size": 6,
            "workers": 0,
            "device": "cpu",
            "folds": 2,
            "top_k": 2,
            # a few epochs on toy data: validation patients, no weight average (over 8 epochs it
            # would keep the first epochs' weights), as these tests were designed for
            "validation_fraction": 0.15,
            "ema_epochs": 0.0,
            "dropout": 0.5,
            "aggregation": "presence",
        }
    )
    return replace(base, **changes)


def same_weights(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same tensors under the same names."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def outputs(folder: Path) -> dict:
    return {
        k: folder / name
        for k, name in (("model", "model.pt"), ("curves", "curves.tsv"), ("curves_png", "curves.png"), ("predictions", "pred.tsv"))
    }


def test_folds_are_patient_level_and_stratified():
    patients = pd.DataFrame({"patient_id": [f"p{i}" for i in range(30)], "label": CLASSES * 10})
    folds = assign_folds(patients, 5, seed=1)
    assert folds["patient_id"].is_unique  # no patient in two folds
    assert set(folds["fold"]) == set(range(5))
    per_fold = folds.groupby(["fold", "label"]).size().unstack()
    assert (per_fold == 2).all().all()
    assert assign_folds(patients, 5, seed=1).equals(folds)  # reproducible
    train, validation = validation_split(folds[folds["fold"] != 0], 0.15, seed=1, fold=0)
    assert not set(train["patient_id"]) & set(validation["patient_id"])
    assert set(validation["label"]) == set(CLASSES)
    with pytest.raises(ValueError, match="at least 5 patients per class"):
        assign_folds(patients.iloc[:12], 5, seed=1)


def test_tasks():
    assert task_classes("multiclass", CLASSES) == CLASSES
    assert task_classes("covid_vs_np", CLASSES) == ["COVID-19", "NP"]
    assert task_classes("covid_vs_cap", CLASSES) == ["COVID-19", "CAP"]


def test_hu2020_architecture():
    model = Hu2020Net(3)
    convs = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
    maps = model.maps(torch.zeros(2, 1, 224, 224))
    assert [tuple(m.shape) for m in maps] == [(2, 3, 28, 28), (2, 3, 14, 14), (2, 3, 7, 7)]  # pool3, pool4, pool5
    model.eval()
    x = torch.randn(2, 1, 224, 224)
    assert torch.allclose(model(x), model.scale_logits(x).mean(0))


def test_mil_attention_pools_slice_logits():
    model = AttentionMIL(3, width=0.25).eval()
    bag = torch.randn(5, 1, 64, 64)
    logits, attention = model.bag_scale_logits(bag)
    assert logits.shape == (3, 3) and attention.shape == (5,)
    assert torch.isclose(attention.sum(), torch.tensor(1.0))
    slice_logits = model.slices.scale_logits(bag)
    assert torch.allclose(logits, torch.einsum("s,ksc->kc", attention, slice_logits), atol=1e-5)
    # Several bags in one batch: each pooled over its own slices only.
    second = torch.randn(3, 1, 64, 64)
    both = model.bags_scale_logits(torch.cat([bag, second]), torch.tensor([7, 7, 7, 7, 7, 2, 2, 2]))
    assert both.shape == (3, 2, 3)
    assert torch.allclose(both[:, 0], logits, atol=1e-5) and torch.allclose(both[:, 1], model.bag_scale_logits(second)[0], atol=1e-5)


def test_focal_loss():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    alpha = torch.tensor([1.0, 2.0, 3.0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    p = torch.exp(-ce)
    expected = (alpha[target] * (1 - p) * ce).mean()
    assert torch.isclose(focal_cross_entropy(logits, target, alpha, gamma=1.0), expected)
    assert torch.isclose(focal_cross_entropy(logits, target, alpha, gamma=0.0), (alpha[target] * ce).mean())


def test_aggregation():
    slices = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    classes = ["COVID-19", "CAP"]  # no NP: presence is topk_mean
    assert np.allclose(aggregate_slices(slices, "topk_mean", 2, classes), np.array([0.75, 0.65]) / 1.4)
    assert np.allclose(aggregate_slices(slices, "presence", 2, classes), np.array([0.75, 0.65]) / 1.4)
    assert np.allclose(aggregate_slices(slices, "mean", 2, classes), [0.55, 0.45])
    assert np.allclose(aggregate_slices(slices, "max", 2, classes), np.array([0.9, 0.8]) / 1.7)


def test_presence_aggregation_takes_np_for_the_absence_of_lesions():
    # A COVID-19 scan: two lesion slices and three normal ones.
    covid = np.array([[0.8, 0.1, 0.1], [0.7, 0.1, 0.2], [0.1, 0.05, 0.85], [0.1, 0.05, 0.85], [0.1, 0.1, 0.8]])
    classes = ["COVID-19", "CAP", "NP"]
    per_class = aggregate_slices(covid, "topk_mean", 2, classes)
    assert per_class.argmax() == 2  # its normal slices outvote the lesions
    presence = aggregate_slices(covid, "presence", 2, classes)
    assert presence.sum() == pytest.approx(1.0) and presence.argmax() == 0
    assert presence[2] == pytest.approx(1 - np.mean([0.9, 0.8]))  # 1 - the two most lesion-like slices' 1 - p(NP)
    assert presence[0] / presence[1] == pytest.approx(0.75 / 0.1)  # the kinds share the rest as their top-2 means
    assert np.allclose(aggregate_slices(covid[:, [2, 0]], "presence", 2, ["NP", "COVID-19"]), [0.15, 0.85])  # NP first, two classes


def test_topk_mean_suits_a_model_whose_normal_slices_carry_the_training_prior():
    """Trained to convergence on inherited labels, a lesion-free slice gets each class's share of
    the lesion-free training slices (NP about a half). topk_mean then keeps a normal scan NP and
    a scan with lesions its lesion class, while presence finds pneumonia in the normal scan."""
    normal = np.vstack([np.tile([0.25, 0.25, 0.5], (35, 1)), np.tile([0.2, 0.45, 0.35], (5, 1))])  # 5 a little CAP-like
    covid = np.vstack([normal[5:], np.tile([0.95, 0.03, 0.02], (10, 1))])
    classes = ["COVID-19", "CAP", "NP"]
    assert aggregate_slices(normal, "topk_mean", 5, classes).argmax() == 2
    assert aggregate_slices(covid, "topk_mean", 5, classes).argmax() == 0
    assert aggregate_slices(normal, "presence", 5, classes).argmax() != 2


def test_zscore_per_slice():
    batch = torch.stack([torch.full((8, 8), 10, dtype=torch.uint8), torch.arange(64, dtype=torch.uint8).reshape(8, 8)])
    z = zscore(batch)
    assert z.shape == (2, 1, 8, 8)
    assert torch.allclose(z[1].mean(), torch.tensor(0.0), atol=1e-6) and torch.allclose(z[1].std(), torch.tensor(1.0), atol=1e-4)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bank")
    patients = assign_folds(toy_bank(folder), 2, seed=3)
    patients.to_csv(folder / "folds.tsv", sep="\t", index=False)
    return folder, patients


@pytest.mark.parametrize("model", ["hu2020", "mil"])
def test_training_is_deterministic_on_cpu(bank, tmp_path, model):
    folder, patients = bank
    settings = toy_settings(model=model, max_epochs=2)
    results = [train_fold(settings, CLASSES, folder, patients, 0, tmp_path / run, outputs(tmp_path / run)) for run in ("a", "b")]
    pd.testing.assert_frame_equal(results[0], results[1])
    weights = [torch.load(tmp_path / run / "model.pt", weights_only=True)["state_dict"] for run in ("a", "b")]
    assert same_weights(weights[0], weights[1])
    assert set(results[0]["patient_id"]) == set(patients.loc[patients["fold"] == 0, "patient_id"])
    assert list(results[0].columns) == ["patient_id", "label", "fold", "prob_COVID-19", "prob_CAP", "prob_NP", "predicted"]
    curves = pd.read_csv(tmp_path / "a" / "curves.tsv", sep="\t")
    assert list(curves["epoch"]) == [0, 1] and (tmp_path / "a" / "curves.png").stat().st_size > 5000


@pytest.mark.parametrize("model, epochs", [("hu2020", 12), ("mil", 60)])
def test_training_learns_a_visible_signal(tmp_path, model, epochs):
    """Out of fold, both models tell bright-blob, faint-blob and blob-free patients apart well
    above chance (1/3) on a toy bank; a model that does not learn fails this."""
    folder = tmp_path / "bank"
    patients = assign_folds(toy_bank(folder, per_class=6, slices=8), 2, seed=3)
    settings = toy_settings(model=model, max_epochs=epochs, augment=False, patience=epochs)
    predictions = pd.concat(
        [train_fold(settings, CLASSES, folder, patients, fold, tmp_path / str(fold), outputs(tmp_path / str(fold))) for fold in (0, 1)]
    )
    assert (predictions["predicted"] == predictions["label"]).mean() >= 0.6


def _detail(images: torch.Tensor) -> torch.Tensor:
    """Energy of each image's finest detail (a discrete Laplacian), per image."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(images, kernel)[..., 8:-8, 8:-8].pow(2).mean(dim=(1, 2, 3))


def test_augmentation_blurs_and_sharpens_and_treats_a_bag_alike():
    """Sharpness is drawn from a blur to as much unsharp masking, so that a scan's kernel and
    slice thickness tell nothing of its class; a bag's slices (one patient) share every draw."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    slice_ = (torch.sin(xx / 2.0) * torch.cos(yy / 3.0)).view(1, 1, 48, 48)
    slice_ = (slice_ - slice_.mean()) / slice_.std()
    ratios = _detail(augment(slice_.repeat(200, 1, 1, 1))) / _detail(slice_)
    assert ratios.min() < 0.5 and ratios.max() > 1.5  # smoother and sharper than the slice itself
    bags = augment(slice_.repeat(6, 1, 1, 1), torch.tensor([4, 4, 4, 9, 9, 9]))
    within = (bags[0] - bags[1]).std()  # the same transform, only the noise differs
    assert within < 0.2 and (bags[0] - bags[3]).std() > 2 * within


@pytest.mark.parametrize("steps_per_epoch", [5, 50])
def test_the_weight_average_spans_its_epochs_whatever_the_steps(steps_per_epoch):
    """ema_epochs is a horizon in epochs: weights that jumped from 0 to 1 have moved the average
    about 1 - 1/e of the way after that many epochs, for few large steps (mil) or many small
    ones (hu2020) alike; batch-norm statistics are averaged too."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    torch.nn.init.zeros_(model[0].weight)
    averaged, update = _weight_average(model, 2.0)
    averaged.update_parameters(model)  # the first update copies the weights
    update.steps_per_epoch = steps_per_epoch
    torch.nn.init.ones_(model[0].weight)
    model[1].running_mean.fill_(1.0)
    for _ in range(2 * steps_per_epoch):
        averaged.update_parameters(model)
    assert averaged.module[0].weight.item() == pytest.approx(1 - np.exp(-1), abs=0.04)
    assert averaged.module[1].running_mean.item() == pytest.approx(averaged.module[0].weight.item())
    assert _weight_average(model, 0.0) == (None, None)


def test_without_validation_every_training_patient_trains_and_the_last_epoch_is_kept(bank, tmp_path):
    """validation_fraction 0: no patient is held out of training, none stops it early, and the
    model kept is the last epoch's (here the weight average's)."""
    folder, patients = bank
    settings = toy_settings(max_epochs=3, patience=1, validation_fraction=0.0, ema_epochs=1.0)
    train_fold(settings, CLASSES, folder, patients, 0, tmp_path, outputs(tmp_path))
    curves = pd.read_csv(tmp_path / "curves.tsv", sep="\t")
    assert list(curves["epoch"]) == [0, 1, 2] and curves["val_loss"].isna().all()
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["best_epoch"] == 2 and set(payload["trained_on"]) == set(patients.loc[patients["fold"] != 0, "patient_id"])
    state = torch.load(tmp_path / STATE_NAME, weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["averaged"].items() if k.startswith("module.")}
    assert same_weights(payload["state_dict"], averaged) and not same_weights(payload["state_dict"], state["model"])
    train, validation = validation_split(patients[patients["fold"] != 0], 0.0, seed=1, fold=0)
    assert validation.empty and len(train) == (patients["fold"] != 0).sum()


def test_amp_trains_in_bf16_where_the_cpu_computes_it(bank, tmp_path):
    """train.amp asks for bf16 autocast: always on CUDA, on a CPU only where oneDNN computes bf16
    natively (emulated it would be slower than float32). Where it does, the weights differ from a
    float32 run's, so the setting reaches training; the determinism and resume tests above and
    below run with it."""
    assert bf16_autocast(True, torch.device("cuda")) and not bf16_autocast(False, torch.device("cuda"))
    assert not bf16_autocast(False, torch.device("cpu"))
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16_autocast(True, torch.device("cpu")) == native
    folder, patients = bank
    for amp in (True, False):
        train_fold(toy_settings(amp=amp, max_epochs=1), CLASSES, folder, patients, 0, tmp_path / str(amp), outputs(tmp_path / str(amp)))
    weights = [torch.load(tmp_path / str(amp) / "model.pt", weights_only=True)["state_dict"] for amp in (True, False)]
    assert same_weights(weights[0], weights[1]) != native


def test_model_file_carries_what_prediction_needs(bank, tmp_path):
    folder, patients = bank
    train_fold(toy_settings(max_epochs=1), CLASSES, folder, patients, 1, tmp_path, outputs(tmp_path))
    model, metadata = load_model(tmp_path / "model.pt")
    assert metadata["classes"] == CLASSES and metadata["model"] == "hu2020" and metadata["fold"] == 1
    assert metadata["preprocessing"]["input_size"] == 32 and metadata["settings"]["top_k"] == 2
    assert metadata["code_version"] and set(metadata["trained_on"]) == set(patients.loc[patients["fold"] == 0, "patient_id"])
    assert metadata["preprocessing"] == SliceBank.load(folder).preprocessing
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # a model from before cache.antialias
    del payload["preprocessing"]["cache"]["antialias"]
    torch.save(payload, tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt")[1]["preprocessing"]["cache"]["antialias"] is False  # its slices were sampled so


def test_final_model_trains_on_every_patient(bank, tmp_path, caplog, monkeypatch):
    folder, patients = bank
    monkeypatch.setattr("lungcam.train.training.PROGRESS_SECONDS", 0.0)  # every step logs its progress
    with caplog.at_level("INFO", logger="lungcam.train.training"):
        predictions = train_fold(toy_settings(max_epochs=2), CLASSES, folder, patients, "final", tmp_path, outputs(tmp_path))
    assert "fold final epoch 1/2, step 2/" in caplog.text and "fold final epoch 2/2: train loss" in caplog.text
    assert "ETA 0 min at most" in caplog.text
    _, metadata = load_model(tmp_path / "model.pt")
    assert metadata["fold"] == "final" and set(metadata["trained_on"]) == set(patients["patient_id"])
    assert predictions.empty and not (tmp_path / "pred.tsv").exists()


def test_a_model_refuses_slices_prepared_differently():
    prepared = bank_preprocessing(64, 0.25, {"spacing_mm": [5.0, 2.0, 2.0]})
    check_preprocessing(prepared, bank_preprocessing(64, 0.25, {"spacing_mm": [5.0, 2.0, 2.0]}))
    with pytest.raises(ValueError, match=r"input_size: model 64, slices 128"):
        check_preprocessing(prepared, bank_preprocessing(128, 0.25, {"spacing_mm": [5.0, 2.0, 2.0]}))


def cli_command(folder: Path, out: Path, settings: TrainSettings, fold: str = "0") -> list[str]:
    return [
        "-m",
        "lungcam.cli",
        "train-fold",
        "--bank",
        str(folder),
        "--folds",
        str(folder / "folds.tsv"),
        "--fold",
        fold,
        "--work",
        str(out / "work"),
        "--model",
        str(out / "model.pt"),
        "--curves",
        str(out / "curves.tsv"),
        "--curves-png",
        str(out / "curves.png"),
        "--predictions",
        str(out / "pred.tsv"),
        "--settings",
        json.dumps(asdict(settings)),
        "--classes",
        json.dumps(CLASSES),
    ]


@pytest.mark.parametrize("ema_epochs", [0.0, 1.5])
def test_killed_training_resumes_to_the_same_result(bank, tmp_path, ema_epochs):
    """Kill training after its second epoch checkpoint, restart it: same weights and predictions
    (with a weight average too: it is part of the checkpoint)."""
    folder, patients = bank
    settings = toy_settings(model="hu2020", max_epochs=5, ema_epochs=ema_epochs)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, *cli_command(folder, tmp_path / "whole", settings)], check=True, env=env, capture_output=True)
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, *cli_command(folder, interrupted, settings)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = interrupted / "work" / STATE_NAME
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model.pt").exists()  # it really was stopped before the end
    subprocess.run([sys.executable, *cli_command(folder, interrupted, settings)], check=True, env=env, capture_output=True)
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(interrupted / "model.pt", weights_only=True)["state_dict"]
    assert same_weights(whole, resumed)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "pred.tsv", sep="\t"), pd.read_csv(interrupted / "pred.tsv", sep="\t"))
    history = pd.read_csv(interrupted / "curves.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(5))


def _moved_patients(patients: pd.DataFrame) -> pd.DataFrame:
    """The same patients with one COVID-19 patient of each fold swapped into the other fold."""
    moved = patients.copy()
    covid = moved.index[moved["label"] == "COVID-19"]
    first = {f: next(i for i in covid if moved.at[i, "fold"] == f) for f in (0, 1)}
    moved.loc[first[0], "fold"], moved.loc[first[1], "fold"] = 1, 0
    return moved


@pytest.mark.parametrize("change", ["settings", "patients"])
def test_a_changed_run_trains_afresh_beside_an_old_checkpoint(bank, tmp_path, change):
    """Snakemake reruns training after a change of settings or patients, and the old run's
    checkpoint is still in the work folder: the new run must give what it gives in an empty
    folder, not resume (or return) the old, finished training."""
    folder, patients = bank
    old_settings = toy_settings(max_epochs=2)
    new_settings = toy_settings(max_epochs=2, learning_rate=0.01) if change == "settings" else old_settings
    new_patients = _moved_patients(patients) if change == "patients" else patients
    train_fold(old_settings, CLASSES, folder, patients, 0, tmp_path / "reused", outputs(tmp_path / "reused"))
    rerun = train_fold(new_settings, CLASSES, folder, new_patients, 0, tmp_path / "reused", outputs(tmp_path / "reused"))
    fresh = train_fold(new_settings, CLASSES, folder, new_patients, 0, tmp_path / "fresh", outputs(tmp_path / "fresh"))
    pd.testing.assert_frame_equal(rerun, fresh)
    reused = torch.load(tmp_path / "reused" / "model.pt", weights_only=True)
    expected = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)
    assert reused["trained_on"] == expected["trained_on"]
    assert same_weights(reused["state_dict"], expected["state_dict"])


@pytest.mark.slow
def test_data_parallel_training_with_two_processes(bank, tmp_path):
    """torchrun with two CPU processes (gloo backend) trains one model together."""
    folder, patients = bank
    settings = toy_settings(max_epochs=2, gpus=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *cli_command(folder, tmp_path, settings)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model, metadata = load_model(tmp_path / "model.pt")
    assert len(pd.read_csv(tmp_path / "pred.tsv", sep="\t")) == (patients["fold"] == 0).sum()
    curves = pd.read_csv(tmp_path / "curves.tsv", sep="\t")
    steps_one_process = int(np.ceil(len(SliceBank.load(folder).images) / 2 / 8))  # rough: half the patients train
    assert curves["steps"].iloc[0] < steps_one_process  # each process took only part of the batches


class _RunsCode:
    """Pickles as a call of Path.touch(marker): what a crafted file could run when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_model_or_checkpoint_file_with_a_pickled_callable_is_refused(bank, tmp_path, caplog):
    """Model files are read when the workflow is planned (mode predict) and checkpoints when
    training resumes: loading must never run code that a file carries."""
    from lungcam.train.inference import FORMAT, UnsafeFileError, read_model_metadata

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "preprocessing": {"cache": {}}, "payload": _RunsCode(marker)}, crafted)
    for load in (read_model_metadata, load_model):
        with pytest.raises(UnsafeFileError, match="was refused: it holds more than weights and plain values"):
            load(crafted)
    assert not marker.exists()
    folder, patients = bank
    work = tmp_path / "fold"
    work.mkdir()
    torch.save({"identity": "x", "payload": _RunsCode(marker)}, work / STATE_NAME)
    train_fold(toy_settings(max_epochs=1), CLASSES, folder, patients, 0, work, outputs(work))
    assert not marker.exists() and "was refused" in caplog.text and "training afresh" in caplog.text
    assert load_model(work / "model.pt")[1]["best_epoch"] == 0  # trained from scratch, saved as plain data


def test_a_crafted_model_stops_a_dry_run_before_it_runs_anything(tmp_path):
    from lungcam.train.inference import FORMAT

    from .conftest import snakemake

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "preprocessing": {"cache": {}}, "payload": _RunsCode(marker)}, crafted)
    (tmp_path / "p1").mkdir()
    sheet = tmp_path / "patients.tsv"
    sheet.write_text(f"patient_id\tdicom_dir\nP1\t{tmp_path / 'p1'}\n")
    result = snakemake(
        tmp_path / "run", "--config", f"samples={sheet}", "mode=predict", f"predict={{'model': '{crafted}'}}", "-n", check=False
    )
    assert result.returncode != 0 and "was refused" in result.stdout + result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("validated", [True, False])
def test_training_curves_show_validation_only_when_there_was_some(tmp_path, validated):
    from PIL import Image

    nan = float("nan")
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "val_loss": 0.9 / (e + 1) if validated else nan,
            "val_accuracy": 0.5 if validated else nan,
        }
        for e in range(4)
    ]
    write_curves(history, tmp_path / "curves.tsv", tmp_path / "curves.png", "fold 0")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.width == (900 if validated else 495)  # two panels, or the losses alone
    assert len(pd.read_csv(tmp_path / "curves.tsv", sep="\t")) == 4
