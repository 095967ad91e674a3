"""Learning from interaction (Pinto, Gandhi, Han, Park & Gupta 2016, "The Curious Robot").

    x = the image before the action, a window centred on its point   # recorded by the world
    h = f(x)                                                          # one encoder for every task
    grasp:  loss = bce(grasp_head(h)[angle_bin], success)             # one output per angle bin;
                                                                      # only the tried bin learns
    push:   loss = huber(push_head(h, direction), displacement)       # where the object goes
    poke:   loss = huber(poke_head(h, direction), log(1 + distance))  # how far it slides
    loss = w_grasp * grasp + w_push * push + w_poke * poke            # trained jointly

The grasp task is the paper's. Push and poke are forward models of the action's outcome, not the
paper's tasks: its push network is an inverse model (from the images
before and after, which push was made), and its poke network regresses the tactile force
profile, which this world does not record.

Data: `selfsup synth interaction --out DIR`, then `--data DIR` (see data/interactions.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..data.interactions import InteractionCache, open_interactions
from ..console import said_as
from ..errors import UserError
from ..nn import mlp
from ..views.pipeline import IMAGENET_MEAN, IMAGENET_STD, to_float
from ..views import ops
from . import rotation
from .common import Batch, MethodOutput, Progress, Samples

open_data = open_interactions
GRASP, PUSH, POKE = 0, 1, 2


@dataclass
class Config:
    angle_bins: int = ranged(18, 1, 360)  # the paper: 18 bins of 10 degrees
    hidden_dim: int = ranged(512, 1, None)
    grasp_weight: float = ranged(1.0, 0.0, None)
    push_weight: float = ranged(1.0, 0.0, None)
    poke_weight: float = ranged(1.0, 0.0, None)
    # Displacements are in window widths; distances this many units per window for the log.
    poke_scale: float = ranged(64.0, 1e-6, None)
    huber_beta: float = ranged(0.1, 1e-6, None)  # squared error below, absolute error above


@dataclass
class Actions:
    kind: np.ndarray  # (n,) int64 GRASP, PUSH or POKE
    angle: np.ndarray  # (n,) float32 radians
    success: np.ndarray  # (n,) float32 (grasps)
    displacement: np.ndarray  # (n, 2) float32 (pushes, pokes)


# The paper gives no recipe for a ResNet: the ones the pretext tasks share (see rotation.py).
PRESETS = rotation.PRESETS


def check_data(config: Config, cache, train_idx) -> None:
    if not isinstance(cache, InteractionCache):
        raise UserError(f"interaction needs interaction records: `selfsup synth interaction --out DIR`, then "
                        f"{said_as('--data DIR', 'data=DIR')}")


def samples(config: Config, cache: InteractionCache, seed: int) -> Samples:
    side = Actions(cache.kind, cache.angle, np.nan_to_num(cache.success), cache.displacement)
    return Samples(np.arange(len(cache), dtype=np.int64)[:, None], side)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        d, hidden = backbone.feature_dim, config.hidden_dim
        self.grasp_head = mlp([d, hidden, config.angle_bins])
        self.push_head = mlp([d + 2, hidden, 2])
        self.poke_head = mlp([d + 2, hidden, 1])

    def predict(self, images: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images (B, S, S, 3) uint8, angle (B,) -> grasp logit of the angle's bin (B,), push
        displacement (B, 2), poke log-distance (B,) and the features (B, D)."""
        x = F.interpolate(to_float(images), size=self.image_size, mode="bilinear", antialias=True) \
            if images.shape[1] != self.image_size else to_float(images)
        h = self.backbone(ops.normalize(x, IMAGENET_MEAN, IMAGENET_STD).contiguous(memory_format=torch.channels_last))
        bins = (angle % math.pi / (math.pi / self.config.angle_bins)).long().clamp(max=self.config.angle_bins - 1)
        grasp = self.grasp_head(h).gather(1, bins[:, None]).squeeze(1)
        action = torch.cat([h, angle.cos()[:, None], angle.sin()[:, None]], dim=1)
        return grasp, self.push_head(action), self.poke_head(action).squeeze(1), h

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        side = batch.side
        grasp, push, poke, h = self.predict(batch.images[:, 0], side.angle)
        is_grasp, is_push, is_poke = [(side.kind == k).float() for k in (GRASP, PUSH, POKE)]
        grasp_loss = masked_mean(F.binary_cross_entropy_with_logits(grasp, side.success, reduction="none"), is_grasp)
        # Huber, not squared error: large misses give bounded gradients (squared error diverges
        # under the pretext tasks' SGD recipe).
        huber = dict(reduction="none", beta=self.config.huber_beta)
        push_loss = masked_mean(F.smooth_l1_loss(push, side.displacement, **huber).sum(1), is_push)
        distance = torch.log1p(side.displacement.norm(dim=1) * self.config.poke_scale)
        poke_loss = masked_mean(F.smooth_l1_loss(poke, distance, **huber), is_poke)
        c = self.config
        loss = c.grasp_weight * grasp_loss + c.push_weight * push_loss + c.poke_weight * poke_loss
        grasp_acc = masked_mean(((grasp > 0).float() == side.success).float(), is_grasp)
        return MethodOutput(loss=loss, metrics={"grasp_loss": grasp_loss.detach(), "push_loss": push_loss.detach(),
                                                "poke_loss": poke_loss.detach(), "grasp_acc": grasp_acc.detach()},
                            embedding=h.detach())

    def encoder(self) -> Backbone:
        return self.backbone
