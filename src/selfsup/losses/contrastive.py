"""Contrastive losses: a view must pick its positive out of negatives.

Negatives may come from all processes: keys are gathered with `dist.gather_with_grad`, which is
the identity in one process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from .precision import float32_math, full_precision


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) = a·b / (|a||b|) along the last dimension."""
    return F.cosine_similarity(a, b, dim=-1)


@float32_math
def nt_xent_logits(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of NT-Xent (SimCLR, Chen et al. 2020, eq. 1) and the column of each row's positive.

    z_a, z_b: (n, d) embeddings of two views of the same n images on this process. Each of the 2n
    local views is compared by cosine similarity / temperature with all 2N views of every process;
    its own column is set to -inf, the other view of its image is the positive, and the remaining
    2N - 2 views are its negatives. Returns logits (2n, 2N) and positives (2n,).
    """
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b])
    z = F.normalize(full_precision(z), dim=1)  # (2n, d)
    keys = dist.gather_with_grad(z)  # (2N, d), by process: [z_a of rank 0; z_b of rank 0; z_a of rank 1; ...]
    logits = z @ keys.T / temperature  # (2n, 2N)
    offset = dist.rank() * 2 * n
    rows = torch.arange(2 * n, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # a view is not its own negative
    positives = (rows + n) % (2 * n) + offset
    return logits, positives


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy, averaged over the 2N views."""
    logits, positives = nt_xent_logits(z_a, z_b, temperature)
    return F.cross_entropy(logits, positives)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(full_precision(x), dim=-1)  # L2-normalised rows


@float32_math
def info_nce_queue(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1), averaged over the n queries.

    query, key: (n, d), the two views of n images (the key from the momentum encoder, given no
    gradient); queue: (K, d) unit-length keys of earlier steps, the negatives, of which only the
    rows where `valid` (K,) is true count (None: all). Each query must pick its own key (column 0
    of its logits) out of the candidates."""
    q, k = _unit(query), _unit(key.detach())
    positive = (q * k).sum(dim=1, keepdim=True)  # (n, 1)
    negatives = q @ queue.to(q.dtype).T  # (n, K)
    if valid is not None:
        negatives = negatives.masked_fill(~valid, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature  # (n, 1 + K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@float32_math
def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the batch as negatives (MoCo v3, Chen, Xie, He 2021, algorithm 1), averaged
    over the n local queries.

    query, key: (n, d) on this process, row i of both from image i; keys get no gradient and are
    gathered from all processes (N in all), so each query picks its key out of N candidates."""
    q = _unit(query)
    k = _unit(dist.gather(key.detach()))  # (N, d), rank-major
    logits = q @ k.T / temperature  # (n, N)
    labels = torch.arange(len(q), device=q.device) + dist.rank() * len(q)
    return F.cross_entropy(logits, labels)
