"""Contrastive losses: a view must pick its positive out of negatives.

Negatives may come from all processes: keys are gathered with `dist.gather_with_grad`, which is
the identity in one process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) = a·b / (|a||b|) along the last dimension."""
    return F.cosine_similarity(a, b, dim=-1)


def nt_xent_logits(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of NT-Xent (SimCLR, Chen et al. 2020, eq. 1) and the column of each row's positive.

    z_a, z_b: (n, d) embeddings of two views of the same n images on this process. Each of the 2n
    local views is compared by cosine similarity / temperature with all 2N views of every process;
    its own column is set to -inf, the other view of its image is the positive, and the remaining
    2N - 2 views are its negatives. Returns logits (2n, 2N) and positives (2n,).
    """
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b])
    z = F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)  # (2n, d)
    keys = dist.gather_with_grad(z)  # (2N, d), rank-major: [a_0, b_0, a_1, b_1, ...]
    logits = z @ keys.T / temperature  # (2n, 2N)
    offset = dist.rank() * 2 * n
    rows = torch.arange(2 * n, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # a view is not its own negative
    positives = (rows + n) % (2 * n) + offset
    return logits, positives


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy, averaged over the 2N views."""
    logits, positives = nt_xent_logits(z_a, z_b, temperature)
    return F.cross_entropy(logits, positives)
