"""A weight file with lungmask R231's exact architecture whose output can be predicted.

Real weights cannot be downloaded in the test environment. Random weights would exercise the
code but say nothing about geometry or sides, so these weights route the input intensity
through the U-Net (identity centre taps along the first encoder block, the skip connection and
the last decoder block; every other weight zero) and the final 1x1 convolution classifies it
into bands with ReLU ramps. lungmask scales HU to x = (HU + 1024) / 1624, so:
  HU -500 (x 0.32) -> label 1 (right lung), HU -200 (x 0.51) -> label 2 (left lung),
  air (-1000) and soft tissue (+40) -> 0.
A test volume painted with those values must come back with the same labels in the same places.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

RIGHT_HU, LEFT_HU, TISSUE_HU, AIR_HU = -500.0, -200.0, 40.0, -1000.0
RAMPS = (0.2, 0.4, 0.58)  # feature k = relu(x - RAMPS[k])


def r231_architecture(n_classes: int = 3):
    from lungmask.resunet import UNet

    return UNet(n_classes=n_classes, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)


def band_classifier(n_classes: int = 3, right: int = 1, left: int = 2):
    """R231 architecture (3 classes) or LTRCLobes (6): painted right lung -> class `right`,
    left lung -> class `left`, everything else -> 0."""
    import torch

    model = r231_architecture(n_classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        first = model.down_path[0].block
        for k, ramp in enumerate(RAMPS):
            first[0].weight[k, 0, 1, 1] = 1.0
            first[0].bias[k] = -ramp
            first[3].weight[k, k, 1, 1] = 1.0
        last_block = model.up_path[-1].conv_block.block
        bridge = model.up_path[-1].up[1].out_channels  # skip channels follow the upsampled ones
        for k in range(len(RAMPS)):
            last_block[0].weight[k, bridge + k, 1, 1] = 1.0
            last_block[3].weight[k, k, 1, 1] = 1.0
        model.last.bias[0] = 0.5
        model.last.bias[[c for c in range(n_classes) if c not in (0, right, left)]] = -100.0
        model.last.weight[right, 0, 0, 0], model.last.weight[right, 1, 0, 0] = 10.0, -30.0
        model.last.weight[left, 1, 0, 0], model.last.weight[left, 2, 0, 0] = 10.0, -40.0
    return model.eval()


def write_weights(folder: Path, stem: str = "unet_r231", **classifier) -> Path:
    """Save the state dict as `<stem>-<sha256 prefix>.pth`, named like lungmask's releases."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f"{stem}.tmp"
    torch.save(band_classifier(**classifier).state_dict(), scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]
    target = folder / f"{stem}-{digest}.pth"
    scratch.rename(target)
    return target
