"""The torch device a job runs on (config `train.device`, `cam.device`)."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but torch sees no GPU")
    return torch.device(name)
