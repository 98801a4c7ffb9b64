"""Training the learned lung prior (lungcam.lungs.prior) on phantoms whose truth is known.

The training cohort is made like the demo's: synthetic patients (lungcam.phantom) and,
optionally, the same plans with their lesions inserted into a real normal chest CT. Each is
written as DICOM and ingested like a user's scan, so the network sees what the lungs stage
sees. The target is the truth lungs with the truth lesions added (a lesion voxel outside the
truth lungs takes the side of the nearest lung): the lungs as they should be masked, dense
consolidation included. Lesions are what the prior is for: their pixels weigh more in the loss,
and each epoch sees every slice with a lesion and only as many lesion-free slices, drawn anew.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional

from lungcam.core.config import settings_from
from lungcam.core.orientation import LPSView, load_hu_lps, mask_on_grid
from lungcam.ingest import VOLUME_NAME, IngestSettings, ingest_patient
from lungcam.lungs.prior import LungPriorNet, resized_labels, save_prior, windowed
from lungcam.phantom import PhantomOptions, RealBackground, cohort_layout, generate_patient, plan_cohort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorTraining:
    """Config section `lungs.prior.train`: the training phantoms, the network and its fitting."""

    seeds: list[int]
    patients_per_class: int
    background: str
    matrix: int
    slice_step: int
    size: int
    channels: int
    epochs: int
    batch_size: int
    learning_rate: float
    lesion_weight: float

    @classmethod
    def from_config(cls, section: dict) -> PriorTraining:
        return settings_from(cls, section)


@dataclass
class TrainingSlices:
    """Network inputs (n, size, size), targets (0, 1 = right, 2 = left) and lesion pixels."""

    inputs: np.ndarray
    targets: np.ndarray
    lesions: np.ndarray

    @classmethod
    def join(cls, parts: list[TrainingSlices]) -> TrainingSlices:
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("inputs", "targets", "lesions")))


def _on_grid(truth_path: Path, volume: nib.Nifti1Image, view: LPSView) -> np.ndarray:
    return view.lps(mask_on_grid(nib.load(truth_path), volume))


def _with_lesion_sides(lungs: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """Lung labels with the lesion pixels outside them given the side of the nearest lung pixel."""
    target = lungs.copy()
    for k in np.flatnonzero((lesions & (lungs == 0)).any(axis=(1, 2))):
        if not lungs[k].any():
            continue
        nearest = ndimage.distance_transform_edt(lungs[k] == 0, return_distances=False, return_indices=True)
        outside = lesions[k] & (lungs[k] == 0)
        target[k][outside] = lungs[k][nearest[0][outside], nearest[1][outside]]
    return target


def training_slices(hu: np.ndarray, lungs: np.ndarray, lesions: np.ndarray, size: int) -> TrainingSlices:
    """Slices of a (z, y, x) HU volume with its truth lungs and lesions, at the network's size."""
    lesions = resized_labels(lesions, (size, size)).astype(bool)
    inputs = windowed(hu, size)[:, 0].numpy().astype(np.float16)
    return TrainingSlices(inputs, _with_lesion_sides(resized_labels(lungs, (size, size)), lesions), lesions)


def case_slices(volume_path: Path, lungs_path: Path, lesions_path: Path, settings: PriorTraining) -> TrainingSlices:
    """Every `slice_step`-th slice of one ingested phantom, with its truth, at the network's size."""
    hu, view = load_hu_lps(volume_path)
    volume = nib.load(volume_path)
    step = slice(None, None, settings.slice_step)
    lungs = _on_grid(lungs_path, volume, view)[step]
    lesions = _on_grid(lesions_path, volume, view)[step] > 0
    return training_slices(hu[step], lungs, lesions, settings.size)


def _phantom_case(args: tuple) -> TrainingSlices:
    plan, background, root, settings, ingest = args
    paths = cohort_layout(root, plan.patient_id)
    if background is not None:
        background = RealBackground.load(Path(background))
    options = PhantomOptions(matrix=settings.matrix, localizer=False, thick_series=False)
    generate_patient(plan, options, paths["dicom"], paths["lungs"], paths["lesions"], background)
    stage = Path(root) / "stage" / plan.patient_id
    record = ingest_patient(plan.patient_id, paths["dicom"], stage, ingest)
    if record["status"] != "ok":
        raise RuntimeError(f"training phantom {plan.patient_id} failed ingest: {'; '.join(record['reasons'])}")
    return case_slices(stage / VOLUME_NAME, paths["lungs"], paths["lesions"], settings)


def training_plans(settings: PriorTraining, classes: tuple[str, ...]) -> list[tuple]:
    """(plan, background folder or None): each seed's synthetic plans, and the same plans again on
    the real background when one is set."""
    backgrounds = {"synth": None, **({"real": settings.background} if settings.background else {})}
    return [
        (plan, background)
        for seed in settings.seeds
        for name, background in backgrounds.items()
        for plan in plan_cohort(settings.patients_per_class, seed, classes, prefix=f"{name}{seed}_")
    ]


def training_set(settings: PriorTraining, ingest: IngestSettings, classes: tuple[str, ...], jobs: int = 1) -> TrainingSlices:
    """Generate, ingest and slice the training phantoms in a temporary folder."""
    plans = training_plans(settings, classes)
    log.info("making %d training phantoms", len(plans))
    with tempfile.TemporaryDirectory(prefix="lung_prior_") as root, ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_phantom_case, [(plan, background, root, settings, ingest) for plan, background in plans]))
    return TrainingSlices.join(parts)


def _loss(scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel-weighted cross-entropy plus the soft Dice loss of the two lungs."""
    cross = (functional.cross_entropy(scores, targets, reduction="none") * weights).sum() / weights.sum()
    probabilities = scores.softmax(dim=1)[:, 1:]
    truth = functional.one_hot(targets, probabilities.shape[1] + 1).permute(0, 3, 1, 2)[:, 1:].float()
    overlap = (probabilities * truth).sum(dim=(0, 2, 3))
    dice = (2 * overlap + 1) / (probabilities.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)) + 1)
    return cross + (1 - dice).mean()


def _flipped(inputs: torch.Tensor, targets: torch.Tensor, lesions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mirror left and right, the lungs' labels swapped with them."""
    swapped = torch.tensor([0, 2, 1])[targets.flip(-1)]
    return inputs.flip(-1), swapped, lesions.flip(-1)


def epoch_slices(has_lesion: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch's slices in random order: every slice with a lesion (`has_lesion`, per slice)
    and as many lesion-free ones drawn at random (all slices when none has a lesion)."""
    with_lesion, without = torch.nonzero(has_lesion)[:, 0], torch.nonzero(~has_lesion)[:, 0]
    if len(with_lesion):
        without = without[torch.randperm(len(without), generator=generator)[: len(with_lesion)]]
    chosen = torch.cat([with_lesion, without])
    return chosen[torch.randperm(len(chosen), generator=generator)]


def train_prior(data: TrainingSlices, settings: PriorTraining, seed: int = 0) -> LungPriorNet:
    """Fit the network to the slices (Adam, lesion-focused epochs, random left/right mirroring);
    deterministic on CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LungPriorNet(settings.channels)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(settings.epochs, 1))
    inputs = torch.from_numpy(data.inputs)
    targets = torch.from_numpy(data.targets.astype(np.int64))
    lesions = torch.from_numpy(data.lesions)
    has_lesion = lesions.any(dim=(1, 2))
    model.train()
    for epoch in range(settings.epochs):
        order = epoch_slices(has_lesion, generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x, y, lesion = inputs[batch, None].float(), targets[batch], lesions[batch]
            if torch.rand(1, generator=generator).item() < 0.5:
                x, y, lesion = _flipped(x, y, lesion)
            loss = _loss(model(x), y, 1.0 + settings.lesion_weight * lesion.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        schedule.step()
        log.info("epoch %d of %d: loss %.4f", epoch + 1, settings.epochs, total / len(order))
    return model.eval()


def build_prior(settings: PriorTraining, ingest: IngestSettings, classes: tuple[str, ...], output: Path | str, jobs: int = 1) -> None:
    """Make the training phantoms, train the prior and save it to `output`."""
    data = training_set(settings, ingest, classes, jobs)
    log.info("training the lung prior on %d slices", len(data.inputs))
    model = train_prior(data, settings)
    trained_on = {"seeds": settings.seeds, "patients": len(training_plans(settings, classes)), "slices": len(data.inputs)}
    save_prior(model, settings.size, output, trained_on)
