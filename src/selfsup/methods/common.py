"""What the trainer hands a method, and what a method hands back."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    images: torch.Tensor  # (B, S, S, 3) uint8 on the model's device
    generator: torch.Generator  # all randomness of views and masks comes from here


@dataclass
class MethodOutput:
    loss: torch.Tensor  # scalar, to minimise
    # Scalars to log (kept on the device; the trainer syncs only when it prints).
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # (B, d) the vectors the loss compares (e.g. projections), for the collapse monitor.
    embedding: torch.Tensor | None = None
