"""Frozen features: the encoder applied once to every image, in eval mode, without gradients."""
from __future__ import annotations

import numpy as np
import torch

from ..console import progress_bar
from ..views import eval_view


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, image_size: int, device: torch.device,
                     indices: np.ndarray | None = None, batch_size: int = 256,
                     show_progress: bool = False, desc: str = "features") -> torch.Tensor:
    """(N, D) float32 features on the CPU of `images[indices]` ((N, S, S, 3) uint8), each centre-
    cropped to `image_size`. The encoder is put in eval mode and returned to its previous mode."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    was_training = encoder.training
    encoder.eval()
    device = torch.device(device)
    bf16 = device.type == "cuda"
    out = []
    bar = progress_bar(len(indices), desc, enabled=show_progress)
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                features = encoder(eval_view(batch, image_size))
            out.append(features.float().cpu())
            bar.update(len(idx))
    finally:
        bar.close()
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(encoder, "feature_dim", 0))
