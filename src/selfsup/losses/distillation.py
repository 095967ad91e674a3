"""Distillation losses: a student matches a momentum teacher's output, without negatives."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import dist
from .precision import float32_math, full_precision


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al. 2020, eq. 2): the squared distance of the L2-normalised prediction
    and target, 2 - 2 cos(p, z), averaged over the batch. The target gets no gradient."""
    p, z = full_precision(prediction), full_precision(target.detach())
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def center_and_sharpen(teacher: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's targets (Caron et al. 2021, sec. 3.1): the teacher's logits (..., K) centred and
    sharpened, softmax((t - center) / temperature) over the prototypes, without gradient.
    Centring alone would push every image towards the uniform distribution and sharpening (a low
    temperature) alone towards one prototype: together they keep the teacher from collapsing."""
    return F.softmax((full_precision(teacher.detach()) - center) / temperature, dim=-1)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """DINO's loss (Caron et al. 2021, eq. 3 and algorithm 1), averaged over view pairs and images.

    student: (S, B, K) logits of all S crops; teacher: (T, B, K) logits of the T global crops,
    which are also the student's first T crops; center: (K,). The teacher's distribution is
    centred and sharpened, softmax((t - center) / teacher_temperature), and given no gradient;
    each student crop's log-softmax(s / student_temperature) is scored by cross-entropy against
    every teacher crop except itself."""
    return cross_view_entropy(student, center_and_sharpen(teacher, center, teacher_temperature), student_temperature)


@float32_math
def cross_view_entropy(student: torch.Tensor, targets: torch.Tensor, student_temperature: float) -> torch.Tensor:
    """The cross-entropy of DINO's loss for given teacher distributions `targets` (T, B, K) (centred
    and sharpened, or from Sinkhorn-Knopp): each student crop's log-softmax(s / T_s) (S, B, K)
    against every teacher crop but itself, averaged over view pairs and images."""
    log_probs = F.log_softmax(full_precision(student) / student_temperature, dim=-1)  # (S, B, K)
    n_teacher, n_student, batch = targets.shape[0], student.shape[0], student.shape[1]
    cross_entropy = -torch.einsum("tbk,sbk->ts", full_precision(targets.detach()), log_probs) / batch  # (T, S), mean over images
    same_view = torch.eye(n_teacher, n_student, dtype=torch.bool, device=student.device)
    return cross_entropy[~same_view].mean()


@torch.no_grad()
def dino_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """The centre after one step: an EMA of the teacher's mean output over this step's crops and
    images on every process (Caron et al. 2021, eq. 4). teacher: (..., K), any number of rows on
    each process, none included (iBOT's masked patches); center: (K,), unchanged when no process
    has a row. Every process must call it: it is a collective."""
    rows = full_precision(teacher).reshape(-1, teacher.shape[-1])  # (N, K)
    totals = dist.all_reduce_sum(torch.cat([rows.sum(dim=0), rows.new_full((1,), len(rows))]))  # (K + 1,)
    count = totals[-1]
    updated = center * momentum + totals[:-1] / count.clamp_min(1) * (1 - momentum)
    return torch.where(count > 0, updated, center)
