"""Class activation maps of a patient, in the scan's own geometry.

The paper's multi-scale CAM: for each lung slice of the model-input cache, the class maps that
`Hu2020Net` computes after pool3, pool4 and pool5 (ReLU outputs whose global maxima are the
logits) are taken for the target class, each upsampled bilinearly to the cache slice, and
averaged, as the three scales' logits are averaged. With the `mil` model each slice's map is
weighted by the slice's attention relative to the largest. The stacked volume is scaled to
[0, 1] by its maximum, set to 0 outside the cache's lungs, and resampled onto the grid of
`nifti/{patient_id}.nii.gz` with the cache's transform (`lungcam.cache.to_source_grid`), then
set to 0 outside `lungs/{patient_id}.nii.gz`.

Model input and cache slice are related by the resize of `slice_bank.resize_slices`
(half-pixel centres, `align_corners=False`); upsampling the maps to the cache slice with the same
convention inverts it, so a map peak returns to the physical point it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .cache import CacheTransform, load_cache, to_source_grid
from .models import AttentionMIL, Hu2020Net
from .slice_bank import resize_slices, zscore


def _slice_network(model: torch.nn.Module) -> Hu2020Net:
    return model.slices if isinstance(model, AttentionMIL) else model


@torch.no_grad()
def slice_cams(model: torch.nn.Module, slices: np.ndarray, target: int, input_size: int, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Fused multi-scale CAM (n, h, w) of uint8 cache slices (n, h, w) for class `target`."""
    network = _slice_network(model).eval()
    height, width = slices.shape[1:]
    out = np.zeros(slices.shape, dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        batch = resize_slices(np.asarray(slices[start: start + batch_size]), input_size)
        maps = network.maps(zscore(torch.from_numpy(batch).to(device)))
        fused = torch.stack([F.interpolate(m[:, target: target + 1].float(), size=(height, width), mode="bilinear", align_corners=False) for m in maps]).mean(dim=0)
        out[start: start + len(batch)] = fused[:, 0].clamp_min(0).cpu().numpy()
    return out


@torch.no_grad()
def slice_attention(model: AttentionMIL, slices: np.ndarray, input_size: int, device: torch.device) -> np.ndarray:
    """Attention weight of each slice relative to the largest (n,), from one bag of all slices."""
    bag = zscore(torch.from_numpy(resize_slices(np.asarray(slices), input_size)).to(device))
    _, attention = model.eval().bag_scale_logits(bag)
    attention = attention.float().cpu().numpy()
    return attention / max(float(attention.max()), 1e-12)


def cache_cam(model: torch.nn.Module, metadata: dict, cache_dir: Path | str, target: int, device: torch.device) -> tuple[np.ndarray, CacheTransform]:
    """The patient's CAM on the cache grid (z, y, x) in [0, 1], 0 outside the lungs."""
    image, lungs, transform = load_cache(cache_dir)
    lungs = np.asarray(lungs) > 0
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    volume = np.zeros(image.shape, dtype=np.float32)
    if len(with_lung):
        size = metadata["preprocessing"]["input_size"]
        slices = np.asarray(image[with_lung])
        maps = slice_cams(model, slices, target, size, device)
        if metadata["model"] == "mil":
            maps *= slice_attention(model, slices, size, device)[:, None, None]
        volume[with_lung] = maps
    volume *= lungs
    peak = float(volume.max())
    return (volume / peak if peak > 0 else volume), transform


def scan_cam(cache_volume: np.ndarray, transform: CacheTransform, scan_lungs: np.ndarray) -> np.ndarray:
    """A cache-grid CAM on the scan's grid: float32 in [0, 1], 0 outside the scan's lungs."""
    mapped = to_source_grid(cache_volume, transform, order=1)
    return (np.clip(mapped, 0.0, 1.0) * (np.asarray(scan_lungs) > 0)).astype(np.float32)


def target_class(row: dict, classes: list[str], target: str) -> str:
    """The class to map for a patient's predictions row: `predicted`, or `label` when given."""
    if target == "label" and isinstance(row.get("label"), str) and row["label"] in classes:
        return row["label"]
    return row["predicted"]


def write_patient_cam(model_path: Path | str, row: dict, target: str, cache_dir: Path | str, lungs_path: Path | str, out_path: Path | str,
                      device: torch.device | str = "cpu", volume_path: Path | str | None = None, figure_path: Path | str | None = None) -> dict:
    """Write cam/{patient_id}.nii.gz for one patient, and with the scan's `volume_path` the key
    slices figure at `figure_path`; returns what was mapped, for the log."""
    import nibabel as nib

    from .inference import load_model
    from .montage import key_slices_figure
    from .orientation import load_hu_lps

    device = torch.device(device)
    model, metadata = load_model(model_path, device)
    mapped = target_class(row, metadata["classes"], target)
    volume, transform = cache_cam(model, metadata, cache_dir, metadata["classes"].index(mapped), device)
    lungs = nib.load(lungs_path)
    cam = scan_cam(volume, transform, np.asarray(lungs.dataobj))
    image = nib.Nifti1Image(cam, lungs.affine)
    image.header.set_data_dtype(np.float32)
    image.header["descrip"] = f"lungcam CAM {mapped}".encode()[:79]
    nib.save(image, out_path)
    summary = {"class": mapped, "model": str(model_path), "peak": float(cam.max()), "voxels_above_half": int((cam >= 0.5).sum())}
    if volume_path is not None and figure_path is not None:
        hu, view = load_hu_lps(volume_path)
        title = f"{row.get('patient_id', '')} CAM {mapped} (predicted {row['predicted']})"
        summary["key_slices"] = key_slices_figure(hu, view.lps(np.asarray(lungs.dataobj)), view.lps(cam), view.spacing, figure_path, title)
    return summary
