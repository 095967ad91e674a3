"""Temporal order verification (Misra, Zitnick & Hebert 2016, "Shuffle and Learn").

    a < b < c < d < e = five frames of a high-motion window of one clip   # sampled once, offline
    tuple, y = (b, c, d) or (d, c, b), 1  |  (b, a, d) or (b, e, d) (or reversed), 0
    h = concat(g(f(frame)) for frame in view(tuple))   # one encoder f and fc7 g for every frame
    loss = cross_entropy(classifier(h), y)              # is the tuple in order?

Data: videos or folders of frames (see data/video.py); tuples never cross clips.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import RunConfig, ranged
from ..console import option, warn
from ..data.video import VideoCache, open_clips
from ..errors import UserError
from ..nn import mlp
from ..views.temporal import change_ratio, clip_view, order_tuples
from . import rotation
from .common import Batch, MethodOutput, Progress, Samples

# The trainer reads clips, not single images; motion CSVs, which this method does not use, stay unread.
open_data = functools.partial(open_clips, motion=False)
MORE_SAMPLES = "temporal-order.tuples_per_clip"  # named when the batch outgrows the tuples


@dataclass
class Config:
    tuple_length: int = ranged(3, 3, 5)  # 3 in the paper; 5 as an option (7 frames drawn)
    tuples_per_clip: int = ranged(16, 1, None)
    # The paper draws tuples from windows of at most tau_max = 60 frames (UCF101, 25-30 fps).
    max_span: int = ranged(60, 2, None)
    min_gap: int = ranged(1, 1, None)  # frames between consecutive drawn frames, at least
    positive_fraction: float = ranged(0.25, 0.0, 1.0)  # the paper: 75 % negatives worked best
    # Windows whose mean frame change is below this quantile of all windows are not used (the
    # paper keeps high optical-flow windows); still windows are never used.
    motion_quantile: float = ranged(0.3, 0.0, 1.0)
    frame_dim: int = ranged(512, 1, None)  # fc7 per frame (4096 in CaffeNet)
    crop_scale: tuple[float, float] = ranged((0.6, 1.0), 1e-4, 1.0, ordered=True)  # one crop per tuple, shared by its frames


@dataclass
class OrderLabels:
    label: np.ndarray  # (n,) int64: 1 in order (either direction), 0 middle frame out of place


def _cifar() -> dict:
    # No CIFAR recipe in the paper: the one the pretext tasks share (see rotation.py); short clips.
    return {**rotation.PRESETS["cifar"](), "temporal-order": {"frame_dim": 256, "max_span": 15}}


def _imagenet() -> dict:
    # Official solver (imisra/shuffle-tuple): SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
    # batch 128, 100k iterations with a step at 80k (here a cosine).
    return {
        "optim": {"name": "sgd", "lr": 0.002, "lr_scaling": "linear", "weight_decay": 5e-4,
                  "momentum": 0.9, "warmup_epochs": 0.0},
        "train": {"epochs": 100, "batch_size": 128},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_config(cfg: RunConfig) -> None:
    """Refuse, before any data is read, a tuple without a middle frame (called by config.resolve)."""
    length = cfg.method_config.tuple_length
    if length % 2 == 0:  # a negative puts the middle frame out of place: an even tuple has none
        raise UserError(f"temporal-order.tuple_length must be 3 or 5 (a tuple with a middle frame), got {length}")


def check_data(config: Config, cache, train_idx) -> None:
    if not isinstance(cache, VideoCache):
        raise UserError(f"temporal-order needs clips: give {option('data')} a folder of videos or of frame folders")
    if config.max_span < (config.tuple_length + 1) * config.min_gap:
        raise UserError(f"temporal-order.max_span {config.max_span} cannot hold {config.tuple_length + 2} frames "
                        f"{config.min_gap} apart; raise it to {(config.tuple_length + 1) * config.min_gap}")


def samples(config: Config, cache: VideoCache, seed: int) -> Samples:
    # Numbered photos in class folders read as clips too; their frames are unrelated (measured:
    # 0.95 for CIFAR-10 class folders, 0.14 for `selfsup synth motion` clips).
    ratio = change_ratio(cache.images, cache.clip_rows(), seed)
    if ratio is not None and ratio > 0.75:
        warn(f"consecutive frames differ {ratio:.0%} as much as frames of different clips (far less in video): "
             f"{cache.source} looks like folders of photos, whose order cannot be learned; give frames of videos")
    rows, labels = order_tuples(cache, config.tuple_length, config.tuples_per_clip, config.max_span,
                                config.min_gap, config.positive_fraction, config.motion_quantile, seed)
    return Samples(rows, OrderLabels(labels))


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        self.frame_head = nn.Sequential(mlp([backbone.feature_dim, config.frame_dim]), nn.ReLU())
        self.classifier = nn.Linear(config.tuple_length * config.frame_dim, 2)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        x = clip_view(batch.images, self.image_size, self.config.crop_scale, True, batch.generator)  # (B, k, 3, s, s)
        b, k = x.shape[:2]
        h = self.frame_head(self.backbone(x.flatten(0, 1)))  # (B*k, frame_dim)
        logits = self.classifier(h.view(b, k * h.shape[1]))  # (B, 2)
        label = batch.side.label
        loss = F.cross_entropy(logits, label)
        accuracy = (logits.argmax(1) == label).float().mean()
        return MethodOutput(loss=loss, metrics={"pretext_acc": accuracy}, embedding=h.detach())

    def encoder(self) -> Backbone:
        return self.backbone
