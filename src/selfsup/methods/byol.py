"""BYOL (Grill et al. 2020): an online network predicts a slowly moving target network's projection.

    v1, v2 = view_1(x), view_2(x)                  # BYOL's asymmetric recipe (blur 1.0 / 0.1, ...)
    z1, z2 = g(f(v1)), g(f(v2))                    # online: encoder f, projection g; a pass per view
    p1, p2 = q(z1), q(z2)                          # predictor q
    t1, t2 = g'(f'(v1)), g'(f'(v2))                # target (f', g'): an EMA of (f, g), no gradient
    loss = byol_loss(p1, t2) + byol_loss(p2, t1)   # 2 - 2 cos, symmetrised; no negatives
    after the optimizer step: (f', g') <- m (f', g') + (1 - m) (f, g), m a cosine from 0.996 to 1
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..losses import byol_loss
from ..nn import ema_copy, ema_momentum, ema_update, mlp
from ..views import ViewConfig, byol_view_1, byol_view_2, make_view
from .common import Batch, MethodOutput, Progress, lightly_cifar_recipe, two_views


@dataclass
class Config:
    momentum: float = ranged(0.996, 0.0, 1.0)  # tau_base (sec. 3.2)
    momentum_final: float = ranged(1.0, 0.0, 1.0)  # reached by a cosine at the last step
    projection_hidden_dim: int = ranged(4096, 1, None)
    projection_dim: int = ranged(256, 1, None)
    predictor_hidden_dim: int = ranged(4096, 1, None)
    # False: a pass per view, so BatchNorm statistics are per view, as in the paper's code; True:
    # both views as one batch of 2B, BatchNorm normalising them together (see `two_views`).
    one_pass: bool = False
    view_1: ViewConfig = field(default_factory=byol_view_1)
    view_2: ViewConfig = field(default_factory=byol_view_2)


def _cifar() -> dict:
    # lightly's CIFAR-10 benchmark (kNN 0.868 at 200 epochs, batch 512): its SGD recipe, heads
    # 1024 -> 256, constant momentum 0.99, no blur on 32-pixel images. Its loss, 0.5 (-cos - cos),
    # is a quarter of BYOL's, so its steps are taken at a quarter of the rate (loss_scale). Not its
    # views: that benchmark gives BYOL SimCLR's (jitter 0.4, 0.4, 0.4, 0.1, no solarization); these
    # are BYOL's own asymmetric pair without blur (`--set byol.view_2.solarize_prob=0`, ... for lightly's).
    return {
        **lightly_cifar_recipe(loss_scale=4.0),
        "byol": {"momentum": 0.99, "momentum_final": 0.99, "projection_hidden_dim": 1024,
                 "predictor_hidden_dim": 1024, "view_1": {"blur_prob": 0.0}, "view_2": {"blur_prob": 0.0}},
    }


def _imagenet() -> dict:
    # Paper (sec. 3.2, appendix C): ResNet-50, LARS, 10 warm-up epochs, 300 epochs as in its
    # ablations, with the official code's settings for 300 epochs (byol/configs/byol.py): lr 0.3 x
    # batch/256, weight decay 1e-6, tau_base 0.99 (the paper's 0.2, 1.5e-6 and 0.996 are for 1000
    # epochs). Batch 512, not the paper's 4096, to fit one accelerator; BYOL loses little down to
    # 256 (fig. 3a).
    return {
        "backbone": {"name": "resnet50"},
        "optim": {"name": "lars", "lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6,
                  "warmup_epochs": 10.0},
        "train": {"epochs": 300, "batch_size": 512},
        "byol": {"momentum": 0.99},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        c = config
        # Linear-BN-ReLU-Linear, as lightly's BYOL heads: the official MLP (byol/utils/networks.py)
        # puts its bias on the first Linear, which the BatchNorm after it cancels, and none on the last;
        # here the last has one (not measured against the official head; checkpoints hold the bias).
        self.online = nn.Sequential(backbone, mlp([backbone.feature_dim, c.projection_hidden_dim, c.projection_dim]))
        self.predictor = mlp([c.projection_dim, c.predictor_hidden_dim, c.projection_dim])
        self.target = ema_copy(self.online)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c = self.config
        v1 = make_view(batch.images, c.view_1, self.image_size, batch.generator)  # (B, 3, S, S)
        v2 = make_view(batch.images, c.view_2, self.image_size, batch.generator)
        z1, z2 = two_views(self.online, v1, v2, c.one_pass)  # (B, d) each
        p1, p2 = two_views(self.predictor, z1, z2, c.one_pass)
        with torch.no_grad():
            t1, t2 = two_views(self.target, v1, v2, c.one_pass)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        momentum = ema_momentum(progress, c.momentum, c.momentum_final)
        return MethodOutput(loss=loss, metrics={"momentum": torch.tensor(momentum)}, embedding=z1.detach())

    def after_step(self, progress: Progress) -> None:
        ema_update(self.target, self.online, ema_momentum(progress, self.config.momentum, self.config.momentum_final))

    def encoder(self) -> Backbone:
        return self.online[0]
