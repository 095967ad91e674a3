"""Jigsaw puzzles (Noroozi & Favaro 2016): put 9 shuffled tiles back in order.

    x = view(x)                                        # a light random crop and flip
    tiles = grid(x)                                    # 3x3 tiles with gaps and jitter
    p = random index into P fixed permutations         # P chosen far apart in Hamming distance
    tiles = standardize(shuffle(tiles, perms[p]))      # each tile to zero mean, unit deviation
    h = concat(g(f(tile)) for tile in tiles)           # one encoder f and fc6 g for all 9 tiles
    loss = cross_entropy(classifier(h), p)             # P-way
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import RunConfig, merge_dicts, ranged
from ..nn import mlp
from ..views import (ViewConfig, extract_tiles, jigsaw_permutations, light_views, make_view, min_hamming_distance,
                     sample_tile_corners, shuffle_tiles, standardize_tiles, tile_grid)
from . import rotation
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    permutations: int = ranged(100, 2, 10_000)  # P (the paper: 100 to 1000; 1000 transferred best)
    permutation_seed: int = 0  # the set is a function of (P, seed) and is saved in checkpoints
    # Fractions of a grid cell. The paper: 64-pixel tiles at random places in 75-pixel cells,
    # i.e. 11 pixels to share between gap and jitter; here 5 of gap and up to 3 of jitter.
    gap: float = ranged(0.07, 0.0, 0.9)
    jitter: float = ranged(0.04, 0.0, 0.45)
    standardize_tiles: bool = True  # the paper normalises each tile on its own
    tile_dim: int = ranged(512, 1, None)  # fc6, per tile
    hidden_dim: int = ranged(4096, 1, None)  # fc7, on the 9 concatenated tiles
    # Against chromatic-aberration shortcuts: 30 % of the images gray, as the PyTorch port
    # (bbrattoli/JigsawPuzzlePytorch). The authors' Caffe code turns 50 % gray, projects half of the
    # rest off the green-magenta axis and shifts each colour channel by 0-2 px; not done here.
    views: ViewConfig = field(default_factory=lambda: light_views(grayscale_prob=0.3))


def _cifar() -> dict:
    # No CIFAR recipe in the paper: RotNet's (rotation.py), with smaller fc6 and fc7.
    return merge_dicts(rotation.PRESETS["cifar"](), {"jigsaw": {"tile_dim": 128, "hidden_dim": 512}})


def _imagenet() -> dict:
    return rotation.PRESETS["imagenet"]()  # Kolesnikov et al. 2019's ResNet-50 recipe


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_config(cfg: RunConfig) -> None:
    """Refuse an image too small for the grid before any data is read (called by config.resolve)."""
    tile_grid(cfg.data.image_size, cfg.method_config.gap, cfg.method_config.jitter, "jigsaw")


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.grid = tile_grid(image_size, config.gap, config.jitter, "jigsaw")
        self.backbone = backbone
        self.tile_head = nn.Sequential(nn.Linear(backbone.feature_dim, config.tile_dim), nn.ReLU())
        self.classifier = mlp([9 * config.tile_dim, config.hidden_dim, config.permutations])
        permutations = jigsaw_permutations(config.permutations, config.permutation_seed)  # (P, 9)
        self.register_buffer("permutations", permutations)
        self.register_buffer("min_hamming", torch.tensor(float(min_hamming_distance(permutations))))

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        x = make_view(batch.images, self.config.views, self.image_size, batch.generator)  # (B, 3, S, S)
        n = len(x)
        corners = sample_tile_corners(n, self.grid, batch.generator, x.device)  # (B, 9, 2)
        tiles = extract_tiles(x, corners, self.grid.tile)  # (B, 9, 3, t, t)
        labels = torch.randint(0, self.config.permutations, (n,), generator=batch.generator, device=x.device)
        tiles = shuffle_tiles(tiles, self.permutations[labels])
        if self.config.standardize_tiles:
            tiles = standardize_tiles(tiles)
        pooled = self.backbone(tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last))  # (9B, D)
        logits = self.classifier(self.tile_head(pooled).view(n, -1))  # (B, 9 * tile_dim) -> (B, P)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return MethodOutput(loss=loss, metrics={"pretext_acc": accuracy, "permutation_min_hamming": self.min_hamming},
                            embedding=pooled.detach())

    def encoder(self) -> Backbone:
        return self.backbone
