"""Model files, and patient-level predictions from slices.

A model file carries everything needed to use it on another cohort: architecture, class names,
preprocessing (input size, slice selection, cache spacing and window), training settings, the
code version and the patients it was trained on (their pseudonymous ids only).

`hu2020` classifies slices; a patient's prediction aggregates its slice probabilities
(config `train.aggregation`, `aggregate_slices`). `mil` predicts the patient directly from all
its lung slices.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungcam import __version__
from lungcam.core.atomic import atomic_path
from lungcam.core.folds import NO_PNEUMONIA
from lungcam.train.models import build_model
from lungcam.train.slice_bank import SliceBank, zscore

FORMAT = "lungcam-model/1"
AGGREGATIONS = ("presence", "topk_mean", "mean", "max")


def save_model(path: Path | str, model: torch.nn.Module, metadata: dict) -> None:
    """Write a model file: weights and metadata, plain types only (see `load_plain`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "code_version": __version__, **metadata, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class UnsafeFileError(ValueError):
    """A model or checkpoint file holds more than tensors and plain values (it could run code)."""


def load_plain(path: Path | str) -> object:
    """Load a torch file holding only tensors and plain values (dict, list, str, numbers).

    `weights_only=True` refuses any pickled class or callable, so a crafted file cannot run code
    when it is read (model files are read when the workflow is planned in mode predict).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path} was refused: it holds more than weights and plain values, so loading it could run code ({str(exc).splitlines()[0]})"
        ) from exc


def _read_payload(path: Path | str) -> dict:
    """A model file's contents. Models trained before `cache.antialias` existed were trained on
    caches sampled at each voxel's centre, so their preprocessing says so (`antialias` false):
    prediction then prepares slices as they were."""
    payload = load_plain(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lungcam model file ({FORMAT})")
    payload["preprocessing"]["cache"].setdefault("antialias", False)
    return payload


def read_model_metadata(path: Path | str) -> dict:
    """A model file's metadata (classes, settings, preprocessing, ...) without its weights."""
    return {k: v for k, v in _read_payload(path).items() if k != "state_dict"}


def check_preprocessing(model_preprocessing: dict, bank_preprocessing: dict) -> None:
    """Refuse to apply a model to slices prepared differently from those it was trained on."""
    differ = sorted(
        k for k in set(model_preprocessing) | set(bank_preprocessing) if model_preprocessing.get(k) != bank_preprocessing.get(k)
    )
    if differ:
        details = "; ".join(f"{k}: model {model_preprocessing.get(k)!r}, slices {bank_preprocessing.get(k)!r}" for k in differ)
        raise ValueError(f"the slices were not prepared as the model's training slices were ({details})")


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on `device`, metadata) from a model file."""
    payload = _read_payload(path)
    settings = payload["settings"]
    model = build_model(payload["model"], len(payload["classes"]), settings["width"], settings["dropout"])
    model.load_state_dict(payload["state_dict"])
    metadata = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), metadata


def _top_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values of each column."""
    return np.sort(values, axis=0)[-min(k, len(values)) :].mean(axis=0)


def aggregate_slices(probabilities: np.ndarray, method: str, top_k: int, classes: list[str]) -> np.ndarray:
    """One patient's class probabilities from its slices' (slices, classes) probabilities.

    - `presence`: NP is what is left when no slice shows a lesion. The patient's probability of
      pneumonia is the mean of 1 - p(NP) over its `top_k` most lesion-like slices, and the lesion
      classes share it in proportion to the means of their own `top_k` slice probabilities.
      Without an NP class (task covid_vs_cap) it is `topk_mean`. It suits a model stopped early,
      which still calls a normal slice NP: the top of the NP column then looks normal in every
      patient (a COVID-19 or CAP scan has lesion-free slices too), and `topk_mean` would let NP
      compete as if it were a finding.
    - `topk_mean`: per class, the mean of its `top_k` highest slice probabilities, renormalised.
      It suits a model trained to convergence on slices that inherit their patient's label: a
      lesion-free slice then gets the classes' shares of the lesion-free training slices (NP
      about a half on the demo), so `presence` finds pneumonia in every normal scan, while here
      NP's top slices stay near that share and a lesion class's rise to 1 only with lesions.
    - `mean`, `max`: per class, over all slices, renormalised.
    """
    if method == "presence" and NO_PNEUMONIA in classes:
        negative = classes.index(NO_PNEUMONIA)
        pneumonia = float(_top_mean(1.0 - probabilities[:, negative], top_k))
        kinds = _top_mean(np.delete(probabilities, negative, axis=1), top_k)
        return np.insert(pneumonia * kinds / max(float(kinds.sum()), 1e-12), negative, 1.0 - pneumonia)
    if method in ("presence", "topk_mean"):
        pooled = _top_mean(probabilities, top_k)
    elif method == "mean":
        pooled = probabilities.mean(axis=0)
    elif method == "max":
        pooled = probabilities.max(axis=0)
    else:
        raise ValueError(f"unknown aggregation {method!r}; use one of {AGGREGATIONS}")
    return pooled / pooled.sum()


def bf16_autocast(amp: bool, device: torch.device) -> bool:
    """Whether forward passes run under bf16 autocast when `train.amp` asks for it: on CUDA, and on
    CPUs where oneDNN computes bf16 natively (AVX-512 BF16 or AMX), on which it is faster than
    float32 (benchmarks/train.py). Elsewhere a CPU would emulate bf16,
    slower than float32, so it stays in float32."""
    if not amp:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@torch.no_grad()
def slice_probabilities(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 64, amp: bool = False
) -> np.ndarray:
    """Softmax probabilities (slices, classes) of a Hu2020Net for uint8 slices (n, h, w)."""
    out = []
    bf16 = bf16_autocast(amp, device)
    for start in range(0, len(images), batch_size):
        batch = zscore(torch.from_numpy(np.asarray(images[start : start + batch_size])).to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes))


@torch.no_grad()
def bag_probabilities(model: torch.nn.Module, images: np.ndarray, device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(patient probabilities, attention per slice) of an AttentionMIL for one bag."""
    bag = zscore(torch.from_numpy(np.asarray(images)).to(device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast(amp, device)):
        scale_logits, attention = model.bag_scale_logits(bag)
    return torch.softmax(scale_logits.float().mean(dim=0), dim=-1).cpu().numpy(), attention.float().cpu().numpy()


def predict_patients(
    model: torch.nn.Module, metadata: dict, bank: SliceBank, patients: list[str], device: torch.device, amp: bool = False
) -> pd.DataFrame:
    """Class probabilities per patient: columns patient_id and prob_<class> for every class."""
    model.eval()
    settings = metadata["settings"]
    rows = bank.patient_rows()
    records = []
    for patient in patients:
        images = bank.images[np.sort(rows[patient])]
        if metadata["model"] == "mil":
            probabilities, _ = bag_probabilities(model, images, device, amp)
        else:
            probabilities = aggregate_slices(
                slice_probabilities(model, images, device, amp=amp), settings["aggregation"], settings["top_k"], metadata["classes"]
            )
        records.append({"patient_id": patient, **{f"prob_{c}": float(p) for c, p in zip(metadata["classes"], probabilities)}})
    return pd.DataFrame(records)


def with_decisions(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Add `predicted`: the class with the highest probability."""
    probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    out = predictions.copy()
    out["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    return out


def slice_predictions(model: torch.nn.Module, metadata: dict, bank: SliceBank, patients: list[str], device: torch.device) -> pd.DataFrame:
    """Per-slice class probabilities of a hu2020 model: patient_id, cache_slice, prob_<class>.

    What the paper evaluated (every slice inheriting its patient's label); the patient decision
    is `predict_patients`.
    """
    if metadata["model"] != "hu2020":
        raise ValueError("slice predictions need a hu2020 model (mil decides per patient)")
    tables = []
    for patient in patients:
        rows = bank.index[bank.index["patient_id"] == patient].sort_values("row")
        probabilities = slice_probabilities(model, bank.images[rows["row"].to_numpy()], device)
        table = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in metadata["classes"]])
        table.insert(0, "patient_id", patient)
        table.insert(1, "cache_slice", rows["cache_slice"].to_numpy())
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def out_of_fold_slice_predictions(
    predictions: pd.DataFrame, models: dict[str, Path | str], bank: SliceBank, device: torch.device
) -> pd.DataFrame:
    """Slice probabilities of the patients of `predictions` (patient_id, label, fold), each
    scored by the model that classified the patient: `models` maps a fold ("0", ..., or
    "predict") to its hu2020 model file. Adds the patient's `label` to every slice."""
    tables = []
    for fold, group in predictions.groupby(predictions["fold"].astype(str)):
        model, metadata = load_model(models[fold], device)
        table = slice_predictions(model, metadata, bank, list(group["patient_id"]), device)
        tables.append(table.merge(group[["patient_id", "label"]], on="patient_id"))
    return pd.concat(tables, ignore_index=True)
