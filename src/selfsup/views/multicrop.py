"""Multi-crop views (SwAV, Caron et al. 2020; DINO, Caron et al. 2021) and the view recipes of the
momentum-teacher methods, as `ViewConfig`s.

`multi_crop` makes V global crops at the training size and L local crops at a smaller size, each
with its own recipe (and so its own crop scale range), on the batch's device with `make_view`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .pipeline import ViewConfig, make_view


def byol_view_1() -> ViewConfig:
    """BYOL's first view (Grill et al. 2020, table 6): colour jitter (0.4, 0.4, 0.2, 0.1) with
    probability 0.8, grayscale 0.2, blur always, never solarized. MoCo v3 uses the same pair."""
    return ViewConfig(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_prob=1.0, solarize_prob=0.0)


def byol_view_2() -> ViewConfig:
    """BYOL's second view: as the first, but blurred with probability 0.1 and solarized with 0.2."""
    return dataclasses.replace(byol_view_1(), blur_prob=0.1, solarize_prob=0.2)


# DINO's recipe (main_dino.py, DataAugmentationDINO): BYOL's asymmetric pair on global crops of
# scale (0.4, 1), and local crops of scale (0.05, 0.4) blurred with probability 0.5.
def dino_global_view_1() -> ViewConfig:
    return dataclasses.replace(byol_view_1(), crop_scale=(0.4, 1.0))


def dino_global_view_2() -> ViewConfig:
    return dataclasses.replace(byol_view_2(), crop_scale=(0.4, 1.0))


def dino_local_view() -> ViewConfig:
    return dataclasses.replace(byol_view_1(), crop_scale=(0.05, 0.4), blur_prob=0.5)


def multi_crop(images_u8: torch.Tensor, global_views: Sequence[ViewConfig], n_global: int, global_size: int,
               local_view: ViewConfig, n_local: int, local_size: int,
               generator: torch.Generator) -> list[torch.Tensor]:
    """`n_global` crops of `global_size` (the i-th with recipe `global_views[i % len(global_views)]`),
    then `n_local` crops of `local_size` with `local_view`: a list of (B, 3, size, size) tensors."""
    crops = [make_view(images_u8, global_views[i % len(global_views)], global_size, generator)
             for i in range(n_global)]
    crops += [make_view(images_u8, local_view, local_size, generator) for _ in range(n_local)]
    return crops
