"""Reconstruction losses: predict what was hidden, scored only where it was hidden."""
from __future__ import annotations

import torch


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked elements only (Pathak et al. 2016; He et al. 2022).

    prediction, target: (B, N, D) (N patches of D values) or (B, C, H, W) images; mask: (B, N) or
    (B, 1, H, W) / (B, H, W), 1 where hidden. The error is averaged over the values of each masked
    unit, then over masked units: what the model does where nothing was hidden cannot change it.
    """
    error = (prediction.float() - target.float()) ** 2
    if error.dim() == 3:  # (B, N, D): mean over each patch's values, as MAE does
        per_unit = error.mean(dim=-1)
        mask = mask.to(per_unit.dtype)
    else:  # (B, C, H, W): mean over channels per pixel
        per_unit = error.mean(dim=1)
        mask = mask.reshape(per_unit.shape).to(per_unit.dtype)
    return (per_unit * mask).sum() / mask.sum().clamp_min(1.0)
