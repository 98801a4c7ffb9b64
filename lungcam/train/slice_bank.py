"""The slice bank: every lung slice of a cohort at the model's input size, in one uint8 memmap.

Training reads random slices many times per epoch. Resizing cache slices on the fly would cost
more than the network on a GPU, so the lung slices of all patients are resized once to
`input_size` x `input_size` (bilinear, antialiased) and stored contiguously per patient in
`images.npy` (opened memory-mapped); `index.tsv` says which rows belong to which patient and
which cache slice each row is; `bank.json` records the preprocessing (input size, slice
selection, cache settings), which model files carry so that prediction repeats it. A slice is a lung slice when its lung area is at least
`min_lung_fraction` of the patient's largest lung slice. Per-slice z-scoring happens on the
device, batch by batch (`zscore`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from lungcam.core.atomic import atomic_path

IMAGES_NAME = "images.npy"
INDEX_NAME = "index.tsv"
PREPROCESSING_NAME = "bank.json"


def lung_slice_indices(lungs: np.ndarray, min_lung_fraction: float) -> np.ndarray:
    """Cache slice indices whose lung area is at least `min_lung_fraction` of the largest."""
    area = (lungs > 0).sum(axis=(1, 2))
    if area.max() == 0:
        return np.zeros(0, dtype=int)
    return np.nonzero(area >= min_lung_fraction * area.max())[0]


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, h, w) -> uint8 (n, size, size), bilinear with antialiasing."""
    tensor = torch.from_numpy(np.array(slices, dtype=np.float32)).unsqueeze(1)
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def bank_preprocessing(size: int, min_lung_fraction: float, cache: dict) -> dict:
    """Everything that turns a CT into the model's input, as recorded in banks and model files."""
    return {
        "input_size": int(size),
        "min_lung_fraction": float(min_lung_fraction),
        "zscore": "per slice",
        "cache": dict(sorted(cache.items())),
    }


def build_slice_bank(
    cache_dirs: dict[str, Path | str], out_dir: Path | str, size: int, min_lung_fraction: float, cache: dict
) -> pd.DataFrame:
    """Write images.npy, index.tsv and bank.json for the patients in `cache_dirs` (in that order);
    `cache` is the config's cache section the caches were made with."""
    from lungcam.train.cache import load_cache  # nibabel is needed to build a bank, not to train from one

    selected = {}
    for patient, folder in cache_dirs.items():
        _, lungs, _ = load_cache(folder)
        selected[patient] = lung_slice_indices(np.asarray(lungs), min_lung_fraction)
    total = sum(len(v) for v in selected.values())
    with atomic_path(out_dir) as out:
        out.mkdir()
        images = np.lib.format.open_memmap(out / IMAGES_NAME, mode="w+", dtype=np.uint8, shape=(total, size, size))
        rows, start = [], 0
        for patient, indices in selected.items():
            image, _, _ = load_cache(cache_dirs[patient])
            images[start : start + len(indices)] = resize_slices(np.asarray(image[indices]), size)
            rows += [{"patient_id": patient, "row": start + i, "cache_slice": int(k)} for i, k in enumerate(indices)]
            start += len(indices)
        images.flush()
        del images
        index = pd.DataFrame(rows, columns=["patient_id", "row", "cache_slice"])
        index.to_csv(out / INDEX_NAME, sep="\t", index=False)
        (out / PREPROCESSING_NAME).write_text(json.dumps(bank_preprocessing(size, min_lung_fraction, cache), indent=1) + "\n")
    return index


@dataclass
class SliceBank:
    images: np.ndarray  # (n, size, size) uint8, memory-mapped
    index: pd.DataFrame
    preprocessing: dict

    @classmethod
    def load(cls, folder: Path | str) -> SliceBank:
        folder = Path(folder)
        preprocessing = json.loads((folder / PREPROCESSING_NAME).read_text())
        return cls(np.load(folder / IMAGES_NAME, mmap_mode="r"), pd.read_csv(folder / INDEX_NAME, sep="\t"), preprocessing)

    def rows(self, patient: str) -> np.ndarray:
        return self.index.loc[self.index["patient_id"] == patient, "row"].to_numpy()

    def patient_rows(self) -> dict[str, np.ndarray]:
        return {p: g["row"].to_numpy() for p, g in self.index.groupby("patient_id", sort=False)}

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def zscore(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (n, h, w) -> float (n, 1, h, w), each slice to zero mean and unit variance."""
    x = batch.float().unsqueeze(1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std
