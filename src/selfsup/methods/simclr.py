"""SimCLR (Chen, Kornblith, Norouzi, Hinton 2020): two views, one encoder, NT-Xent.

    x_a, x_b = view(x), view(x)                  # two random augmentations of every image
    z_a, z_b = g(f(x_a)), g(f(x_b))              # encoder f, projection MLP g; both views as one
                                                 # batch of 2N, so BatchNorm sees them together
    loss = nt_xent(z_a, z_b, temperature)        # each view's positive is the other view of its
                                                 # image; the other 2N-2 views are negatives
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..losses import nt_xent
from ..nn import mlp
from ..views import ViewConfig, make_view
from .common import Batch, MethodOutput, Progress, lightly_cifar_recipe, two_views


@dataclass
class Config:
    temperature: float = ranged(0.1, 1e-6, None)  # ImageNet, large batches (paper table 5)
    projection_hidden_dim: int = ranged(2048, 1, None)
    projection_dim: int = ranged(128, 1, None)
    # End the projection with BatchNorm, as SimCLR's official code does (v1 and v2; there with a
    # scale and no offset, here with both, as lightly's head since April 2023, the head of its
    # 0.848 CIFAR-10 figure). Both presets, so every new run, turn it on (measured on the CPU:
    # kNN +4 points with the demo's recipe over 2 seeds, BENCHMARKS.md "SimCLR's head"). False
    # here is the head of checkpoints written before.
    projection_output_batch_norm: bool = False
    # True: both views through the backbone as one batch of 2B, so BatchNorm normalises them
    # together (SimCLR's global BN; under torchrun only with train.sync_batchnorm=true, else each
    # process normalises its own 2B); False: a pass per view, BatchNorm statistics per view.
    one_pass: bool = True
    views: ViewConfig = field(default_factory=ViewConfig)


def _cifar() -> dict:
    # lightly's CIFAR-10 benchmark recipe (0.848 kNN at 200 epochs): SGD 0.06 per 128 images,
    # temperature 0.5; SimCLR appendix B.9: colour strength 0.5 and no blur on 32-pixel images.
    # lightly's cosine moves once per epoch (Lightning steps its scheduler per epoch), this one every
    # step: the same curve, within one epoch's change of lightly's (half of it on average).
    return {
        **lightly_cifar_recipe(),
        "simclr": {"temperature": 0.5, "projection_hidden_dim": 512, "projection_output_batch_norm": True,
                   "views": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
                             "blur_prob": 0.0}},
    }


def _imagenet() -> dict:
    # Paper: LARS, weight decay 1e-6, 10 warm-up epochs, temperature 0.1. Its lr is 0.3 x batch/256
    # at batch 4096, and 0.075 x sqrt(batch) for smaller batches (appendix B.1), which is 1.2 x
    # sqrt(batch/256): the same 4.8 at 4096, better at this preset's 256. The loss is the paper's
    # mean over the 2N views; the official code sums its two directions, twice that, so under LARS
    # its weight decay weighs half as much against the gradient as it does here.
    return {
        "backbone": {"name": "resnet50"},  # the paper's encoder, as every other method's ImageNet preset
        "optim": {"name": "lars", "lr": 1.2, "lr_scaling": "sqrt", "weight_decay": 1e-6,
                  "warmup_epochs": 10.0},
        "train": {"epochs": 100, "batch_size": 256},
        "simclr": {"projection_output_batch_norm": True},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        self.projection = mlp([backbone.feature_dim, config.projection_hidden_dim, config.projection_dim],
                              last_batch_norm=config.projection_output_batch_norm, last_affine=True,
                              last_bias=not config.projection_output_batch_norm)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c = self.config
        views = [make_view(batch.images, c.views, self.image_size, batch.generator) for _ in range(2)]
        head, output_norm = ((self.projection[:-1], self.projection[-1]) if c.projection_output_batch_norm
                             else (self.projection, nn.Identity()))
        # z = g(f(x)) in two steps, because the collapse monitor watches the projection before its
        # output BatchNorm (which would hide a collapse).
        y_a, y_b = two_views(lambda x: head(self.backbone(x)), *views, c.one_pass)  # (B, d)
        z_a, z_b = two_views(output_norm, y_a, y_b, c.one_pass)
        loss = nt_xent(z_a, z_b, c.temperature)
        return MethodOutput(loss=loss, embedding=y_a.detach())

    def encoder(self) -> Backbone:
        return self.backbone
