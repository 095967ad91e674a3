"""What the DINOv2 recipe adds to DINO's loss (Oquab et al. 2023, sec. 4): iBOT's masked patch
loss, the KoLeo regulariser, and Sinkhorn-Knopp centring of the teacher."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import dist
from .precision import float32_math, full_precision


def ibot_patch_loss(student: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                    student_temperature: float) -> torch.Tensor:
    """iBOT's loss (Zhou et al. 2022, eq. 2) on the masked patches only.

    student: (M, K) logits of the student at the M masked patches (the masked entries of `masks`,
    in row-major order); targets: (M, K) the teacher's distributions for the same patches of the
    unmasked image; masks: (B, N) bool. Each masked patch's cross-entropy is averaged within its
    image, and images are averaged (an image without masked patches counts as 0), as DINOv2 does.
    """
    per_patch = -(targets.detach() * F.log_softmax(full_precision(student) / student_temperature, dim=-1)).sum(-1)  # (M,)
    counts = masks.sum(dim=1)  # (B,)
    # The image of each masked patch, found without reading `masks` back to the host (M is known).
    image = torch.searchsorted(counts.cumsum(0), torch.arange(len(per_patch), device=masks.device), right=True)
    return (per_patch / counts.clamp_min(1)[image]).sum() / masks.shape[0]


@float32_math
def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019): -mean_i log(min_j |x_i - x_j|) over L2-normalised
    features (B, D); it grows when two images of the batch sit close, spreading them apart."""
    x = F.normalize(full_precision(features), dim=-1, eps=eps)
    similarity = x @ x.T  # (B, B)
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour
    nearest = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)  # (B,)
    return -torch.log(distances + eps).mean()


def _logsumexp_over_processes(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log(sum(exp(x))) along `dim`, whose entries are spread over all processes."""
    peak = dist.all_reduce_max(x.amax(dim=dim, keepdim=True) if x.shape[dim] else
                               x.new_full([1 if d == dim else n for d, n in enumerate(x.shape)], float("-inf")))
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return peak + dist.all_reduce_sum(torch.exp(x - peak).sum(dim=dim, keepdim=True)).log()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher distributions (B, K) from logits (B, K) by Sinkhorn-Knopp (SwAV, Caron et al. 2020;
    DINOv2): exp(logits / temperature) rescaled alternately so that each prototype gets an equal
    share of the batch (columns sum to B/K) and each image a distribution (rows sum to 1), over
    all processes' images.

    In the log domain: in float32, exp(logits / 0.04) under- or overflows once logits span more
    than about 4 (prototypes with a learned gain), and a zero row or column would turn to NaN."""
    log_q = full_precision(logits).T / temperature  # (K, B), this process's images
    # Processes may hold different numbers of rows (iBOT's masked patches).
    log_batch = dist.all_reduce_sum(torch.tensor(float(log_q.shape[1]), device=log_q.device)).log()
    log_prototypes = math.log(log_q.shape[0])
    for _ in range(iterations):  # in place: at K = 65,536 prototypes, log_q is large
        log_q -= _logsumexp_over_processes(log_q, dim=1) + log_prototypes  # each prototype: 1/K
        log_q -= torch.logsumexp(log_q, dim=0, keepdim=True) + log_batch  # each image: 1/B
    return log_q.add_(log_batch).exp_().T  # rows sum to 1
