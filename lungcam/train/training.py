"""Train one cross-validation fold (or the final model) from the slice bank.

Reproducible and resumable: every random choice of an epoch (data order, bag subsets, dropout)
derives from (seed, fold, epoch), and the full training state is checkpointed after every
epoch, so a run killed at any point (SLURM preemption) and restarted from its checkpoint ends
with the same weights as an uninterrupted run; a checkpoint is resumed only by the run that
wrote it (same settings, patients and slice bank: `run_identity`).

The model kept is the best-validation epoch's, as in the paper, or, with `validation_fraction`
0, the last epoch's, every training patient trained on. With `ema_epochs` the model evaluated
and kept is an exponential moving average of the weights over about that many epochs
(`torch.optim.swa_utils.AveragedModel`): it changes smoothly from epoch to epoch instead of
jumping with each step's draw.

It trains in the channels_last memory format, which oneDNN's CPU convolutions run faster than
the default layout (benchmarks/train.py) and which a GPU's tensor cores want, and with bf16
autocast on CUDA and on CPUs that compute bf16 natively (`inference.bf16_autocast`); with
several processes (torchrun) it trains data-parallel, each process taking every n-th batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from lungcam.core.atomic import atomic_path, write_tsv
from lungcam.core.config import settings_from
from lungcam.core.device import pick_device
from lungcam.core.folds import validation_split
from lungcam.core.records import write_predictions
from lungcam.train.inference import UnsafeFileError, bf16_autocast, load_plain, predict_patients, save_model, with_decisions
from lungcam.train.models import build_model, focal_cross_entropy
from lungcam.train.slice_bank import IMAGES_NAME, SliceBank, zscore

log = logging.getLogger(__name__)
STATE_NAME = "state.pt"
PROGRESS_SECONDS = 30.0  # a training job logs the step it reached this often


@dataclass(frozen=True)
class TrainSettings:
    """Config section `train` (see the schema for meanings and defaults)."""

    model: str
    task: str
    folds: int
    seed: int
    input_size: int
    width: float
    dropout: float
    batch_size: int
    learning_rate: float
    lr_step: int
    lr_gamma: float
    focal_gamma: float
    max_epochs: int
    patience: int
    validation_fraction: float
    bag_size: int
    bags_per_step: int
    min_lung_fraction: float
    aggregation: str
    top_k: int
    augment: bool
    final_model: bool
    device: str
    amp: bool
    channels_last: bool
    workers: int
    gpus: int
    bank_on_gpu: bool
    ema_epochs: float

    @classmethod
    def from_config(cls, section: dict) -> TrainSettings:
        return settings_from(cls, section)


class EpochBatches(torch.utils.data.Dataset):
    """Precomputed batches (rows of the bank) read in one go each; loader workers read in parallel.

    A batch is (images, labels, patient numbers) in row order, so each patient's slices are
    contiguous: the bags of a multiple-instance step are found from the patient numbers.
    """

    def __init__(self, bank_dir: Path, batches: list[np.ndarray], labels: np.ndarray, patients: np.ndarray):
        self.path = Path(bank_dir) / IMAGES_NAME
        self.batches, self.labels, self.patients = batches, labels, patients
        self.images = None  # opened in each worker

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")
        rows = np.sort(self.batches[i])  # sorted reads are faster
        return (
            torch.from_numpy(np.ascontiguousarray(self.images[rows])),
            torch.from_numpy(self.labels[rows]),
            torch.from_numpy(self.patients[rows]),
        )


class DeviceBank:
    """The whole slice bank in GPU memory: a batch is an index lookup, no loader at all.

    Used when the bank takes less than 40% of the free GPU memory (a 5,000-patient cohort at
    224x224 is about 25 GB of uint8), otherwise `EpochBatches` reads from the memory map.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, patients: np.ndarray, device: torch.device):
        self.images = torch.from_numpy(np.array(images)).to(device)  # a writable copy of the memmap
        self.labels = torch.from_numpy(labels).to(device)
        self.patients = torch.from_numpy(patients).to(device)
        self.device = device

    @staticmethod
    def fits(images: np.ndarray, device: torch.device) -> bool:
        return device.type == "cuda" and images.nbytes < 0.4 * torch.cuda.mem_get_info(device)[0]

    def batches(self, batches: list[np.ndarray]):
        for rows in batches:
            index = torch.from_numpy(np.sort(rows)).to(self.device, non_blocking=True)
            yield self.images.index_select(0, index), self.labels.index_select(0, index), self.patients.index_select(0, index)


def batch_source(
    bank_dir: Path,
    batches: list[np.ndarray],
    labels: np.ndarray,
    patients: np.ndarray,
    device: torch.device,
    settings: TrainSettings,
    resident: DeviceBank | None,
):
    """Iterable of (uint8 images, labels, patient numbers) for an epoch's batches, from GPU
    memory or the memmap."""
    if resident is not None:
        return resident.batches(batches)
    return torch.utils.data.DataLoader(
        EpochBatches(bank_dir, batches, labels, patients),
        batch_size=None,
        shuffle=False,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


class _TrainingForward(nn.Module):
    """The training computation as a module's forward, so that DistributedDataParallel syncs it."""

    def __init__(self, model: nn.Module, bags: bool):
        super().__init__()
        self.model, self.bags = model, bags

    def forward(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Logits per scale: (scales, bags, classes) for mil, (scales, slices, classes) for hu2020."""
        return self.model.bags_scale_logits(x, groups) if self.bags else self.model.scale_logits(x)


def _rng(seed: int, fold: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, fold + 1, epoch, stream])


def _epoch_batches(settings: TrainSettings, patient_rows: dict[str, np.ndarray], fold: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: shuffled slices (hu2020), or for mil `bags_per_step` patients
    per step, each a bag of at most `bag_size` of its slices.

    Several bags per step let batch normalisation see several patients: normalising over one
    patient's slices alone would remove what tells that patient's class apart. A mil epoch draws
    each patient's bag as many times as its slices fill bags on average, so that an epoch of
    either model processes about as many slices as the training patients have.
    """
    if settings.model == "mil":
        rng = _rng(settings.seed, fold, epoch, 2)
        mean_slices = np.mean([len(rows) for rows in patient_rows.values()])
        passes = max(1, int(round(mean_slices / settings.bag_size)))
        bags = []
        for _ in range(passes):
            for patient in rng.permutation(sorted(patient_rows)):
                rows = patient_rows[patient]
                if len(rows) > settings.bag_size:
                    rows = np.sort(rng.choice(rows, settings.bag_size, replace=False))
                bags.append(rows)
        step = settings.bags_per_step
        return [np.concatenate(bags[i : i + step]) for i in range(0, len(bags), step)]
    rows = np.concatenate(list(patient_rows.values()))
    order = _rng(settings.seed, fold, epoch, 1).permutation(rows)
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (n, 1, h, w) images, `sigma` in pixels (separable, edges replicated)."""
    radius = max(1, int(round(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    taps = torch.exp(-taps * taps / (2 * sigma * sigma))
    taps = taps / taps.sum()
    rows = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))


def augment(images: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Random sharpness (from a 1-pixel Gaussian blur to as much unsharp masking), left-right
    flip, small affine (rotation 10 deg, scale 10%, shift 5%), contrast and noise, of z-scored
    slices (n, 1, h, w); slices of one group (a patient's bag, contiguous) are transformed alike,
    or each slice on its own when `groups` is None.

    With a few dozen patients a network can learn each patient's scanner and anatomy by heart;
    these draws make that harder than learning the lesions. Sharpness matters most: a
    reconstruction kernel and slice thickness make a whole scan sharper or smoother, and a lesion
    is a smooth region, so a network trained without it can call any smooth scan pneumonia. The
    draws come from torch's generator, seeded per epoch, so a resumed run draws the same.
    """
    if groups is None:
        member = torch.arange(images.shape[0])
    else:
        member = torch.unique_consecutive(groups.cpu(), return_inverse=True)[1]
    n = int(member.max()) + 1
    sharpness = torch.empty(n).uniform_(-1.0, 1.0)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    angle = torch.deg2rad(torch.empty(n).uniform_(-10.0, 10.0))
    scale = torch.empty(n).uniform_(0.9, 1.1)
    shift = torch.empty(n, 2).uniform_(-0.05, 0.05)
    contrast = torch.empty(n).uniform_(0.85, 1.15)
    noise = torch.empty(n).uniform_(0.0, 0.1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * scale * torch.cos(angle)
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = flip * scale * torch.sin(angle)
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = shift
    device = images.device
    per_slice = (-1, 1, 1, 1)
    images = images + sharpness[member].view(per_slice).to(device) * (images - _blur(images, 1.0))
    grid = F.affine_grid(theta[member].to(device), list(images.shape), align_corners=False)
    background = images.amin(dim=(2, 3), keepdim=True)
    moved = F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros") + background
    return moved * contrast[member].view(per_slice).to(device) + noise[member].view(per_slice).to(device) * torch.randn_like(images)


class _EpochAverage:
    """The update of an exponential moving average whose horizon is given in epochs: each step
    moves the average 1 / (ema_epochs x steps per epoch) of the way to the current weights, so
    the same setting averages over as many epochs for hu2020's many small steps as for mil's
    few large ones. `steps_per_epoch` is set at the start of every epoch."""

    def __init__(self, epochs: float):
        self.epochs = epochs
        self.steps_per_epoch = 1

    @torch.no_grad()
    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _count) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, min(1.0, 1.0 / (self.epochs * self.steps_per_epoch)))
        else:  # batch norm's step counters
            for mean, now in zip(averaged, current):
                mean.copy_(now)


def _weight_average(model: nn.Module, epochs: float) -> tuple[torch.optim.swa_utils.AveragedModel, _EpochAverage] | tuple[None, None]:
    """An exponential moving average of `model`'s weights and batch-norm statistics over about
    `epochs` epochs, updated after every step, with its update rule ((None, None) for 0).

    On a few dozen patients the weights of one step fit that step's slices; their average over
    the last epochs generalises better and changes smoothly, so the model kept does not depend
    on where the last step happened to leave it.
    """
    if epochs <= 0:
        return None, None
    from torch.optim.swa_utils import AveragedModel

    update = _EpochAverage(epochs)
    return AveragedModel(model, multi_avg_fn=update, use_buffers=True), update


def _bag_starts(groups: torch.Tensor) -> torch.Tensor:
    """Index of the first slice of each bag (bags are runs of equal patient numbers)."""
    counts = torch.unique_consecutive(groups, return_counts=True)[1]
    return torch.cumsum(counts, 0) - counts


def _class_weights(counts: np.ndarray) -> torch.Tensor:
    """alpha_c = N / N_c."""
    return torch.tensor(counts.sum() / np.maximum(counts, 1), dtype=torch.float32)


def _validation_loss(predictions: pd.DataFrame, labels: pd.Series, classes: list[str]) -> tuple[float, float]:
    probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    target = np.array([classes.index(labels[p]) for p in predictions["patient_id"]])
    loss = float(-np.log(np.clip(probabilities[np.arange(len(target)), target], 1e-7, 1.0)).mean())
    return loss, float((probabilities.argmax(axis=1) == target).mean())


def write_curves(history: list[dict], tsv: Path, png: Path, title: str) -> None:
    """The training history as a table and a figure: the losses, and the validation accuracy
    beside them only when there were validation patients (no empty panel without them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame(history)
    write_tsv(table, tsv, float_format="%.6g")
    validated = bool(table["val_loss"].notna().any())  # NaN throughout without validation patients
    fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5.5, 3.6), squeeze=False)
    losses = axes[0][0]
    losses.plot(table["epoch"], table["train_loss"], label="training")
    if validated:
        losses.plot(table["epoch"], table["val_loss"], label="validation")
        accuracy = axes[0][1]
        accuracy.plot(table["epoch"], table["val_accuracy"], color="tab:green")
        accuracy.set_xlabel("epoch")
        accuracy.set_ylabel("validation accuracy")
        accuracy.set_ylim(0, 1.02)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.legend()
    fig.suptitle(title if validated else f"{title} (no validation patients)")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def run_identity(
    settings: TrainSettings,
    classes: list[str],
    fold: int | str,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    bank: SliceBank,
    bank_dir: Path,
) -> str:
    """A digest of what a training run is: settings, classes, fold, its training and validation
    patients, and its slice bank (`bank`, loaded from `bank_dir`: index, preprocessing, and the
    images file's size and time).

    The checkpoint lives in the work folder, outside the rule's outputs, so that a job rerun
    after preemption finds it. Snakemake also reruns training when settings or data changed; that
    run must not resume, or return, the old finished training. A rebuilt bank counts as another
    bank even if its images came out the same: that costs a fresh start, never a wrong model.
    """
    images = (bank_dir / IMAGES_NAME).stat()
    identity = {
        "settings": asdict(settings),
        "classes": list(classes),
        "fold": str(fold),
        "train": sorted(train["patient_id"]),
        "validation": sorted(validation["patient_id"]),
        "bank_index": hashlib.sha256(pd.util.hash_pandas_object(bank.index, index=False).to_numpy().tobytes()).hexdigest(),
        "bank_preprocessing": bank.preprocessing,
        "bank_images": [images.st_size, images.st_mtime_ns],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:  # a kill during saving leaves the previous checkpoint intact
        torch.save(state, tmp)


def _saved_state(path: Path, fold: int | str) -> dict | None:
    """The fold's last checkpoint, or None when there is none or it is refused (it holds more than
    tensors and plain values, so loading it could run code): training then starts afresh."""
    if not path.exists():
        return None
    try:
        saved = load_plain(path)
    except UnsafeFileError as exc:
        log.warning("fold %s: %s; training afresh", fold, exc)
        return None
    return saved if isinstance(saved, dict) else None


@dataclass
class _FoldData:
    """Who trains, validates and is tested in a fold, and each bank row's label and patient."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    trained_on: list[str]  # training and validation patients
    label_of: pd.Series  # patient_id -> label
    row_labels: np.ndarray  # class number of each bank row (-1: not in the cohort)
    row_patients: np.ndarray  # patient number of each bank row
    train_rows: dict[str, np.ndarray]  # bank rows of each training patient


def _fold_data(settings: TrainSettings, classes: list[str], bank: SliceBank, patients: pd.DataFrame, fold_number: int) -> _FoldData:
    all_rows = bank.patient_rows()
    is_test = patients["fold"] == fold_number
    train_val = patients[~is_test]
    train, validation = validation_split(train_val, settings.validation_fraction, settings.seed, fold_number)
    label_of = patients.set_index("patient_id")["label"]
    row_labels = np.full(len(bank.images), -1, dtype=np.int64)
    row_patients = np.full(len(bank.images), -1, dtype=np.int64)
    for number, (patient, rows) in enumerate(all_rows.items()):
        row_patients[rows] = number
        if patient in label_of.index:
            row_labels[rows] = classes.index(label_of[patient])
    return _FoldData(
        train=train,
        validation=validation,
        test=patients[is_test],
        trained_on=sorted(train_val["patient_id"]),
        label_of=label_of,
        row_labels=row_labels,
        row_patients=row_patients,
        train_rows={p: all_rows[p] for p in train["patient_id"]},
    )


def _class_counts(settings: TrainSettings, classes: list[str], data: _FoldData) -> np.ndarray:
    """Training examples per class: patients for mil (one bag each), slices for hu2020."""
    if settings.model == "mil":
        return data.train["label"].map(classes.index).value_counts().reindex(range(len(classes)), fill_value=0).to_numpy()
    return np.bincount(data.row_labels[np.concatenate(list(data.train_rows.values()))], minlength=len(classes))


def _start_processes(settings: TrainSettings) -> tuple[torch.device, int, int]:
    """(device, world size, rank): one process, or one of torchrun's (WORLD_SIZE, RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(settings.device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    return device, world, rank


def _new_model(
    settings: TrainSettings, n_classes: int, fold_number: int, device: torch.device, world: int
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, nn.Module]:
    """(model, optimiser, schedule, the module a step calls), seeded by the fold."""
    torch.manual_seed(settings.seed * 1000 + fold_number + 1)
    model = build_model(settings.model, n_classes, settings.width, settings.dropout).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    step_module: nn.Module = _TrainingForward(model, settings.model == "mil")
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    return model, optimizer, scheduler, step_module


def _start_state(state_path: Path, identity: str, fold: int | str, model: nn.Module, optimizer, scheduler) -> dict:
    """The training state to go on from: the fold's checkpoint when it belongs to this run
    (`identity`), loaded into model, optimizer and scheduler; else a fresh one."""
    state = {
        "identity": identity,
        "epoch": -1,
        "best_loss": float("inf"),
        "best_epoch": -1,
        "best_state": None,
        "stale": 0,
        "history": [],
        "done": False,
    }
    saved = _saved_state(state_path, fold)
    if saved is None:
        return state
    if saved.get("identity") != identity:
        log.warning("fold %s: %s belongs to another run (settings, patients or slice bank changed); training afresh", fold, state_path)
        return state
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    log.info("fold %s: resuming after epoch %d", fold, saved["epoch"])
    return saved


@dataclass
class _Trainer:
    """What one optimisation step needs: the model, its wrapper for the step (distributed or
    not), optimiser, schedule, weight average and loss weights."""

    settings: TrainSettings
    model: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    averaged: nn.Module | None
    alpha: torch.Tensor
    device: torch.device
    amp: bool

    def epoch(self, loader, steps: int, where: str) -> tuple[list[float], int]:
        """One pass over `loader` (`steps` steps): (the steps' losses, slices seen). Logs
        `where` (fold and epoch) with the step reached every PROGRESS_SECONDS."""
        settings, device = self.settings, self.device
        self.model.train()
        losses, seen = [], 0
        last_report = time.perf_counter()
        for images, labels, groups in loader:
            if time.perf_counter() - last_report > PROGRESS_SECONDS:
                log.info("%s, step %d/%d", where, len(losses) + 1, steps)
                last_report = time.perf_counter()
            images = zscore(images.to(device, non_blocking=True))
            bags = groups if settings.model == "mil" else None
            if settings.augment:
                images = augment(images, bags)
            if settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels, groups = labels.to(device), groups.to(device)
            target = labels[_bag_starts(groups)] if settings.model == "mil" else labels
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                scale_logits = self.step_module(images, groups)
            loss = torch.stack([focal_cross_entropy(s, target, self.alpha, settings.focal_gamma) for s in scale_logits]).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            losses.append(float(loss.detach()))
            seen += len(images)
        return losses, seen


def _keep_epoch(state: dict, epoch: int, kept: nn.Module, val_loss: float, has_validation: bool) -> None:
    """Keep this epoch's weights when it is the best on validation so far, or, without
    validation patients, always (every epoch replaces the last, none stops early)."""
    if not has_validation or val_loss < state["best_loss"] - 1e-6:
        state.update(
            best_loss=val_loss,
            best_epoch=epoch,
            best_state={k: v.detach().cpu().clone() for k, v in kept.state_dict().items()},
            stale=0,
        )
    else:
        state["stale"] += 1


def train_fold(
    settings: TrainSettings,
    classes: list[str],
    bank_dir: Path | str,
    patients: pd.DataFrame,
    fold: int | str,
    work_dir: Path | str,
    outputs: dict[str, Path | str],
    threads: int = 1,
) -> pd.DataFrame:
    """Train on the patients not in `fold` (all patients for fold "final"); returns test predictions.

    `patients` has patient_id, label and fold. Writes outputs['model'], ['curves'] (TSV),
    ['curves_png'] and, for a cross-validation fold, ['predictions']. A checkpoint in `work_dir`
    after every epoch lets a rerun of the same run resume.
    """
    torch.set_num_threads(max(1, threads))
    device, world, rank = _start_processes(settings)
    fold_number = -1 if fold == "final" else int(fold)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    bank = SliceBank.load(bank_dir)
    data = _fold_data(settings, classes, bank, patients, fold_number)
    alpha = _class_weights(_class_counts(settings, classes, data)).to(device)

    model, optimizer, scheduler, step_module = _new_model(settings, len(classes), fold_number, device, world)
    state_path = work_dir / STATE_NAME
    identity = run_identity(settings, classes, fold, data.train, data.validation, bank, Path(bank_dir))
    state = _start_state(state_path, identity, fold, model, optimizer, scheduler)
    averaged, average_update = _weight_average(model, settings.ema_epochs)
    if averaged is not None and "averaged" in state:
        averaged.load_state_dict(state["averaged"])
    kept = averaged.module if averaged is not None else model  # what is validated and saved
    amp = bf16_autocast(settings.amp, device)
    trainer = _Trainer(settings, model, step_module, optimizer, scheduler, averaged, alpha, device, amp)
    metadata = {
        "model": settings.model,
        "classes": classes,
        "settings": asdict(settings),
        "fold": fold,
        "preprocessing": bank.preprocessing,
        "trained_on": data.trained_on,
    }
    resident = (
        DeviceBank(bank.images, data.row_labels, data.row_patients, device)
        if settings.bank_on_gpu and DeviceBank.fits(bank.images, device)
        else None
    )
    epoch = state["epoch"] + 1
    while not state["done"] and epoch < settings.max_epochs:
        torch.manual_seed(hash((settings.seed, fold_number, epoch)) % (2**31))
        batches = _epoch_batches(settings, data.train_rows, fold_number, epoch)
        # Every process must take the same number of steps, or one waits forever in all-reduce.
        batches = batches[: len(batches) // world * world][rank::world]
        if average_update is not None:
            average_update.steps_per_epoch = max(1, len(batches))
        loader = batch_source(Path(bank_dir), batches, data.row_labels, data.row_patients, device, settings, resident)
        start = time.perf_counter()
        losses, seen = trainer.epoch(loader, len(batches), f"fold {fold} epoch {epoch + 1}/{settings.max_epochs}")
        seconds = time.perf_counter() - start
        if len(data.validation):
            predictions = predict_patients(kept, metadata, bank, list(data.validation["patient_id"]), device, amp)
            val_loss, val_accuracy = _validation_loss(predictions, data.label_of, classes)
        else:
            val_loss, val_accuracy = float("nan"), float("nan")
        _keep_epoch(state, epoch, kept, val_loss, bool(len(data.validation)))
        state["history"].append(
            {
                "epoch": epoch,
                "steps": scheduler.last_epoch,
                "learning_rate": scheduler.get_last_lr()[0],
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "seconds": seconds,
                "slices_per_second": seen * world / max(seconds, 1e-9),
            }
        )
        state["done"] = state["stale"] >= settings.patience or epoch + 1 >= settings.max_epochs
        state.update(epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        if averaged is not None:
            state["averaged"] = averaged.state_dict()
        if rank == 0:
            _save_state(state_path, state)
        remaining = (settings.max_epochs - epoch - 1) * float(np.mean([h["seconds"] for h in state["history"]]))
        log.info(
            "fold %s epoch %d/%d: train loss %.4f, validation loss %.4f, accuracy %.3f, %.0f slices/s; ETA %.0f min at most",
            fold,
            epoch + 1,
            settings.max_epochs,
            state["history"][-1]["train_loss"],
            val_loss,
            val_accuracy,
            state["history"][-1]["slices_per_second"],
            remaining / 60,
        )
        epoch += 1

    if world > 1:
        torch.distributed.barrier()
    model.load_state_dict(state["best_state"])
    metadata["best_epoch"] = state["best_epoch"]
    result = pd.DataFrame()
    if rank == 0:
        save_model(outputs["model"], model, metadata)
        write_curves(state["history"], Path(outputs["curves"]), Path(outputs["curves_png"]), f"{settings.model}, fold {fold}")
        if fold != "final":
            result = _test_predictions(model, metadata, bank, data, classes, fold_number, device, amp)
            write_predictions(result, outputs["predictions"])
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def _test_predictions(
    model: nn.Module,
    metadata: dict,
    bank: SliceBank,
    data: _FoldData,
    classes: list[str],
    fold_number: int,
    device: torch.device,
    amp: bool,
) -> pd.DataFrame:
    """The fold's held-out patients' predictions, as rows of predictions.tsv."""
    result = with_decisions(predict_patients(model, metadata, bank, list(data.test["patient_id"]), device, amp), classes)
    result.insert(1, "label", [data.label_of[p] for p in result["patient_id"]])
    result.insert(2, "fold", fold_number)
    return result
