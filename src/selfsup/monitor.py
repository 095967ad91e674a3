"""Is the representation collapsing? Two cheap statistics of a batch of embeddings.

- std ratio: the standard deviation over the batch of each dimension of the L2-normalised
  embeddings, averaged over dimensions, times sqrt(d). Embeddings spread evenly over the sphere
  give about 1; embeddings that all point the same way give 0 (Grill et al. 2020, and the
  `std` monitor of lightly).
- effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular values of
  the centred embedding matrix; from 1 (all variance in one direction) to min(B, d).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def std_ratio(embeddings: torch.Tensor) -> torch.Tensor:
    z = F.normalize(embeddings.float(), dim=1)
    return z.std(dim=0).mean() * z.shape[1] ** 0.5


@torch.no_grad()
def effective_rank(embeddings: torch.Tensor) -> torch.Tensor:
    z = embeddings.float()
    if not torch.isfinite(z).all():  # a diverged step: no rank to measure (the trainer stops the run)
        return torch.full((), float("nan"), device=z.device)
    z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    if s.sum() <= 0:
        return torch.ones((), device=z.device)
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())
