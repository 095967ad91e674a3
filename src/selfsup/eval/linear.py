"""Linear probe: one linear layer trained on frozen features extracted once.

Features are standardised with the training set's mean and deviation (a BatchNorm without
affine, as MAE's and MoCo v3's probes put before the classifier), then a linear layer is trained
with AdamW, mini-batches and a cosine schedule. No augmentation: features are computed once.
A dimension with no spread on the training images (a unit that is zero on all of them, common
with few labels) is dropped, scaled by 0: it has taught the probe nothing, and dividing by its
zero deviation would turn any value it takes on a test image into thousands.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..console import protocol_option
from ..errors import UserError
from .knn import topk_accuracy


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 100,
                 lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 1024,
                 seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """(classifier, mean, scale) fitted on `features` (N, D) and `labels` (N,): the classifier
    reads (features - mean) * scale."""
    generator = torch.Generator().manual_seed(seed)
    features = features.float()
    mean, std = features.mean(dim=0), features.std(dim=0)
    spread = std > 1e-6 * std.max()
    scale = torch.where(spread, 1 / std.where(spread, torch.ones_like(std)), torch.zeros_like(std))
    x = (features - mean) * scale
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    head = head.to(x.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(x[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return head, mean, scale


@torch.no_grad()
def predict_linear(head: torch.nn.Linear, mean: torch.Tensor, scale: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return head((features.float() - mean) * scale)


def linear_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                    test_labels: torch.Tensor, num_classes: int | None = None, **kwargs) -> dict[str, float]:
    """{'top1', 'top5'} of a linear probe trained on the training features, on the test features."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max()).item()) + 1
    head, mean, scale = train_linear(train_features, train_labels, num_classes, **kwargs)
    return topk_accuracy(predict_linear(head, mean, scale, test_features), test_labels)


# The sweep's default grid. AdamW's decay is decoupled (w -= lr * wd * w each step), so values
# that regularise a probe of a few hundred steps are far larger than L2 coefficients.
SWEEP_LRS = (1e-3, 3e-3, 1e-2)
SWEEP_WEIGHT_DECAYS = (0.0, 0.05, 0.5)


def sweep_linear(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, lrs=SWEEP_LRS, weight_decays=SWEEP_WEIGHT_DECAYS, **kwargs):
    """Train one probe per (lr, weight decay) on the labelled subset and keep the one with the
    best validation top-1 (the first of equals, in grid order). Returns (head, mean, scale, chosen):
    `chosen` holds the lr, weight decay and validation top-1 picked. Without a validation split
    the grid must be a single point."""
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    if len(val_y) == 0 and len(grid) > 1:
        raise UserError(f"without a validation split ({protocol_option('val_fraction', 0)}, or one labelled image per "
                        f"class) nothing can choose among learning rates and weight decays; give one "
                        f"{protocol_option('lr')} and one {protocol_option('weight_decay')}")
    best = None
    for lr, wd in grid:
        head, mean, scale = train_linear(train_x, train_y, num_classes, lr=lr, weight_decay=wd, **kwargs)
        val_top1 = topk_accuracy(predict_linear(head, mean, scale, val_x), val_y, ks=(1,))["top1"] if len(val_y) else None
        if best is None or (val_top1 is not None and val_top1 > best[3]["val_top1"]):
            best = (head, mean, scale, {"lr": lr, "weight_decay": wd, "val_top1": val_top1})
    return best
