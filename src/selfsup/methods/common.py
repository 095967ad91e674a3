"""What the trainer hands a method, and what a method hands back."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Progress:
    """Where training stands; schedules are pure functions of it."""

    step: int  # optimizer steps taken before this one
    total_steps: int
    epochs: int  # epochs in the whole run

    @property
    def fraction(self) -> float:
        """0 at the first step, approaching 1 at the last."""
        return self.step / max(1, self.total_steps)

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional (e.g. 2.5 halfway through the third)."""
        return self.fraction * self.epochs


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
