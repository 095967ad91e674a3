"""Reconstruction losses: predict what was hidden, scored only where it was hidden."""
from __future__ import annotations

import torch


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked elements only (Pathak et al. 2016; He et al. 2022).

    prediction, target: (B, N, D) (N patches of D values) or (B, C, H, W) images; mask: (B, N) or
    (B, 1, H, W) / (B, H, W), 1 where hidden. The error is averaged over the values of each masked
    unit, then over masked units: what the model does where nothing was hidden cannot change it.
    """
    if prediction.dim() == 3:  # (B, N, D): mean over each patch's values, as MAE does
        hidden = mask.bool()[..., None]  # (B, N, 1)
        reduce = -1
    else:  # (B, C, H, W): mean over channels per pixel
        hidden = mask.bool().reshape(len(prediction), 1, *prediction.shape[2:])  # (B, 1, H, W)
        reduce = 1
    # Select, not multiply: inf * 0 is NaN, and so would be the gradient of any unselected inf.
    difference = torch.where(hidden, prediction.float() - target.float(), 0.0)
    return (difference ** 2).mean(dim=reduce).sum() / hidden.sum().clamp_min(1)
