"""Rotation prediction, RotNet (Gidaris, Singh, Komodakis 2018): which way is up?

    x = view(x)                                   # a light random crop and flip
    x_r, r = rotations(x)                         # each image at 0, 90, 180 and 270 degrees
    loss = cross_entropy(classifier(f(x_r)), r)   # 4-way: recognising the rotation needs the
                                                  # object's canonical orientation
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..views import ViewConfig, all_rotations, light_views, make_view
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    # Gidaris et al. feed all four rotations of every image in the same batch (sec. 3.3).
    views: ViewConfig = field(default_factory=light_views)


def _cifar() -> dict:
    # Gidaris et al. 2018, CIFAR-10: SGD, momentum 0.9, weight decay 5e-4, lr 0.1 for batches of
    # 128 images (x4 rotations), 100 epochs (we use a cosine for their step decay; their code also
    # uses Nesterov momentum and pad-4 random crops, here plain momentum and the light resized
    # crops of every pretext view). The other pretext tasks, which publish no CIFAR recipe, use it too.
    return {
        "optim": {"name": "sgd", "lr": 0.1, "lr_reference_batch": 128, "lr_scaling": "linear",
                  "weight_decay": 5e-4, "momentum": 0.9, "warmup_epochs": 0.0},
        "train": {"epochs": 100, "batch_size": 128},
    }


def _imagenet() -> dict:
    # Kolesnikov, Zhai, Beyer 2019 trained rotation, relative patch location and jigsaw with
    # ResNet-50 alike: SGD, lr 0.1 per 256 images, weight decay 1e-4, 35 epochs, 5 of warm-up
    # (then a cosine for their step decay at epochs 15 and 25).
    return {
        "optim": {"name": "sgd", "lr": 0.1, "lr_scaling": "linear", "weight_decay": 1e-4,
                  "momentum": 0.9, "warmup_epochs": 5.0},
        "train": {"epochs": 35, "batch_size": 256},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.feature_dim, 4)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        x = make_view(batch.images, self.config.views, self.image_size, batch.generator)  # (B, 3, S, S)
        rotated, labels = all_rotations(x)  # (4B, 3, S, S), (4B,)
        features = self.backbone(rotated.contiguous(memory_format=torch.channels_last))  # (4B, D)
        logits = self.classifier(features)  # (4B, 4)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        # The collapse monitor watches the upright images: `all_rotations` puts label 0 first.
        return MethodOutput(loss=loss, metrics={"pretext_acc": accuracy},
                            embedding=features[:len(x)].detach())

    def encoder(self) -> Backbone:
        return self.backbone
