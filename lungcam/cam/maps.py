"""Class activation maps of a patient, in the scan's own geometry.

Hu et al.'s network computes class maps after pool3, pool4 and pool5 (ReLU outputs whose global
maxima are the logits). The paper's code draws each scale's map on its own (`pool3`, `pool4`,
`pool5`) and a joint saliency, the product of the three scales' Integrated Gradients maps
(`joint_saliency`, see _joint_saliency). `lungcam_mean` is this project's variant, not the
paper's: the three maps upsampled bilinearly to the cache slice and averaged, as the logits are
averaged (and, by default, densely evaluated and smoothed, below). The options Grad-CAM,
Grad-CAM++ and LayerCAM (torchcam) weigh the same three layers' features by the class score's
gradients, and Integrated Gradients (captum) attributes the score to the input pixels. With the
`mil` model each slice's map is weighted by the slice's attention
relative to the largest. The stacked volume is set to 0 outside the cache's lungs, resampled
onto the grid of `nifti/{patient_id}.nii.gz` with the cache's transform
(`lungcam.train.cache.to_source_grid`), set to 0 outside `lungs/{patient_id}.nii.gz` and smoothed
within those lungs (`smooth_mm`, `smooth_within_lungs`: a few high voxels at a lung tip no longer
outrank the top over the lesion). Maps are not scaled per scan, so that one absolute lesion
threshold means the same on every scan and a scan whose map is low everywhere is told from one
with a lesion: the method's value v (for the class maps, the class score in logits) is written as
v / (v + 1), in [0, 1) and in the same order (0.5: a score of 1).

Model input and cache slice are related by the resize of `slice_bank.resize_slices`
(half-pixel centres, `align_corners=False`); upsampling the maps to the cache slice with the same
convention inverts it, so a map peak returns to the physical point it came from.

Dense evaluation (`shifts`): a pool3 map cell spans 8 input pixels (35 mm of lung at the demo's
64 px), and one evaluation upsampled bilinearly peaks near a cell's centre, often on a lesion's
rim rather than inside it. With `shifts` n > 1 the maps are computed n x n times, for the input
moved by offsets spread evenly over one cell and symmetric about 0; each map is upsampled to the
input's pixels, moved back by its offset, and the n x n are averaged. The network and its maps
are the same; they are only sampled at more positions (compare with benchmarks/cam.py --shifts).
Integrated Gradients attributes to the input's own pixels and is always evaluated once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nibabel.affines import voxel_sizes
from scipy import ndimage
from torch.nn import functional as F

from lungcam.core.atomic import atomic_path
from lungcam.core.config import settings_from
from lungcam.core.folds import target_class
from lungcam.core.geometry import crop_box
from lungcam.core.map_sampling import CELL, evaluations_per_axis, shift_offsets
from lungcam.train import AttentionMIL, CacheTransform, Hu2020Net, load_cache, resize_slices, to_source_grid, zscore

log = logging.getLogger(__name__)

SCALE_CAMS = {"lungcam_mean": slice(None), "pool3": slice(0, 1), "pool4": slice(1, 2), "pool5": slice(2, 3)}
METHODS = (*SCALE_CAMS, "joint_saliency", "gradcam", "gradcampp", "layercam", "integrated_gradients")
JOINT_STEPS, JOINT_BASELINE = 25, -1.0  # the paper's joint saliency: Integrated Gradients settings
TORCHCAM_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM"}
SCALE_LAYERS = ["blocks.2", "blocks.3", "blocks.4"]  # pool3, pool4, pool5: what the heads read
SMOOTHING_TRUNCATE = 3.0  # the smoothing Gaussian's reach, in sigmas

MapFunction = Callable[[torch.Tensor, int], list[torch.Tensor]]


def _slice_network(model: torch.nn.Module) -> Hu2020Net:
    return model.slices if isinstance(model, AttentionMIL) else model


@contextmanager
def _map_function(network: torch.nn.Module, method: str, steps: int, batch_size: int) -> Iterator[MapFunction]:
    """A function from a batch of model inputs and a class to that batch's maps (one or more
    resolutions, each (n, h, w), not negative), for the duration of the context.

    The gradient methods (torchcam) look at the same three layers as the paper's maps, the
    pooled features the heads read, so the methods differ only in how they weigh those features.
    Integrated Gradients (captum) attributes the class score to the input pixels, from a uniform
    slice (zero after z-scoring) in `steps` steps; its positive part is the map. The joint
    saliency attributes each scale's logit separately (signed: fused by `_joint_saliency`).
    """
    if method in SCALE_CAMS:
        scales = SCALE_CAMS[method]

        def class_maps(x: torch.Tensor, target: int) -> list[torch.Tensor]:
            with torch.no_grad():
                return [m[:, target].float() for m in network.maps(x)[scales]]

        yield class_maps
    elif method == "joint_saliency":
        from captum.attr import IntegratedGradients

        def scale_logit(scale: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: network.maps(x)[scale].amax(dim=(-2, -1))

        attributions = [IntegratedGradients(scale_logit(scale)) for scale in range(len(SCALE_LAYERS))]

        def scale_gradients(x: torch.Tensor, target: int) -> list[torch.Tensor]:
            return [
                a.attribute(x, baselines=JOINT_BASELINE, target=target, n_steps=JOINT_STEPS, internal_batch_size=batch_size)[:, 0]
                .detach()
                .float()
                for a in attributions
            ]

        yield scale_gradients
    elif method in TORCHCAM_METHODS:
        import torchcam.methods

        with getattr(torchcam.methods, TORCHCAM_METHODS[method])(network, SCALE_LAYERS) as extractor:

            def gradient_cam(x: torch.Tensor, target: int) -> list[torch.Tensor]:
                return [m.float() for m in extractor(target, network(x), normalized=False)]

            yield gradient_cam
    elif method == "integrated_gradients":
        from captum.attr import IntegratedGradients

        attribution = IntegratedGradients(network)

        def integrated_gradients(x: torch.Tensor, target: int) -> list[torch.Tensor]:
            found = attribution.attribute(x, baselines=0.0, target=target, n_steps=steps, internal_batch_size=batch_size)
            return [found[:, 0].detach().float().clamp_min(0)]

        yield integrated_gradients
    else:
        raise ValueError(f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")


def _shift_averaged(maps_of: MapFunction, shifts: int) -> MapFunction:
    """`maps_of` evaluated on the input moved by every pair of `shift_offsets(shifts)`; each
    map is upsampled to the input's pixels and moved back, and each pixel averages the
    evaluations that saw it. One shift is `maps_of` itself."""
    if shifts == 1:
        return maps_of
    offsets = shift_offsets(shifts)
    margin = CELL // 2

    def averaged(x: torch.Tensor, target: int) -> list[torch.Tensor]:
        size = x.shape[-2:]
        padded = F.pad(x, (margin,) * 4, mode="replicate")
        sums: list[torch.Tensor] = []
        seen = torch.zeros(size[0] + 2 * margin, size[1] + 2 * margin, device=x.device)
        for dy in offsets:
            for dx in offsets:
                # The window's pixel (i, j) is the input's (i + dy, j + dx): its map goes back there.
                window = padded[..., margin + dy : margin + dy + size[0], margin + dx : margin + dx + size[1]]
                back = (margin + dx, margin - dx, margin + dy, margin - dy)
                maps = [
                    F.pad(F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0], back)
                    for m in maps_of(window, target)
                ]
                sums = maps if not sums else [total + m for total, m in zip(sums, maps)]
                seen += F.pad(torch.ones(size, device=x.device), back)
        return [(total / seen)[:, margin : margin + size[0], margin : margin + size[1]] for total in sums]

    return averaged


def _joint_saliency(layers: list[np.ndarray]) -> np.ndarray:
    """Hu et al.'s joint saliency of per-scale attribution maps: each scaled by its largest
    magnitude over the patient's slices to [-1, 1], then (C3 + 2)(C4 + 2)(C5 + 2). Where all three
    are 0 the product is 8: that neutral value is subtracted and what falls below it cut to 0."""
    product = np.ones(layers[0].shape, dtype=np.float32)
    for layer in layers:
        product *= layer / max(float(np.abs(layer).max()), 1e-12) + 2.0
    return np.clip(product - 8.0, 0.0, None)


def slice_cams(
    model: torch.nn.Module,
    slices: np.ndarray,
    target: int,
    input_size: int,
    device: torch.device,
    method: str = "lungcam_mean",
    steps: int = 32,
    batch_size: int = 32,
    shifts: int = 1,
) -> np.ndarray:
    """Maps (n, h, w) of uint8 cache slices (n, h, w) for class `target` by `method`: each
    layer's map upsampled to the cache slice, then averaged over the layers (the paper's fusion);
    with `shifts` > 1 each layer's map is first evaluated densely (module docstring), except for
    the per-pixel Integrated Gradients.

    Every method's layers are averaged unscaled, as the paper averages its logits (the maps'
    maxima), so slices stay comparable with each other; `joint_saliency` multiplies its three
    instead (`_joint_saliency`). For Grad-CAM this lets the
    coarsest layer dominate: its weights are gradients averaged over the layer's pixels, so
    pool5's are the largest.
    """
    network = _slice_network(model).eval()
    height, width = slices.shape[1:]
    layers: list[np.ndarray] = []
    with _map_function(network, method, steps, batch_size) as class_maps:
        maps_of = _shift_averaged(class_maps, evaluations_per_axis(method, shifts))
        for start in range(0, len(slices), batch_size):
            batch = resize_slices(np.asarray(slices[start : start + batch_size]), input_size)
            maps = maps_of(zscore(torch.from_numpy(batch).to(device)), target)
            if not layers:
                layers = [np.zeros(slices.shape, dtype=np.float32) for _ in maps]
            for layer, found in zip(layers, maps):
                upsampled = F.interpolate(found[:, None], size=(height, width), mode="bilinear", align_corners=False)
                upsampled = upsampled[:, 0] if method == "joint_saliency" else upsampled[:, 0].clamp_min(0)
                layer[start : start + len(batch)] = upsampled.cpu().numpy()
    if not layers:
        return np.zeros(slices.shape, dtype=np.float32)
    return _joint_saliency(layers) if method == "joint_saliency" else np.mean(layers, axis=0, dtype=np.float32)


@torch.no_grad()
def slice_attention(model: AttentionMIL, slices: np.ndarray, input_size: int, device: torch.device) -> np.ndarray:
    """Attention weight of each slice relative to the largest (n,), from one bag of all slices."""
    bag = zscore(torch.from_numpy(resize_slices(np.asarray(slices), input_size)).to(device))
    _, attention = model.eval().bag_scale_logits(bag)
    attention = attention.float().cpu().numpy()
    return attention / max(float(attention.max()), 1e-12)


def cache_cam(
    model: torch.nn.Module,
    metadata: dict,
    cache_dir: Path | str,
    target: int,
    device: torch.device,
    method: str = "lungcam_mean",
    steps: int = 32,
    shifts: int = 1,
) -> tuple[np.ndarray, CacheTransform]:
    """The patient's CAM on the cache grid (z, y, x) in the method's units, 0 outside the lungs."""
    image, lungs, transform = load_cache(cache_dir)
    lungs = np.asarray(lungs) > 0
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    volume = np.zeros(image.shape, dtype=np.float32)
    if len(with_lung):
        size = metadata["preprocessing"]["input_size"]
        slices = np.asarray(image[with_lung])
        maps = slice_cams(model, slices, target, size, device, method, steps, shifts=shifts)
        if metadata["model"] == "mil":
            maps *= slice_attention(model, slices, size, device)[:, None, None]
        volume[with_lung] = maps
    volume *= lungs
    return volume, transform


def smooth_within_lungs(cam: np.ndarray, lungs: np.ndarray, spacing_mm: Sequence[float], sigma_mm: float) -> np.ndarray:
    """`cam` smoothed by a Gaussian of `sigma_mm` over the lung voxels only (normalised
    convolution: the blurred map times lungs over the blurred lungs), 0 outside the lungs.

    Resampled from the coarse cache grid and cut at the scan's lung mask, a map's highest voxels
    are often a few at the lung's edge, at the apex or the base where little lung surrounds them,
    above the broad top over the lesion. Averaging each voxel with the lung around it brings such voxels down to what their
    neighbourhood says and keeps a top that the lung around it agrees with; the tissue outside
    the lungs, which the map is not about, weighs nothing, so a map that is even over the lungs
    stays even up to the pleura. The work is done within the lungs' bounding box and the filter's
    reach around it.
    """
    inside = np.asarray(lungs) > 0
    if sigma_mm <= 0 or not inside.any():
        return np.where(inside, cam, 0).astype(np.float32)
    sigma = [sigma_mm / float(s) for s in spacing_mm]
    box = crop_box(inside, [int(np.ceil(SMOOTHING_TRUNCATE * s)) for s in sigma])
    weights = inside[box].astype(np.float32)
    blurred = np.asarray(cam, dtype=np.float32)[box] * weights
    for volume in (blurred, weights):  # in place: a large scan's box is hundreds of MB
        ndimage.gaussian_filter(volume, sigma, output=volume, mode="constant", truncate=SMOOTHING_TRUNCATE)
    blurred /= np.maximum(weights, 1e-12, out=weights)
    blurred[~inside[box]] = 0
    smoothed = np.zeros(inside.shape, dtype=np.float32)
    smoothed[box] = blurred
    return smoothed


def scan_cam(cache_volume: np.ndarray, transform: CacheTransform, scan_lungs: np.ndarray, smooth_mm: float = 0.0) -> np.ndarray:
    """A cache-grid CAM on the scan's grid: float32, 0 outside the scan's lungs, smoothed within
    them by a Gaussian of `smooth_mm` (`smooth_within_lungs`; 0: not smoothed), and brought to
    [0, 1) by `to_unit_range`."""
    mapped = np.clip(to_source_grid(cache_volume, transform, order=1), 0.0, None)
    return to_unit_range(smooth_within_lungs(mapped, scan_lungs, voxel_sizes(np.array(transform.source_affine)), smooth_mm))


def to_unit_range(values: np.ndarray) -> np.ndarray:
    """v / (v + 1) of non-negative map values: the same scale for every scan, the same order."""
    return (values / (values + 1.0)).astype(np.float32)


@dataclass(frozen=True)
class MapSettings:
    """Config section `cam`: which class is mapped (`target`) and how."""

    target: str  # predicted or label
    method: str  # one of METHODS
    ig_steps: int
    shifts: int
    smooth_mm: float

    @classmethod
    def from_config(cls, section: dict) -> MapSettings:
        return settings_from(cls, section)


def write_patient_cam(
    model_path: Path | str,
    row: dict,
    settings: MapSettings,
    *,
    cache: Path | str,
    lungs: Path | str,
    cam: Path | str,
    device: torch.device | str = "cpu",
    volume: Path | str | None = None,
    key_slices: Path | str | None = None,
) -> dict:
    """Write the map of one patient (its predictions.tsv `row`) to `cam`, from its model-input
    `cache`, on the grid of its `lungs` labels, by `settings`; with the scan's `volume`, the key
    slices figure at `key_slices`. Returns what was mapped, for the log."""
    import nibabel as nib

    from lungcam.core.montage import key_slices_figure
    from lungcam.core.orientation import load_hu_lps
    from lungcam.train import load_model

    device = torch.device(device)
    model, metadata = load_model(model_path, device)
    mapped = target_class(row, metadata["classes"], settings.target)
    log.info("mapping %s evidence with %s (%d x %d evaluations)", mapped, settings.method, *(2 * [settings.shifts]))
    cache_volume, transform = cache_cam(
        model, metadata, cache, metadata["classes"].index(mapped), device, settings.method, settings.ig_steps, settings.shifts
    )
    log.info("map computed on the cache; back onto the scan's grid")
    lung_image = nib.load(lungs)
    values = scan_cam(cache_volume, transform, np.asarray(lung_image.dataobj), settings.smooth_mm)
    image = nib.Nifti1Image(values, lung_image.affine)
    image.header.set_data_dtype(np.float32)
    image.header["descrip"] = f"lungcam {settings.method} {mapped}".encode()[:79]
    with atomic_path(cam) as tmp:
        nib.save(image, tmp)
    summary = {
        "method": settings.method,
        "shifts": evaluations_per_axis(settings.method, settings.shifts),
        "smooth_mm": settings.smooth_mm,
        "class": mapped,
        "model": str(model_path),
        "peak": round(float(values.max()), 4),
    }
    if volume is not None and key_slices is not None:
        hu, view = load_hu_lps(volume)
        title = f"{row.get('patient_id', '')} {settings.method} map of {mapped} (predicted {row['predicted']})"
        summary["key_slices"] = key_slices_figure(
            hu, view.lps(np.asarray(lung_image.dataobj)), view.lps(values), view.spacing, view.slice_z_mm(), key_slices, title, mapped
        )
    return summary
