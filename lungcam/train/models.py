"""The classifiers: Hu et al. 2020's multi-scale CAM network, and a multiple-instance variant.

`Hu2020Net` follows Hu et al., IEEE Access 2020 as their public code builds it: a VGG-16-style
stack with batch norm (2+2+3+3+3 conv3x3 layers, widths 32/64/128/256/256, max-pool after each
block); after pool3, pool4 and pool5 a head (1x1 conv to one map per class, batch norm, ReLU)
whose output is that scale's class activation map; dropout; global max pooling of each map to
logits. Training averages the three scales' losses, inference their logits. Every slice is a
sample with its patient's label.

`AttentionMIL` keeps that network per slice and pools a patient's slice logits with learned
attention weights (Ilse et al., ICML 2018), trained with the patient label only: a lesion-free
slice of a COVID-19 scan can get a small weight instead of being forced to say COVID-19. Its
slice maps are the same CAMs, so localisation works the same way, weighted by attention.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BLOCKS = (2, 2, 3, 3, 3)
WIDTHS = (32, 64, 128, 256, 256)
SCALES = ("pool3", "pool4", "pool5")


def _block(in_channels: int, out_channels: int, layers: int) -> nn.Sequential:
    modules = []
    for i in range(layers):
        modules += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    modules.append(nn.MaxPool2d(2))
    return nn.Sequential(*modules)


class Hu2020Net(nn.Module):
    """Multi-scale weakly supervised classifier; `width` scales the channel widths (1 = paper)."""

    def __init__(self, n_classes: int, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        widths = [max(4, int(round(w * width))) for w in WIDTHS]
        channels = [1] + widths
        self.blocks = nn.ModuleList(_block(channels[i], channels[i + 1], BLOCKS[i]) for i in range(5))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], n_classes, 1, bias=False), nn.BatchNorm2d(n_classes), nn.ReLU(inplace=True))
            for i in (2, 3, 4)
        )
        self.dropout = nn.Dropout(dropout)
        self.n_classes = n_classes

    def features_and_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features after pool3, pool4, pool5 and the class activation maps computed from them."""
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index >= 2:
                features.append(x)
        return features, [head(feature) for head, feature in zip(self.heads, features)]

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Class activation maps at pool3, pool4 and pool5: each (batch, classes, h, w)."""
        return self.features_and_maps(x)[1]

    def pool(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Logits per scale (scales, batch, classes): global max pooling of the dropped-out maps."""
        return torch.stack([torch.amax(self.dropout(m), dim=(2, 3)) for m in maps])

    def scale_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.maps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits: the mean of the three scales' logits."""
        return self.scale_logits(x).mean(dim=0)


class AttentionMIL(nn.Module):
    """Hu2020Net per slice; gated attention over a patient's slices pools the slice logits."""

    def __init__(self, n_classes: int, width: float = 1.0, dropout: float = 0.5, attention: int = 64):
        super().__init__()
        self.slices = Hu2020Net(n_classes, width, dropout)
        embedding = max(4, int(round(WIDTHS[-1] * width)))
        self.embed = nn.AdaptiveMaxPool2d(1)
        self.attention_v = nn.Linear(embedding, attention)
        self.attention_u = nn.Linear(embedding, attention)
        self.attention_w = nn.Linear(attention, 1)
        self.n_classes = n_classes

    def _slice_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale logits (scales, slices, classes), embeddings (slices, features)) of one bag."""
        features, maps = self.slices.features_and_maps(x)
        return self.slices.pool(maps), self.embed(features[-1]).flatten(1)

    def attention(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights over the slices of one bag (gated attention)."""
        gate = torch.tanh(self.attention_v(embeddings)) * torch.sigmoid(self.attention_u(embeddings))
        return torch.softmax(self.attention_w(gate).squeeze(-1), dim=0)

    def bag_scale_logits(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patient logits per scale (scales, classes), attention (slices,)) for one bag."""
        logits, embeddings = self._slice_outputs(bag)
        weights = self.attention(embeddings)
        return torch.einsum("s,ksc->kc", weights, logits), weights

    def bags_scale_logits(self, slices: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Logits per scale (scales, bags, classes) of several bags in one batch; `groups` numbers
        each slice's bag, and a bag's slices are contiguous. Batch normalisation sees all bags."""
        logits, embeddings = self._slice_outputs(slices)
        counts = torch.unique_consecutive(groups, return_counts=True)[1].tolist()
        pooled = [
            torch.einsum("s,ksc->kc", self.attention(e), logit) for e, logit in zip(embeddings.split(counts), logits.split(counts, dim=1))
        ]
        return torch.stack(pooled, dim=1)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        """Patient logits (classes,): the mean over scales of the attention-pooled slice logits."""
        return self.bag_scale_logits(bag)[0].mean(dim=0)


def build_model(name: str, n_classes: int, width: float, dropout: float) -> nn.Module:
    if name == "hu2020":
        return Hu2020Net(n_classes, width, dropout)
    if name == "mil":
        return AttentionMIL(n_classes, width, dropout)
    raise ValueError(f"unknown model {name!r}; use hu2020 or mil")


def focal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Class-weighted focal-style cross entropy, mean over samples: alpha_c (1 - p_t)^gamma CE.

    alpha_c = N / N_c (samples over samples of class c) balances the classes.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_pt = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return (alpha[target] * (1.0 - log_pt.exp()) ** gamma * -log_pt).mean()
