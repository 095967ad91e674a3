"""Ego-motion equivariance (Jayaraman & Grauman 2015) and its invariant special case (DrLIM,
Hadsell, Chopra & LeCun 2006).

For a pair (x, x') whose ego-motion falls in class g, the learned linear map M_g should carry the
feature of the earlier frame to that of the later one, z' ≈ M_g z, and a contrastive margin keeps
that from being trivially true:

    loss = |M_g z - z'|^2                                 the map of its motion predicts z'
         + max(0, margin - |M_g z - z'_other|)^2           ... and not a frame of another pair
         + w * mean_{h != g} max(0, margin - |M_h z - z'|)^2   ... nor does another class's map

With every M fixed to the identity and w = 0 this is DrLIM's invariance loss: temporal
neighbours pulled together, other frames pushed at least `margin` apart.
"""
from __future__ import annotations

import torch

from .precision import float32_math, full_precision


def predict(maps: torch.Tensor, motion_class: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """M_g z for each sample: maps (G, D, D), motion_class (B,), z (B, D) -> (B, D)."""
    return torch.einsum("bij,bj->bi", maps[motion_class], z)


@float32_math
def equivariance_loss(z: torch.Tensor, z_later: torch.Tensor, motion_class: torch.Tensor, maps: torch.Tensor,
                      margin: float, other_map_weight: float = 1.0) -> torch.Tensor:
    """The loss above, averaged over the batch. z, z_later: (B, D); motion_class: (B,) in [0, G);
    maps: (G, D, D). The "frame of another pair" of sample i is the later frame of sample
    i - B//2 (mod B; a deterministic pairing; batches hold random samples). A batch of one (a
    process's share under torchrun) has no other pair: that term is left out."""
    z, z_later = full_precision(z), full_precision(z_later)
    predicted = predict(maps, motion_class, z)  # (B, D)
    positive = (predicted - z_later).pow(2).sum(1)
    loss = positive.mean()
    if len(z_later) > 1:
        other_frame = z_later.roll(len(z_later) // 2, dims=0)
        loss = loss + (margin - (predicted - other_frame).norm(dim=1)).clamp(min=0).pow(2).mean()
    if other_map_weight > 0 and len(maps) > 1:
        every = torch.einsum("gij,bj->bgi", maps, z)  # (B, G, D): every class's map applied
        distance = (every - z_later[:, None]).norm(dim=2)  # (B, G)
        other = torch.ones_like(distance, dtype=torch.bool).scatter_(1, motion_class[:, None], False)
        hinge = (margin - distance).clamp(min=0).pow(2)
        loss = loss + other_map_weight * (hinge * other).sum(1).div(len(maps) - 1).mean()
    return loss


def closest_map(z: torch.Tensor, z_later: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """(B,) the class whose map best predicts z_later from z (to measure the task's accuracy)."""
    every = torch.einsum("gij,bj->bgi", maps, z)
    return (every - z_later[:, None]).norm(dim=2).argmin(1)
