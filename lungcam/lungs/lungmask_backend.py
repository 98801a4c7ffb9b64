"""Lung masks with lungmask (Hofmanninger et al., Eur Radiol Exp 2020), offline-ready.

lungmask downloads its weights from GitHub on first use; compute nodes of a cluster often have
no internet. Weights are therefore resolved in order: a configured file, the torch hub cache
(where lungmask itself would have put them), then `resources/lungmask/` (filled once by the
workflow's download rule on a node with internet). Without any, the error says how to provide
them. Labels follow lungmask: 1 = right lung, 2 = left lung; LTRCLobes gives five lobes, fused
with R231 to fill lung the lobe model misses.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungcam.core.config import settings_from

# lungmask's release files (lungmask.mask.MODEL_URLS), kept here so that resolving and
# downloading weights does not need torch.
MODEL_URLS = {
    "R231": "https://github.com/JoHof/lungmask/releases/download/v0.0/unet_r231-d5d2fc3d.pth",
    "LTRCLobes": "https://github.com/JoHof/lungmask/releases/download/v0.0/unet_ltrclobes-3a07043d.pth",
    "R231CovidWeb": "https://github.com/JoHof/lungmask/releases/download/v0.0/unet_r231covid-0de78a7e.pth",
}
RESOURCE_DIR = Path("resources") / "lungmask"
# LTRCLobes labels: 1 left upper, 2 left lower, 3 right upper, 4 right middle, 5 right lower.
LOBE_SIDE = np.array([0, 2, 2, 1, 1, 1], dtype=np.uint8)


class LungmaskWeightsError(FileNotFoundError):
    """lungmask weights are not available offline; the message says how to provide them."""


@dataclass(frozen=True)
class LungmaskSettings:
    """Config section `lungs.lungmask`."""

    model: str
    weights: str
    weights_url: str
    fill_weights: str
    batch_size: int
    force_cpu: bool

    @classmethod
    def from_config(cls, section: dict) -> LungmaskSettings:
        return settings_from(cls, section)

    def url(self, model: str | None = None) -> str:
        """Download URL of a model's weights (the configured override applies to the main model)."""
        model = model or self.model
        return self.weights_url if (self.weights_url and model == self.model) else MODEL_URLS[model]


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps a download: $TORCH_HOME/hub/checkpoints."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints" / Path(url).name


def weights_path(
    settings: LungmaskSettings, model: str | None = None, configured: str | None = None, resources: Path = RESOURCE_DIR
) -> Path:
    """The weights file the workflow will use for `model` (it may not exist yet).

    A configured path wins; otherwise an existing torch hub checkpoint; otherwise the file the
    download rule writes into `resources/`.
    """
    configured = settings.weights if configured is None else configured
    if configured:
        return Path(configured)
    url = settings.url(model)
    cached = torch_hub_checkpoint(url)
    return cached if cached.is_file() else resources / Path(url).name


def require_weights(path: Path, model: str, url: str) -> Path:
    if not Path(path).is_file():
        raise LungmaskWeightsError(
            f"lungmask weights for model {model} not found at {path}. Without internet they cannot be "
            f"downloaded at run time: on a machine with internet run "
            f"`snakemake download_lungmask_weights` (writes {RESOURCE_DIR}/), or fetch {url} yourself "
            "and set lungs.lungmask.weights to the file."
        )
    return Path(path)


def download_weights(url: str, target: Path | str) -> Path:
    """Download `url` (http(s) or file://) to `target`, checking torch hub's hash-in-name.

    Release files are named `name-<first hex digits of sha256>.pth`; a mismatch means a broken or
    tampered download and is an error.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        with urllib.request.urlopen(url) as response:
            shutil.copyfileobj(response, tmp)
    expected = re.search(r"-([0-9a-f]{6,})\.pth?$", Path(url).name)
    if expected:
        digest = hashlib.sha256(Path(tmp.name).read_bytes()).hexdigest()
        if not digest.startswith(expected.group(1)):
            os.unlink(tmp.name)
            raise ValueError(f"{url}: sha256 {digest[:12]}... does not match the {expected.group(1)} in its name")
    os.replace(tmp.name, target)
    return target


def segment_lungmask(
    hu_lps: np.ndarray, settings: LungmaskSettings, weights: Path, fill_weights: Path | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(lung labels 0/1/2, lobe labels 0-5 or None) of an LPS (z, y, x) HU volume.

    Runs on the GPU when torch sees one (unless force_cpu).
    """
    from lungmask.mask import LMInferer

    inferer = LMInferer(
        modelpath=str(weights),
        fillmodel_path=str(fill_weights) if fill_weights else None,
        force_cpu=settings.force_cpu,
        batch_size=settings.batch_size,
        tqdm_disable=True,
    )
    labels = inferer.apply(hu_lps).astype(np.uint8)
    if settings.model == "LTRCLobes":
        return LOBE_SIDE[np.clip(labels, 0, 5)], labels
    return labels, None
