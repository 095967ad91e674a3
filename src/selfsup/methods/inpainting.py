"""Inpainting, context encoder (Pathak, Krähenbühl, Donahue, Darrell, Efros 2016).

    x = view(x)                                     # a light random crop and flip
    m = mask(x)                                     # a central square, random blocks or regions
    x_hat = decoder(f(x * (1 - m)))                 # hidden pixels set to the mean pixel (0 once
                                                    # normalised); an encoder-decoder fills them
    loss = masked_mse(x_hat, x, m)                  # L2 on the hidden pixels only

The paper's optional adversarial term is not implemented: L2 alone gives blurry fills, but
the features are what is evaluated here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..console import named_option
from ..errors import UserError
from ..losses import masked_mse
from ..viz import save_image_grid
from ..views import ViewConfig, denormalize, eval_view, inpainting_masks, light_views, make_view
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    # Pathak et al. learn their best features with random regions (sec. 3.3). Their code differs
    # in the details: its centre mask leaves a 4-pixel border visible and weights the loss 10x
    # there, and its regions come from a finer noise field (about 8 cells across, 20-30 % hidden,
    # one mask per batch); here the whole square is hidden and regions are drawn from a 4x4
    # field, exactly `mask_fraction` of each image.
    mask: Literal["center", "blocks", "regions"] = "regions"
    mask_fraction: float = ranged(0.25, 0.01, 0.9)  # a quarter of the image, as in the paper
    mask_blocks: int = ranged(4, 1, 64)  # "blocks": squares of mask_fraction / mask_blocks each
    decoder_width: int = ranged(256, 8, None)  # channels of the first decoder stage, halved per 2x
    views: ViewConfig = field(default_factory=light_views)


def _adam(epochs: int, batch_size: int) -> dict:
    # The official code (train.lua): Adam, beta1 0.5, batches of 64, no weight decay; the encoder-
    # decoder learns at 10 x its lr of 2e-4 when the L2 term leads the loss (wtl2 = 0.999, as in
    # its README), 2e-4 being the adversary's. The paper states no schedule length: CIFAR as the
    # other pretext recipes here, ImageNet 35.
    return {
        "optim": {"name": "adamw", "lr": 2e-3, "lr_reference_batch": 64, "lr_scaling": "linear",
                  "betas": (0.5, 0.999), "weight_decay": 0.0, "warmup_epochs": 0.0},
        "train": {"epochs": epochs, "batch_size": batch_size},
    }


PRESETS = {"cifar": lambda: _adam(100, 128), "imagenet": lambda: _adam(35, 256)}


def upsampling_decoder(channels: int, steps: int, width: int) -> nn.Sequential:
    """Feature map (B, channels, h, w) -> pixels (B, 3, h * 2**steps, w * 2**steps): each step
    doubles the resolution and halves the channels (at least 32), as the paper's up-convolutions."""
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(steps):
        out = max(32, width // 2)
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    layers.append(nn.Conv2d(width, 3, 3, padding=1))
    return nn.Sequential(*layers)


@torch.no_grad()
def feature_map_side(backbone: Backbone, image_size: int) -> int:
    was_training = backbone.training
    side = backbone.eval().forward_map(torch.zeros(1, 3, image_size, image_size)).shape[-1]
    backbone.train(was_training)
    return side


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        if backbone.kind != "cnn":
            raise UserError(f"inpainting decodes pixels from a feature map: use a convolutional "
                            f"{named_option('backbone')}, not {backbone.name!r}")
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        steps = max(0, round(math.log2(image_size / feature_map_side(backbone, image_size))))
        self.decoder = upsampling_decoder(backbone.feature_dim, steps, config.decoder_width)

    def inpaint(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(masked input, prediction, mask) of normalised views x (B, 3, S, S)."""
        c = self.config
        mask = inpainting_masks(len(x), x.shape[-1], c.mask, c.mask_fraction, c.mask_blocks, generator, x.device)
        masked = x.masked_fill(mask, 0.0)  # (B, 3, S, S), mask (B, 1, S, S) True where hidden
        prediction = self.decoder(self.backbone.forward_map(masked))
        if prediction.shape[-1] != x.shape[-1]:  # sizes that are not the map's side times 2**k
            prediction = F.interpolate(prediction, size=x.shape[-2:], mode="bilinear")
        return masked, prediction, mask

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        x = make_view(batch.images, self.config.views, self.image_size, batch.generator)  # (B, 3, S, S)
        masked, prediction, mask = self.inpaint(x, batch.generator)
        loss = masked_mse(prediction, x, mask)
        # Below 1: the fill beats the mean pixel the input holds there, i.e. the task is being solved.
        relative = loss.detach() / masked_mse(torch.zeros_like(x), x, mask).clamp_min(1e-12)
        return MethodOutput(loss=loss, metrics={"relative_mse": relative})

    def save_pictures(self, batch: Batch, run_dir) -> None:
        """pictures.png, one row per image: the masked input, the prediction pasted into the hole,
        the whole prediction and the original."""
        x = eval_view(batch.images, self.image_size).float()
        masked, prediction, mask = self.inpaint(x, batch.generator)
        filled = torch.where(mask, prediction.float(), x)
        columns = [denormalize(c).clamp(0, 1) for c in (masked, filled, prediction.float(), x)]
        save_image_grid([torch.stack(row) for row in zip(*columns)], Path(run_dir) / "pictures.png",
                        titles=["masked input", "filled in", "prediction", "original"])

    def encoder(self) -> Backbone:
        return self.backbone
