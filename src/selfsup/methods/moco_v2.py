"""MoCo v2 (He et al. 2020; Chen, Fan, Girshick, He 2020): queries against a queue of momentum keys.

    x_q, x_k = view(x), view(x)
    q = g(f(x_q))                                  # query encoder: backbone f, MLP head g
    k = g'(f'(x_k))                                # key encoder (f', g'): an EMA of (f, g), no gradient
    loss = info_nce_queue(q, k, queue, T)          # positive: k; negatives: the queued keys (up to K)
    enqueue(queue, k); dequeue the oldest          # after the loss: a step's keys are not its negatives
    after the optimizer step: (f', g') <- m (f', g') + (1 - m) (f, g), m = 0.999

MoCo's shuffling BN (sec. 3.3: BatchNorm statistics per GPU, keys shuffled across GPUs so that a
query and its key never share them): the encoders run on `bn_groups` sub-batches of the whole
batch, consecutive ones for the queries, random ones for the keys. Under torchrun the key images
of all processes are shuffled among them, as MoCo's code does, and each process runs its share
of the groups; in one process the groups are emulated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import dist
from ..backbones import Backbone
from ..config import ranged
from ..console import setting
from ..errors import UserError
from ..losses import info_nce_queue
from ..nn import Queue, ema_copy, ema_momentum, ema_update, mlp
from ..views import ViewConfig, make_view
from .common import Batch, MethodOutput, Progress, lightly_cifar_recipe


def _moco_v2_views() -> ViewConfig:
    # MoCo v2's augmentation (Chen et al. 2020, sec. 3; main_moco.py --aug-plus).
    return ViewConfig(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


@dataclass
class Config:
    temperature: float = ranged(0.2, 1e-6, None)
    queue_size: int = ranged(65536, 1, None)  # K
    momentum: float = ranged(0.999, 0.0, 1.0)
    momentum_final: float = ranged(0.999, 0.0, 1.0)  # = momentum: constant, as in the paper
    projection_hidden_dim: int = ranged(2048, 1, None)
    projection_dim: int = ranged(128, 1, None)
    symmetric: bool = False  # also contrast (x_k, x_q) and enqueue both keys (MoCo's CIFAR demo)
    bn_groups: int = ranged(8, 1, None)  # over all processes: the paper's 8 GPUs
    views: ViewConfig = field(default_factory=_moco_v2_views)


def _cifar() -> dict:
    # lightly's CIFAR-10 benchmark (kNN 0.847 at 200 epochs, batch 512): its SGD recipe,
    # temperature 0.1, queue 8192, head 512 -> 128, constant momentum 0.99, symmetric loss,
    # BatchNorm in 8 groups; SimCLR's views with colour strength 0.5 and no blur. lightly halves
    # the sum of the two directions, which MoCo's CIFAR demo and this file do not (loss_scale).
    # Both directions here meet the same queue, the step's keys pushed after both, as the demo;
    # lightly's loss enqueues within each call, so its second direction's negatives hold the first
    # direction's keys, among them each query's own view through the momentum encoder.
    return {
        **lightly_cifar_recipe(loss_scale=2.0),
        "moco-v2": {"temperature": 0.1, "queue_size": 8192, "momentum": 0.99, "momentum_final": 0.99,
                    "projection_hidden_dim": 512, "symmetric": True,
                    "views": {"crop_scale": (0.08, 1.0), "blur_prob": 0.0}},
    }


def _imagenet() -> dict:
    # Paper: ResNet-50, SGD 0.03 per 256 images, weight decay 1e-4 on every parameter (as the
    # official main_moco.py), cosine schedule, 200 epochs.
    return {
        "backbone": {"name": "resnet50"},
        "optim": {"name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
                  "momentum": 0.9, "warmup_epochs": 0.0, "exclude_bias_and_norm": False},
        "train": {"epochs": 200, "batch_size": 256},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_data(config: Config, cache, train_idx) -> None:
    n = len(train_idx)  # the images pretrained on (those held out for the monitor never reach the queue)
    if config.queue_size > n:
        raise UserError(f"moco-v2.queue_size {config.queue_size:,} is longer than the {n:,} training images, so "
                        f"images would be their own negatives; set it to at most {n:,} "
                        f"(e.g. {setting('moco-v2.queue_size', str(n // 2))})")


def forward_in_groups(net: nn.Module, x: torch.Tensor, groups: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """`net` on `groups` sub-batches of `x` (B, ...) so BatchNorm normalises each separately:
    consecutive images, or a random split drawn from `generator`; outputs in the order of `x`."""
    groups = max(1, min(groups, len(x) // 2))  # BatchNorm needs two images per group
    if generator is None or groups == 1:
        return torch.cat([net(part) for part in x.chunk(groups)])
    order = torch.randperm(len(x), generator=generator, device=x.device)
    return torch.cat([net(part) for part in x[order].chunk(groups)])[order.argsort()]


@torch.no_grad()
def keys_shuffled_across_processes(net: nn.Module, x: torch.Tensor, groups: int,
                                   generator: torch.Generator) -> torch.Tensor:
    """`net` on the key images of every process in one random order shared by all (drawn by the
    first process), each process taking its slice in `groups` sub-batches; the keys of this
    process's images, in the order of `x` (B, ...)."""
    if dist.world_size() == 1:
        return forward_in_groups(net, x, groups, generator)
    everyone = dist.gather(x)  # (W*B, ...)
    order = dist.broadcast_from_first(torch.randperm(len(everyone), generator=generator, device=x.device))
    mine = slice(dist.rank() * len(x), (dist.rank() + 1) * len(x))
    keys = dist.gather(forward_in_groups(net, everyone[order[mine]], groups))  # (W*B, d) in shuffled order
    return keys[order.argsort()][mine]


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        c = config
        head = mlp([backbone.feature_dim, c.projection_hidden_dim, c.projection_dim], batch_norm=False)
        self.online = nn.Sequential(backbone, head)
        self.target = ema_copy(self.online)
        self.queue = Queue(c.queue_size, c.projection_dim)

    def contrast(self, x_q: torch.Tensor, x_k: torch.Tensor, generator: torch.Generator):
        """(loss, query, unit key) of queries from x_q against keys from x_k and the queue."""
        groups = max(1, self.config.bn_groups // dist.world_size())  # this process's share
        q = forward_in_groups(self.online, x_q, groups)  # (B, d)
        with torch.no_grad():
            k = F.normalize(keys_shuffled_across_processes(self.target, x_k, groups, generator), dim=1)
        # A copy: the queue changes in place below, and the backward pass still needs these keys.
        negatives = self.queue.keys.clone()
        return info_nce_queue(q, k, negatives, self.config.temperature, self.queue.filled()), q, k

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c = self.config
        x_1, x_2 = (make_view(batch.images, c.views, self.image_size, batch.generator) for _ in range(2))
        loss, q, k_2 = self.contrast(x_1, x_2, batch.generator)
        keys = [k_2]
        if c.symmetric:
            loss_21, _, k_1 = self.contrast(x_2, x_1, batch.generator)
            loss, keys = loss + loss_21, [k_2, k_1]
        self.queue.push(torch.cat(keys))  # after the loss
        momentum = ema_momentum(progress, c.momentum, c.momentum_final)
        return MethodOutput(loss=loss, metrics={"momentum": torch.tensor(momentum)}, embedding=q.detach())

    def after_step(self, progress: Progress) -> None:
        ema_update(self.target, self.online, ema_momentum(progress, self.config.momentum, self.config.momentum_final))

    def encoder(self) -> Backbone:
        return self.online[0]
