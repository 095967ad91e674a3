"""MoCo v3 (Chen, Xie, He 2021): symmetric InfoNCE against a momentum encoder, negatives from the batch.

    x1, x2 = view_1(x), view_2(x)                  # BYOL's asymmetric recipe
    q1, q2 = h(g(f(x1))), h(g(f(x2)))              # backbone f, projection g, predictor h; a pass per view
    k1, k2 = g'(f'(x1)), g'(f'(x2))                # momentum encoder (f', g'): an EMA of (f, g)
    loss = 2T (info_nce(q1, k2, T) + info_nce(q2, k1, T))   # no queue: the batch's other keys
    after the optimizer step: (f', g') <- m (f', g') + (1 - m) (f, g), m a cosine from 0.99 to 1

Works with ResNets and ViTs; heads as in the official code: a 2-layer projection for ResNets and a
3-layer one for ViTs, BatchNorm throughout, and for ViTs a frozen random patch projection (sec. 4.2,
the stability trick), fixed 2-D sine-cosine positions and Xavier-uniform initialisation. ResNets
start with each residual block as the identity (zero-initialised last BatchNorm scale), as the
official code builds them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import Backbone, zero_init_residual
from ..backbones.vit import sincos_positions
from ..config import ranged
from ..console import setting
from ..errors import UserError
from ..losses import info_nce
from ..nn import ema_copy, ema_momentum, ema_update, mlp
from ..views import ViewConfig, byol_view_1, byol_view_2, make_view
from .common import Batch, MethodOutput, Progress, lightly_cifar_recipe, two_views


@dataclass
class Config:
    temperature: float = ranged(1.0, 1e-6, None)  # ResNet-50; 0.2 for ViTs
    momentum: float = ranged(0.99, 0.0, 1.0)
    momentum_final: float = ranged(1.0, 0.0, 1.0)  # cosine to 1 (--moco-m-cos)
    projection_hidden_dim: int = ranged(4096, 1, None)
    projection_dim: int = ranged(256, 1, None)
    predictor_hidden_dim: int = ranged(4096, 1, None)
    freeze_patch_embedding: bool = True  # ViTs only
    # As the official code (both presets turn them on; the defaults here keep the networks of
    # checkpoints written before): ViTs get fixed 2-D sine-cosine positions instead of learned
    # ones, ResNets a zero-initialised last BatchNorm scale in each residual block.
    fixed_positions: bool = False
    zero_init_residual: bool = False
    # ViTs: the official initialisation instead of timm's: Xavier-uniform linear layers (Q, K and V
    # each as its own matrix), a Xavier-uniform patch projection, the class token N(0, 1e-6).
    xavier_init: bool = False
    # False: a pass per view, so BatchNorm statistics are per view, as in the official code; True:
    # both views as one batch of 2B, BatchNorm normalising them together (see `two_views`).
    one_pass: bool = False
    view_1: ViewConfig = field(default_factory=byol_view_1)
    view_2: ViewConfig = field(default_factory=byol_view_2)


OFFICIAL_NETWORKS = {"fixed_positions": True, "zero_init_residual": True, "xavier_init": True}


def _cifar() -> dict:
    # solo-learn's CIFAR recipe (linear 93.1 at 1000 epochs): temperature 0.2, heads 4096 -> 256,
    # momentum 0.99 -> 1, BYOL's views without blur. Its LARS clips the trust ratio, which ours does
    # not, so the optimizer is lightly's CIFAR-10 SGD recipe instead (untuned for MoCo v3).
    return {
        **lightly_cifar_recipe(),
        "moco-v3": {**OFFICIAL_NETWORKS, "temperature": 0.2, "view_1": {"blur_prob": 0.0},
                    "view_2": {"blur_prob": 0.0}},
    }


def _imagenet() -> dict:
    # Official ResNet-50, 100 epochs (CONFIG.md): LARS at 0.6 per 256 images, weight decay 1e-6,
    # 10 warm-up epochs, crops from 0.2 of the area. Batch 1024, not 4096, to fit one accelerator.
    return {
        "backbone": {"name": "resnet50"},
        "optim": {"name": "lars", "lr": 0.6, "lr_scaling": "linear", "weight_decay": 1e-6,
                  "warmup_epochs": 10.0},
        "train": {"epochs": 100, "batch_size": 1024},
        "moco-v3": {**OFFICIAL_NETWORKS, "view_1": {"crop_scale": (0.2, 1.0)}, "view_2": {"crop_scale": (0.2, 1.0)}},
    }


def _imagenet_vit() -> dict:
    # Official ViT-Small, 300 epochs (CONFIG.md): AdamW at 1.5e-4 per 256 images, weight decay 0.1
    # on every parameter (the official optimizer makes no exception for biases and norms), 40
    # warm-up epochs, temperature 0.2, a frozen patch projection, crops from 0.08 of the area.
    # Batch 1024, not 4096, to fit one accelerator.
    return {
        "backbone": {"name": "vit-small", "patch_size": 16},
        "optim": {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1,
                  "exclude_bias_and_norm": False, "warmup_epochs": 40.0},
        "train": {"epochs": 300, "batch_size": 1024},
        "moco-v3": {**OFFICIAL_NETWORKS, "temperature": 0.2},
    }


# A ViT backbone gets the `-vit` preset of its image regime (config.resolve).
PRESETS = {"cifar": _cifar, "imagenet": _imagenet, "imagenet-vit": _imagenet_vit}


def _fix_positions(backbone: Backbone, image_size: int) -> None:
    net = backbone.net
    grid = image_size // net.patch_embed.patch_size[0]
    positions = sincos_positions(grid, backbone.feature_dim)  # (1, 1+N, D), zeros for the class token
    if getattr(net, "pos_embed", None) is None or net.pos_embed.shape != positions.shape:
        raise UserError(f"moco-v3.fixed_positions needs a ViT with one position per patch and one for its "
                        f"class token; {backbone.name} has other positions: "
                        f"add {setting('moco-v3.fixed_positions', False)}")
    net.pos_embed.data.copy_(positions)
    net.pos_embed.requires_grad_(False)


def _xavier_init(backbone: Backbone) -> None:
    net = backbone.net
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            fan_out = module.weight.shape[0] // 3 if name.endswith("qkv") else module.weight.shape[0]
            bound = math.sqrt(6 / (fan_out + module.weight.shape[1]))
            nn.init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if getattr(net, "cls_token", None) is not None:
        nn.init.normal_(net.cls_token, std=1e-6)
    projection = getattr(net.patch_embed, "proj", None)  # a convolution: one linear map per patch
    if not isinstance(projection, nn.Conv2d):
        raise UserError(f"moco-v3.xavier_init needs a ViT whose patch embedding is one convolution; {backbone.name} "
                        f"has another: add {setting('moco-v3.xavier_init', False)}")
    bound = math.sqrt(6 / (projection.weight[0].numel() + projection.weight.shape[0]))
    nn.init.uniform_(projection.weight, -bound, bound)
    if projection.bias is not None:
        nn.init.zeros_(projection.bias)


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        c, vit = config, backbone.kind == "vit"
        hidden = [c.projection_hidden_dim] * (2 if vit else 1)
        projection = mlp([backbone.feature_dim, *hidden, c.projection_dim], last_batch_norm=True, last_bias=False)
        self.predictor = mlp([c.projection_dim, c.predictor_hidden_dim, c.projection_dim],
                             last_batch_norm=vit, last_bias=False)
        if vit and c.xavier_init:
            _xavier_init(backbone)
        if vit and c.freeze_patch_embedding:
            backbone.net.patch_embed.requires_grad_(False)
        if vit and c.fixed_positions:
            _fix_positions(backbone, image_size)
        if not vit and c.zero_init_residual:
            zero_init_residual(backbone.net)
        self.online = nn.Sequential(backbone, projection)
        self.target = ema_copy(self.online)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c = self.config
        x1 = make_view(batch.images, c.view_1, self.image_size, batch.generator)
        x2 = make_view(batch.images, c.view_2, self.image_size, batch.generator)
        z1, z2 = two_views(self.online, x1, x2, c.one_pass)
        q1, q2 = two_views(self.predictor, z1, z2, c.one_pass)  # (B, d) each
        with torch.no_grad():
            k1, k2 = two_views(self.target, x1, x2, c.one_pass)
        # Scaled by 2T as in the official code: this removes the 1/T factor from the gradient.
        loss = 2 * c.temperature * (info_nce(q1, k2, c.temperature) + info_nce(q2, k1, c.temperature))
        momentum = ema_momentum(progress, c.momentum, c.momentum_final)
        return MethodOutput(loss=loss, metrics={"momentum": torch.tensor(momentum)}, embedding=q1.detach())

    def after_step(self, progress: Progress) -> None:
        ema_update(self.target, self.online, ema_momentum(progress, self.config.momentum, self.config.momentum_final))

    def encoder(self) -> Backbone:
        return self.online[0]
