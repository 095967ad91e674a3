"""Relative patch location, context prediction (Doersch, Gupta, Efros 2015).

    x = view(x)                                       # a light random crop and flip
    centre, neighbour, where = pair(x)                # centre tile of a 3x3 grid with gaps and
                                                      # jitter, one of its 8 neighbours, which one
    centre, neighbour = guard(centre), guard(neighbour)   # no chromatic-aberration shortcut
    h = concat(f(centre), f(neighbour))               # one encoder for both (siamese)
    loss = cross_entropy(classifier(h), where)        # 8-way
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import RunConfig, merge_dicts, ranged
from ..nn import mlp
from ..views import (IMAGENET_MEAN, IMAGENET_STD, ViewConfig, chromatic_guard, light_views, make_view,
                     relative_location_pair, tile_grid)
from ..views.ops import normalize
from . import rotation
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    # Fractions of a grid cell. Doersch et al.: 96-pixel patches 48 pixels apart, each moved by
    # up to 7 pixels: at least 34 of their 144-pixel pitch between patches, 7 of jitter.
    gap: float = ranged(0.24, 0.0, 0.9)
    jitter: float = ranged(0.05, 0.0, 0.45)
    # "drop": keep one random colour channel per patch; "project": remove green-magenta (sec. 3.1).
    # Not reproduced from Doersch's code: downsampling a third of the patches (against pixelation
    # cues) and normalising each patch to zero mean and a fixed RMS.
    chromatic: Literal["drop", "project", "none"] = "drop"
    hidden_dim: int = ranged(4096, 1, None)  # fc7 of the paper's pair network
    views: ViewConfig = field(default_factory=light_views)


def _cifar() -> dict:
    # No CIFAR recipe in the paper: RotNet's (rotation.py), with a smaller pair classifier.
    return merge_dicts(rotation.PRESETS["cifar"](), {"relative-location": {"hidden_dim": 512}})


def _imagenet() -> dict:
    return rotation.PRESETS["imagenet"]()  # Kolesnikov et al. 2019's ResNet-50 recipe


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_config(cfg: RunConfig) -> None:
    """Refuse an image too small for the grid before any data is read (called by config.resolve)."""
    tile_grid(cfg.data.image_size, cfg.method_config.gap, cfg.method_config.jitter, "relative-location")


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.grid = tile_grid(image_size, config.gap, config.jitter, "relative-location")
        self.backbone = backbone
        self.classifier = mlp([2 * backbone.feature_dim, config.hidden_dim, 8])

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        pixels = make_view(batch.images, self.config.views, self.image_size, batch.generator,
                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # (B, 3, S, S) in [0, 1]
        centre, neighbour, labels = relative_location_pair(pixels, self.grid, batch.generator)  # (B, 3, t, t) x2
        tiles = chromatic_guard(torch.cat([centre, neighbour]), self.config.chromatic, batch.generator)
        tiles = normalize(tiles, IMAGENET_MEAN, IMAGENET_STD).contiguous(memory_format=torch.channels_last)
        f_centre, f_neighbour = self.backbone(tiles).chunk(2)  # (B, D) each
        logits = self.classifier(torch.cat([f_centre, f_neighbour], dim=1))  # (B, 8)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return MethodOutput(loss=loss, metrics={"pretext_acc": accuracy}, embedding=f_centre.detach())

    def encoder(self) -> Backbone:
        return self.backbone
