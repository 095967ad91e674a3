"""DINO (Caron et al. 2021): self-distillation with no labels, a student matching an EMA teacher.

    crops = V global crops + L local crops of x    # multi-crop, each with its own recipe
    s = h(f(crops))                                # student: backbone f, DINO head h, all crops
    t = h'(f'(crops[:V]))                          # teacher: an EMA of (f, h), global crops only
    q = softmax((t - center) / T_t)                # centred and sharpened (T_t < T_s), no gradient
    loss = mean over pairs of different views (u != v) of CE(q_u, softmax(s_v / T_s))
    center = m_c center + (1 - m_c) mean(t)        # after the loss; centring and sharpening
                                                   # together prevent collapse
    after the optimizer step: (f', h') <- m (f', h') + (1 - m) (f, h), m a cosine from 0.996 to 1

The teacher temperature T_t warms up linearly over the first epochs; the last layer of the
student's head gets no gradient during the first epoch. The encoder to evaluate is the teacher's
backbone, as the paper evaluates it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..console import option
from ..errors import UserError
from ..losses import center_and_sharpen, cross_view_entropy, dino_center
from ..nn import DINOHead, ema_copy, ema_momentum, ema_update, forward_by_size
from .common import Batch, MethodOutput, MultiCropConfig, Progress, check_multi_crop, lightly_cifar_recipe


@dataclass
class Config(MultiCropConfig):
    out_dim: int = ranged(65536, 1, None)  # K, the number of prototypes
    hidden_dim: int = ranged(2048, 1, None)
    bottleneck_dim: int = ranged(256, 1, None)
    head_layers: int = ranged(3, 1, None)
    head_batch_norm: bool = False
    norm_last_layer: bool = True
    student_temperature: float = ranged(0.1, 1e-6, None)
    # Teacher temperature: linear warm-up from 0.04 to 0.07 over the first 30 epochs (sec. 3.1).
    teacher_temperature_start: float = ranged(0.04, 1e-6, None)
    teacher_temperature: float = ranged(0.07, 1e-6, None)
    teacher_temperature_warmup_epochs: float = ranged(30.0, 0.0, None)
    center_momentum: float = ranged(0.9, 0.0, 1.0)  # 1: no centring
    momentum: float = ranged(0.996, 0.0, 1.0)
    momentum_final: float = ranged(1.0, 0.0, 1.0)
    freeze_last_layer_epochs: float = ranged(1.0, 0.0, None)


def _cifar() -> dict:
    # lightly's CIFAR-10 benchmark (kNN 0.813 at 200 epochs, batch 512): its SGD recipe, a
    # 2-layer head with BatchNorm, 2048 prototypes, teacher temperature 0.04,
    # constant momentum 0.99, no last-layer freezing, two global crops and no local ones, DINO's
    # views without blur. Local crops: e.g. --local-crops 6 (16 pixels by default). The two views
    # go through the networks as one batch, as main_dino.py's MultiCropWrapper passes crops of one
    # size, so BatchNorm normalises them together (lightly's benchmark passes each view alone).
    no_blur = {"blur_prob": 0.0}
    return {
        **lightly_cifar_recipe(),
        "dino": {"out_dim": 2048, "head_layers": 2, "head_batch_norm": True, "teacher_temperature": 0.04,
                 "momentum": 0.99, "momentum_final": 0.99, "freeze_last_layer_epochs": 0.0,
                 "local_crops": 0, "local_size": 16,
                 "global_view_1": no_blur, "global_view_2": no_blur, "local_view": no_blur},
    }


def _cifar_vit() -> dict:
    # `--preset cifar-vit`: DINO's own ViT recipe (main_dino.py's defaults for ViT-S/16) on 32-pixel
    # images: a ViT-Tiny with 4-pixel patches and stochastic depth 0.1, AdamW at 5e-4 per 256
    # images, 10 warm-up epochs to a cosine ending at 1e-6, weight decay 0.04 -> 0.4, gradients
    # clipped to 3, teacher momentum 0.996 -> 1, teacher temperature 0.04 without warm-up, the last
    # layer frozen in the first epoch (its README's 0.07 after 30 epochs goes with 300 epochs). For
    # 32-pixel images: 4,096 prototypes, 6 local crops of 16 pixels, no blur, 200 epochs of 512.
    no_blur = {"blur_prob": 0.0}
    return {
        "backbone": {"name": "vit-tiny", "patch_size": 4, "drop_path_rate": 0.1},
        "data": {"image_size": 32},
        "optim": {"name": "adamw", "lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.04,
                  "weight_decay_end": 0.4, "warmup_epochs": 10.0, "final_lr_ratio": 1e-6 / 1e-3,
                  "clip_grad": 3.0},
        "train": {"epochs": 200, "batch_size": 512},
        "dino": {"out_dim": 4096, "local_crops": 6, "local_size": 16, "teacher_temperature": 0.04,
                 "global_view_1": no_blur, "global_view_2": no_blur, "local_view": no_blur},
    }


def _imagenet() -> dict:
    # The official ResNet-50 recipe (README): SGD 0.03 per 256 images, weight decay 1e-4, 100
    # epochs, 10 warm-up epochs to a cosine ending at 1e-6 (of a peak of 0.06 at batch 512), batch
    # 512, global crops from 0.14 and local crops from 0.05 to 0.14 of the area, the defaults of
    # main_dino.py otherwise (teacher temperature 0.04, gradients clipped to 3 per tensor).
    return {
        "backbone": {"name": "resnet50"},
        "optim": {"name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
                  "momentum": 0.9, "warmup_epochs": 10.0, "final_lr_ratio": 1e-6 / 0.06, "clip_grad": 3.0},
        "train": {"epochs": 100, "batch_size": 512},
        "dino": {"teacher_temperature": 0.04, "global_view_1": {"crop_scale": (0.14, 1.0)},
                 "global_view_2": {"crop_scale": (0.14, 1.0)}, "local_view": {"crop_scale": (0.05, 0.14)}},
    }


def _imagenet_vit() -> dict:
    # main_dino.py's defaults, its README's ViT-S/16 100-epoch run: AdamW at 5e-4 per 256 images,
    # 10 warm-up epochs to a cosine ending at 1e-6, weight decay 0.04 -> 0.4, gradients clipped to
    # 3, stochastic depth 0.1, teacher temperature 0.04, global crops from 0.4 and 8 local crops of
    # 96 px from 0.05 to 0.4 of the area (the multi-crop defaults). Batch 512, that run's (8 GPUs
    # of 64; the paper's ViT-S runs took 1024).
    return {
        "backbone": {"name": "vit-small", "patch_size": 16, "drop_path_rate": 0.1},
        "optim": {"name": "adamw", "lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.04,
                  "weight_decay_end": 0.4, "warmup_epochs": 10.0, "final_lr_ratio": 1e-6 / 1e-3,
                  "clip_grad": 3.0},
        "train": {"epochs": 100, "batch_size": 512},
        "dino": {"teacher_temperature": 0.04},
    }


# A ViT backbone gets the `-vit` preset of its image regime (config.resolve).
PRESETS = {"cifar": _cifar, "cifar-vit": _cifar_vit, "imagenet": _imagenet, "imagenet-vit": _imagenet_vit}

check_config = check_multi_crop  # local crops the backbone cannot take are refused before data is read


def teacher_temperature(config: Config, progress: Progress) -> float:
    """Linear from `teacher_temperature_start` to `teacher_temperature` over the warm-up epochs,
    step by step as DINOv2 (and VISSL's DINO) warm it up. main_dino.py moves it once per epoch
    (np.linspace over the W warm-up epochs, so it arrives at epoch W - 1, not W); the presets hold
    it constant at 0.04 as main_dino.py's defaults, where the two agree."""
    warmup = config.teacher_temperature_warmup_epochs
    t = min(1.0, progress.epoch / warmup) if warmup > 0 else 1.0
    return config.teacher_temperature_start + t * (config.teacher_temperature - config.teacher_temperature_start)


class Method(nn.Module):
    # The last layer gets no gradient while frozen in the first epoch (DDP must know).
    may_skip_parameters = True

    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        c = config
        if c.local_crops and getattr(getattr(backbone.net, "patch_embed", None), "strict_img_size", False):
            raise UserError(f"dino.local_crops needs a backbone that also takes {c.local_size}-pixel crops; "
                            f"{backbone.name} takes {image_size}-pixel images only: use vit-tiny, vit-small or "
                            f"vit-base (positions resampled), or {option('local_crops', 0)}")
        head = DINOHead(backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                        c.head_batch_norm, c.norm_last_layer)
        self.student = nn.ModuleDict({"backbone": backbone, "head": head})
        self.teacher = ema_copy(self.student)
        self.register_buffer("center", torch.zeros(c.out_dim))

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c, n = self.config, len(batch.images)
        crops = c.make_crops(batch.images, self.image_size, batch.generator)
        freeze = progress.epoch < c.freeze_last_layer_epochs
        features = forward_by_size(self.student.backbone, crops)  # (S * B, D), one pass per crop size
        s = self.student.head(features, freeze).view(len(crops), n, -1)  # (S, B, K)
        with torch.no_grad():
            t = self.teacher.head(self.teacher.backbone(torch.cat(crops[:c.global_crops])))
            t = t.view(c.global_crops, n, -1)  # (V, B, K)
        temperature = teacher_temperature(c, progress)
        q = center_and_sharpen(t, self.center, temperature)  # (V, B, K)
        loss = cross_view_entropy(s, q, c.student_temperature)
        # For the collapse monitor: the prototype the teacher expects for each image, its centred,
        # sharpened distribution averaged over the prototypes (B, bottleneck). Collapse, to one
        # prototype or to uniform, makes it the same for every image; unlike the distribution
        # itself, its spread does not shrink when the prototypes outnumber the batch.
        expected = q[0] @ self.teacher.head.last_layer.weight
        self.center.copy_(dino_center(self.center, t, c.center_momentum))  # after the loss, as in DINO
        metrics = {"momentum": torch.tensor(ema_momentum(progress, c.momentum, c.momentum_final)),
                   "teacher_temperature": torch.tensor(temperature)}
        return MethodOutput(loss=loss, metrics=metrics, embedding=expected)

    def after_step(self, progress: Progress) -> None:
        ema_update(self.teacher, self.student, ema_momentum(progress, self.config.momentum, self.config.momentum_final))

    def encoder(self) -> Backbone:
        return self.teacher.backbone
