"""Running a network over multi-crop views of several sizes (DINO's MultiCropWrapper)."""
from __future__ import annotations

from itertools import groupby

import torch
from torch import nn


def forward_by_size(module: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """`module` applied to every crop, one forward pass per run of consecutive crops of the same
    size (so BatchNorm sees each resolution as one batch), outputs concatenated in crop order:
    (sum of the crops' batch sizes, D)."""
    outputs = [module(torch.cat(list(group))) for _, group in groupby(crops, key=lambda c: tuple(c.shape[-2:]))]
    return torch.cat(outputs)
