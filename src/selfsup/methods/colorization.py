"""Colorization as a split-brain autoencoder (Zhang, Isola, Efros 2016, 2017).

    lab = rgb_to_lab(view(x))                       # a light crop and flip, colours untouched
    L, ab = lab[:1], lab[1:]
    loss = cross_entropy(head_ab(f_L(L)), bin(ab))  # one sub-network colours the lightness ...
         + cross_entropy(head_L(f_ab(ab)), bin(L))  # ... the other lights the colours
    representation(x) = concat(f_L(L), f_ab(ab))    # both halves' pooled features

Targets are taken at 1/`prediction_stride` of the resolution, as Zhang et al. predict at 1/4
(averaged over each 4x4 cell; their code takes every 4th pixel). By default each target is one
bin and the cross-entropy is unweighted, as in the split-brain paper ("we do not use
class-rebalancing ... we use a 1-hot encoding ... rather than soft-encoding"). The 2016
colorization paper's ab loss is two options away (the L target is always one bin):
`soft_encoding_neighbours` 5 spreads each ab target over its 5 nearest bins with Gaussian
weights of sigma `soft_encoding_sigma` 5 (their released code: 10 neighbours), and `rebalance`
lambda = 0.5 weights each pixel's term by w of its nearest bin, w ~ ((1 - lambda) p + lambda / Q)^-1
with p the bins' distribution smoothed by a Gaussian of sigma 5 and E_p[w] = 1. They count p once
over ImageNet; here it is counted from the targets of every training batch so far, this one's
included (`ab_counts`: in the checkpoint, summed over processes), so early weights are rougher.
The encoder to evaluate and export takes ordinary normalised RGB images and converts them to Lab
itself; its `net` holds the two sub-networks as `l_branch.net.*` (first convolution on 1 channel,
L / 50 - 1) and `ab_branch.net.*` (2 channels, ab / 110), each a plain torchvision/timm model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..console import named_option, warn
from ..dist import all_reduce_sum
from ..errors import UserError
from ..viz import save_image_grid
from ..views import (ABBins, ViewConfig, decode_lightness, denormalize, eval_view, lab_to_rgb, light_views,
                     make_view, quantize_lightness, rgb_to_lab)
from . import rotation
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    loss: Literal["classification", "regression"] = "classification"  # the paper: classification
    ab_grid: float = ranged(10.0, 1.0, 110.0)  # side of the ab bins (Zhang et al. 2016: 10)
    lightness_bins: int = ranged(50, 2, 1000)  # split-brain: L quantised into 50 bins
    prediction_stride: int = ranged(4, 1, 64)
    # Zhang et al. 2016's ab loss; the split-brain paper uses neither (1 and 0, the defaults).
    soft_encoding_neighbours: int = ranged(1, 1, 64)  # 2016 paper: 5 nearest bins
    soft_encoding_sigma: float = ranged(5.0, 0.5, 110.0)  # ab units; 2016 paper: 5
    rebalance: float = ranged(0.0, 0.0, 1.0)  # lambda, the uniform share of the prior; 0: off; 2016 paper: 0.5
    views: ViewConfig = field(default_factory=light_views)  # no colour jitter: colours are the target


def _cifar() -> dict:
    return rotation.PRESETS["cifar"]()  # no CIFAR recipe in the papers: RotNet's (rotation.py)


def _imagenet() -> dict:
    # Zhang et al. 2016: Adam, lr 3e-5, betas (0.9, 0.99), weight decay 1e-3, batch 40, 450k
    # iterations (about 14 epochs of ImageNet). Their Caffe decay is an L2 term in the gradient;
    # AdamW's 1e-3 is decoupled (lr x 1e-3 per step), a much weaker pull: no Adam with L2 here.
    return {
        "optim": {"name": "adamw", "lr": 3e-5, "lr_reference_batch": 40, "lr_scaling": "linear",
                  "betas": (0.9, 0.99), "weight_decay": 1e-3, "warmup_epochs": 0.0},
        "train": {"epochs": 14, "batch_size": 256},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_data(config: Config, cache, train_idx) -> None:
    left_out = np.intersect1d(train_idx, cache.grayscale_rows)
    gray = len(left_out)
    if gray and gray == len(train_idx):
        raise UserError(f"colorization needs colour images, but {gray:,} of the {len(train_idx):,} images in "
                        f"{cache.source} are grayscale; give it colour images or choose another "
                        f"{named_option('method')}")
    if gray:
        first = cache.names[left_out[0]]
        warn(f"colorization leaves out the {gray:,} grayscale images of the {len(train_idx):,} in {cache.source} "
             f"(e.g. {first!r}): they hold no colour to predict")


def training_rows(config: Config, cache, train_idx) -> np.ndarray:
    """The colour images only (see check_data)."""
    return np.setdiff1d(train_idx, cache.grayscale_rows)


def with_input_channels(backbone: Backbone, channels: int) -> Backbone:
    """A copy of `backbone` whose first convolution reads `channels` instead of 3 (He init)."""
    branch = copy.deepcopy(backbone)
    name, conv = next((n, m) for n, m in branch.net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    parent, _, attribute = name.rpartition(".")
    setattr(branch.net.get_submodule(parent), attribute, new)
    return branch


def lab_inputs(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) Lab -> the sub-networks' inputs, roughly in [-1, 1]: L (B, 1), ab (B, 2)."""
    return lab[:, :1] / 50 - 1, lab[:, 1:] / 110


class SplitBrain(nn.Module):
    """Both sub-networks; from normalised RGB images, their pooled features concatenated."""

    def __init__(self, l_branch: Backbone, ab_branch: Backbone):
        super().__init__()
        self.l_branch, self.ab_branch = l_branch, ab_branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l_in, ab_in = lab_inputs(rgb_to_lab(denormalize(x)))
        return torch.cat([self.l_branch(l_in), self.ab_branch(ab_in)], dim=1)  # (B, 2D)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        l_in, ab_in = lab_inputs(rgb_to_lab(denormalize(x)))
        return torch.cat([self.l_branch.forward_map(l_in), self.ab_branch.forward_map(ab_in)], dim=1)


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        if backbone.kind != "cnn":
            raise UserError(f"colorization predicts colours from a feature map: "
                            f"use a convolutional {named_option('backbone')}, "
                            f"not {backbone.name!r}")
        self.config, self.image_size = config, image_size
        net = SplitBrain(with_input_channels(backbone, 1), with_input_channels(backbone, 2))
        self.backbone = Backbone(f"split-brain {backbone.name}", net, 2 * backbone.feature_dim, "cnn",
                                 lambda m, x: m(x), lambda m, x: m.forward_map(x), backbone.small_stem)
        self.bins = ABBins(config.ab_grid)
        if config.soft_encoding_neighbours > len(self.bins):
            raise UserError(f"colorization.soft_encoding_neighbours is {config.soft_encoding_neighbours}, but ab_grid "
                            f"{config.ab_grid:g} makes only {len(self.bins)} bins: lower one or the other")
        classify = config.loss == "classification"
        if not classify and (config.soft_encoding_neighbours > 1 or config.rebalance > 0):
            raise UserError("colorization.soft_encoding_neighbours and colorization.rebalance shape the loss over ab "
                            "bins, which colorization.loss=regression has none of: leave them out, or use "
                            "loss=classification")
        if classify and config.rebalance > 0:  # how often each ab bin was the target so far
            self.register_buffer("ab_counts", torch.zeros(len(self.bins), dtype=torch.long))
        self.to_ab = nn.Conv2d(backbone.feature_dim, len(self.bins) if classify else 2, 1)  # from L's map
        self.to_l = nn.Conv2d(backbone.feature_dim, config.lightness_bins if classify else 1, 1)  # from ab's

    def predict(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sub-network's prediction of the other's channels, at 1/stride of the resolution."""
        size = [max(1, s // self.config.prediction_stride) for s in lab.shape[-2:]]
        l_in, ab_in = lab_inputs(lab)
        net = self.backbone.net
        ab_out = F.interpolate(self.to_ab(net.l_branch.forward_map(l_in)), size=size, mode="bilinear")
        l_out = F.interpolate(self.to_l(net.ab_branch.forward_map(ab_in)), size=size, mode="bilinear")
        return ab_out, l_out  # (B, Q or 2, s, s), (B, bins or 1, s, s)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        pixels = make_view(batch.images, self.config.views, self.image_size, batch.generator,
                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # (B, 3, S, S) RGB in [0, 1]
        lab = rgb_to_lab(pixels)
        ab_out, l_out = self.predict(lab)
        target = F.adaptive_avg_pool2d(lab, ab_out.shape[-2:])  # (B, 3, s, s)
        if self.config.loss == "regression":
            l_target, ab_target = lab_inputs(target)
            loss = F.mse_loss(ab_out.float(), ab_target) + F.mse_loss(l_out.float(), l_target)
            return MethodOutput(loss=loss)
        c = self.config
        # Each ab target's bins (B, k, s, s), nearest first, and their shares of it (k = 1: the one bin).
        nearest, share = self.bins.encode(target[:, 1:], c.soft_encoding_neighbours, c.soft_encoding_sigma)
        ab_bins = nearest[:, 0]  # (B, s, s)
        ab_loss = -(share * F.log_softmax(ab_out.float(), 1).gather(1, nearest)).sum(1)  # (B, s, s)
        if c.rebalance > 0:
            if self.training:
                self.ab_counts += all_reduce_sum(torch.bincount(ab_bins.flatten(), minlength=len(self.bins)))
            ab_loss = ab_loss * self.bins.rebalancing_weights(self.ab_counts, c.rebalance)[ab_bins]
        l_bins = quantize_lightness(target[:, 0], c.lightness_bins)
        loss = ab_loss.mean() + F.cross_entropy(l_out.float(), l_bins)
        ab_acc = (ab_out.argmax(1) == ab_bins).float().mean()
        l_acc = (l_out.argmax(1) == l_bins).float().mean()
        return MethodOutput(loss=loss, metrics={"pretext_acc": (ab_acc + l_acc) / 2, "ab_acc": ab_acc, "l_acc": l_acc})

    def decode(self, ab_out: torch.Tensor, l_out: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ab (B, 2, S, S) and L (B, 1, S, S) in Lab units, at full resolution."""
        if self.config.loss == "classification":
            ab, l = self.bins.decode(ab_out), decode_lightness(l_out)
        else:
            ab, l = ab_out.float() * 110, (l_out.float() + 1) * 50
        return (F.interpolate(ab, size=(size, size), mode="bilinear"),
                F.interpolate(l, size=(size, size), mode="bilinear"))

    def save_pictures(self, batch: Batch, run_dir) -> None:
        """pictures.png, one row per image: the L input, its predicted colours, the ab input (at L
        = 50), its predicted lightness, and the original."""
        pixels = eval_view(batch.images, self.image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).float()
        lab = rgb_to_lab(pixels)
        ab, l = self.decode(*self.predict(lab), pixels.shape[-1])
        zeros, fifty = torch.zeros_like(ab), torch.full_like(l, 50.0)
        columns = [torch.cat([lab[:, :1], zeros], 1), torch.cat([lab[:, :1], ab], 1),
                   torch.cat([fifty, lab[:, 1:]], 1), torch.cat([l, zeros], 1)]
        columns = [lab_to_rgb(c).clamp(0, 1) for c in columns] + [pixels]
        save_image_grid([torch.stack(row) for row in zip(*columns)], Path(run_dir) / "pictures.png",
                        titles=["L input", "its colours", "ab input", "its lightness", "original"])

    def encoder(self) -> Backbone:
        return self.backbone
