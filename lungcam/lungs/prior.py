"""A learned lung prior: a small 2D U-Net that labels each lung on axial slices.

The classical method finds the aerated lung well but can lose what does not look like lung:
a dense pleural-based consolidation, or a lower lobe behind a low diaphragm dome. The prior is
trained on phantoms whose truth (lungs with their lesions) is known (lungcam.lungs.prior_training),
so it has learnt the lungs' shape rather than their density. `refine` adds to the classical
labels the prior's regions that touch them: the classical boundary stays where it is, and
whatever the prior adds keeps the prior's side (1 = right, 2 = left).

Slices are windowed to [-1000, 300] HU and resized to `size` x `size` pixels for the network;
its class scores are resized back to the scan's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from lungcam.core.config import settings_from
from lungcam.core.geometry import crop_box
from lungcam.lungs.threshold import square_dilation, square_erosion, touching

WINDOW_HU = (-1000.0, 300.0)
CLASSES = 3  # background, right lung, left lung
RESOURCE = Path("resources") / "lung_prior.pt"  # where rule train_lung_prior writes the weights


class LungPriorMissing(FileNotFoundError):
    """The configured prior weights do not exist; the message says how to make them."""


@dataclass(frozen=True)
class PriorSettings:
    """Config section `lungs.prior` (its `train` part is lungcam.lungs.prior_training's)."""

    use: bool
    weights: str
    min_log_odds: float
    min_width_mm: float

    @classmethod
    def from_config(cls, section: dict) -> PriorSettings:
        return settings_from(cls, section)

    def path(self) -> Path:
        """The weights file: the configured one, else the one the workflow trains."""
        return Path(self.weights) if self.weights else RESOURCE

    def require(self) -> Path:
        """The weights file, or an error that says how to make it."""
        path = self.path()
        if not path.is_file():
            raise LungPriorMissing(
                f"lung prior weights {path} not found: make them with `snakemake train_lung_prior` "
                "(or set lungs.prior.use: false for the classical mask alone)"
            )
        return path


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class LungPriorNet(nn.Module):
    """U-Net: `levels` resolutions, `channels` features at the finest, doubling per level."""

    def __init__(self, channels: int = 16, levels: int = 4) -> None:
        super().__init__()
        widths = [channels * 2**level for level in range(levels)]
        self.down = nn.ModuleList(_block(i, o) for i, o in zip([1, *widths[:-1]], widths))
        self.rise = nn.ModuleList(nn.ConvTranspose2d(o, i, 2, stride=2) for i, o in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(_block(2 * w, w) for w in widths[:-1])
        self.head = nn.Conv2d(channels, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else functional.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(len(self.up))):
            x = self.up[level](torch.cat([skips[level], self.rise[level](x)], dim=1))
        return self.head(x)


def windowed(hu_slices: np.ndarray, size: int) -> torch.Tensor:
    """(z, y, x) HU -> (z, 1, size, size) network input in [0, 1]."""
    low, high = WINDOW_HU
    x = torch.from_numpy(np.ascontiguousarray(hu_slices, dtype=np.float32))[:, None]
    x = ((x - low) / (high - low)).clamp_(0.0, 1.0)
    return functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def save_prior(model: LungPriorNet, size: int, path: Path | str, trained_on: dict) -> None:
    """Weights with the shape of the network and what it was trained on."""
    channels = model.head.in_channels
    torch.save(
        {"state": model.state_dict(), "channels": channels, "levels": len(model.down), "size": size, "trained_on": trained_on},
        path,
    )


def load_prior(path: Path | str) -> tuple[LungPriorNet, int]:
    """(network in eval mode, input size) from a file written by `save_prior`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = LungPriorNet(saved["channels"], saved["levels"])
    model.load_state_dict(saved["state"])
    return model.eval(), int(saved["size"])


def resized_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(z, y, x) labels resized slice by slice to `size` (nearest neighbour)."""
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))[:, None]
    return functional.interpolate(tensor, size=tuple(size), mode="nearest")[:, 0].numpy()


def trained_on(path: Path | str) -> dict:
    """What the prior in `path` was trained on (save_prior's `trained_on`)."""
    return torch.load(path, map_location="cpu", weights_only=True)["trained_on"]


def _fine_span(coarse: np.ndarray, fine_size: int) -> slice:
    """The scan pixels along one axis whose bilinear sources (align_corners=False) include one of
    the network grid's pixels where `coarse` is true; empty when none is."""
    present = np.nonzero(coarse)[0]
    if not len(present):
        return slice(0, 0)
    source = np.clip((np.arange(fine_size) + 0.5) * len(coarse) / fine_size - 0.5, 0, None)
    low = np.minimum(np.floor(source).astype(int), len(coarse) - 1)
    high = np.minimum(low + 1, len(coarse) - 1)
    near = ((low >= present[0]) & (low <= present[-1])) | ((high >= present[0]) & (high <= present[-1]))
    inside = np.nonzero(near)[0]
    return slice(int(inside[0]), int(inside[-1]) + 1)


@torch.inference_mode()
def predict_prior(hu_lps: np.ndarray, model: LungPriorNet, size: int, min_log_odds: float = 0.0, batch: int = 8) -> np.ndarray:
    """Prior labels (0, 1 = right, 2 = left) of a (z, y, x) HU volume, on the scan's own grid.

    A voxel is lung where the log-odds of its likelier side against background exceed
    `min_log_odds`: training weighs lesion pixels heavily, which pushes the prior's outline out
    into the tissue around a consolidation, and a positive margin pulls it back. The class scores
    are resized bilinearly from the network's grid to the scan's pixels first, so that the
    outline is as fine as the scan's. That resizing is done only over the scan pixels whose
    network-grid neighbours hold lung: the log-odds of a resized pixel is at most the weighted
    mean of theirs, so no pixel outside can be lung. Channels-last memory and small batches run
    the CPU's convolutions fastest."""
    model = model.to(memory_format=torch.channels_last)
    labels = np.zeros(hu_lps.shape, np.uint8)
    height, width = hu_lps.shape[1:]
    for k in range(0, len(hu_lps), batch):
        scores = model(windowed(hu_lps[k : k + batch], size).contiguous(memory_format=torch.channels_last)).contiguous()
        coarse = (torch.maximum(scores[:, 1], scores[:, 2]) - scores[:, 0] > min_log_odds).any(dim=0).numpy()
        rows, columns = _fine_span(coarse.any(axis=1), height), _fine_span(coarse.any(axis=0), width)
        if rows.stop == rows.start or columns.stop == columns.start:
            continue
        # grid_sample's normalised coordinate of scan pixel i is (2i + 1) / n - 1, whatever the
        # network's size: the same sampling points as interpolate(align_corners=False).
        ys = (2 * torch.arange(rows.start, rows.stop, dtype=torch.float32) + 1) / height - 1
        xs = (2 * torch.arange(columns.start, columns.stop, dtype=torch.float32) + 1) / width - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand(len(scores), -1, -1, -1)
        fine = functional.grid_sample(scores, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
        background, right, left = fine[:, 0], fine[:, 1], fine[:, 2]
        side = np.where(right >= left, 1, 2).astype(np.uint8)
        labels[k : k + batch, rows, columns] = np.where(np.maximum(right, left) - background > min_log_odds, side, 0)
    return labels


def refine(labels: np.ndarray, prior: np.ndarray, spacing, min_width_mm: float) -> np.ndarray:
    """The classical labels plus the prior's regions that touch them, with the prior's side.

    `prior` is on the labels' grid (predict_prior). Only what is at least `min_width_mm` wide
    in-plane is added (an opening with a square of an odd number of pixels that wide): the
    prior's outline strays a little from every lung's boundary, a thin rim that is not lung the
    classical method missed. Voxels the classical labels hold keep their label."""
    extra = (prior > 0) & (labels == 0)
    if not extra.any():
        return labels
    width = 2 * round(min_width_mm / spacing[1] / 2) + 1
    box = crop_box(extra, (1, width + 1, width + 1))
    cores = square_erosion(extra[box], width)
    if not cores.any():
        return labels
    # The opening's dilation and the rest run on the box around what survived the erosion,
    # which is far smaller than the box around the prior's whole stray rim.
    inner = crop_box(cores, (1, width + 1, width + 1))
    near = tuple(slice(outer.start + part.start, outer.start + part.stop) for outer, part in zip(box, inner))
    added = touching(square_dilation(cores[inner], width), labels[near] > 0)
    if not added.any():
        return labels
    refined = labels.copy()
    refined[near][added] = prior[near][added]
    return refined
