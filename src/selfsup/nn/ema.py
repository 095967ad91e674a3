"""The momentum (EMA) teacher of MoCo, BYOL and DINO.

    teacher = ema_copy(student)                     # same weights at the start, no gradients
    ...optimizer step on the student...
    ema_update(teacher, student, ema_momentum(progress, base, final))

The teacher is an ordinary submodule of the method, so it is in the state dict and thus in every
checkpoint; its parameters have `requires_grad=False`, so `optim.parameter_groups` leaves them out
of the optimizer and only `ema_update` moves them.

BatchNorm buffers (running mean and variance) are not averaged: like the official MoCo (v2, v3),
BYOL and DINO code, which average parameters only, the teacher runs in training mode and keeps the
running statistics of its own forward passes. They matter only where the teacher itself is
evaluated (DINO evaluates its teacher). An EMA that never runs forward (distillation keeps an EMA
of its student as the encoder) passes `buffers=True`, so that its statistics follow the student's.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..optim import cosine

if TYPE_CHECKING:  # methods import this module
    from ..methods.common import Progress


def ema_copy(student: nn.Module) -> nn.Module:
    """A copy of `student` (weights and buffers) that receives no gradients, and runs its whole
    network: stochastic depth is the student's regulariser (DINO builds its teacher without it)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    for module in teacher.modules():
        if hasattr(module, "drop_prob"):  # timm's DropPath
            module.drop_prob = 0.0
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, buffers: bool = False) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter; with
    `buffers`, floating-point buffers (BatchNorm statistics) likewise, as timm's ModelEmaV3 does,
    and integer ones (batch counters) copied."""
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError("the teacher and the student must have the same parameters")
    # lerp: t + (1 - m) * (s - t), one fused kernel for all tensors.
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
    if buffers:
        for mine, theirs in zip(teacher.buffers(), student.buffers()):
            if mine.is_floating_point():
                mine.lerp_(theirs, 1.0 - momentum)
            else:
                mine.copy_(theirs)


def ema_momentum(progress: Progress, base: float, final: float = 1.0) -> float:
    """The teacher's momentum at this step: a cosine from `base` at the first step to `final` at the
    end of training (BYOL, Grill et al. 2020, sec. 3.2: tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2;
    DINO and MoCo v3 use the same schedule). `final == base` keeps it constant (MoCo v2)."""
    return cosine(progress.step, progress.total_steps, base, final)
