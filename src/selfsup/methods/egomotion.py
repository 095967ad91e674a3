"""Ego-motion equivariant features (Jayaraman & Grauman 2015, "Learning image representations
tied to ego-motion").

    (x, x', y) = frame pairs of one clip with the motor signal y between them  # offline
    g = kmeans(y)                                         # motion classes: left, right, forward, ...
    z, z' = normalize(h(f(view(x)))), normalize(h(f(view(x'))))
    loss = |M_g z - z'|^2 + contrastive margins           # one learned linear map per class
         (+ lambda * cross_entropy(classifier(f(x)), label) on the few labelled clips)

With `invariant: true` the maps stay the identity: the invariant baseline (DrLIM / slowness).
Data: clips with a motion CSV each (see data/video.py); `selfsup synth motion` makes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import ranged
from ..console import option, setting, warn
from ..data.video import VideoCache, open_clips
from ..errors import UserError
from ..losses.equivariance import closest_map, equivariance_loss
from ..nn import mlp
from ..views.temporal import clip_view, kmeans, motion_pairs, reading_scale
from . import rotation
from .common import Batch, MethodOutput, Progress, Samples

open_data = open_clips


@dataclass
class Config:
    # The paper clusters KITTI's (yaw, forward speed) pair motions into a few patterns (fig. 1).
    motion_classes: int = ranged(6, 2, 256)
    pair_gap: int = ranged(1, 1, None)  # frames between the two of a pair
    embedding_dim: int = ranged(64, 2, None)  # z, where the maps act
    hidden_dim: int = ranged(512, 1, None)
    margin: float = ranged(1.0, 0.0, None)  # on unit-length z
    other_map_weight: float = ranged(1.0, 0.0, None)  # "another class's map does not fit"
    invariant: bool = False  # maps fixed to the identity: the invariant baseline
    # Joint training with a supervised loss (the paper's eq. 8) on a few labelled clips; 0: off.
    supervised_weight: float = ranged(0.0, 0.0, None)
    supervised_classes: int = ranged(0, 0, None)  # number of classes of the clips' labels
    labelled_clips_per_class: int = ranged(5, 1, None)
    crop_scale: tuple[float, float] = ranged((0.8, 1.0), 1e-4, 1.0, ordered=True)  # one crop per pair; no flip (it would swap left and right)


@dataclass
class PairSide:
    motion_class: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) int64 class of the clip, -1 where not used for the supervised loss


# The paper gives no recipe for a ResNet: the ones the pretext tasks share (see rotation.py).
PRESETS = rotation.PRESETS


def check_data(config: Config, cache, train_idx) -> None:
    if not isinstance(cache, VideoCache):
        raise UserError(f"egomotion needs clips with motion signals: give {option('data')} a folder of videos or frame "
                        f"folders")
    if config.supervised_weight > 0 and (cache.labels is None or len(cache.classes) > config.supervised_classes):
        raise UserError(f"egomotion.supervised_weight > 0 needs clips in class folders (CLASS/CLIP) and "
                        f"egomotion.supervised_classes >= their number ({len(cache.classes)})")


def samples(config: Config, cache: VideoCache, seed: int) -> Samples:
    pairs = motion_pairs(cache, config.pair_gap)
    scale = reading_scale(pairs.motion)
    motion_class = kmeans(pairs.motion / scale, config.motion_classes, seed)
    made = len(np.unique(motion_class))
    if made == 1:
        raise UserError(f"the motion readings of all {len(pairs.rows):,} frame pairs are the same, so there is no "
                        f"motion to learn from; egomotion needs clips whose readings differ (turns, forward, still)")
    if made < config.motion_classes:
        warn(f"the motion readings make only {made} distinct motion classes of the {config.motion_classes} asked "
             f"for; the maps of the others learn nothing: {setting('egomotion.motion_classes', str(made))}")
    label = np.full(len(pairs.rows), -1, dtype=np.int64)
    if config.supervised_weight > 0:
        label = _few_labels(cache, pairs.rows[:, 0], config.labelled_clips_per_class)
    # Kept with the maps, so that pairs of other clips go to the classes the maps learned; the
    # training pairs too are classed by them, so that both agree whether k-means converged or not.
    scale, centres = scale.astype(np.float32), np.stack([
        (pairs.motion / scale)[motion_class == g].mean(0) if (motion_class == g).any() else np.full(scale.shape, np.inf)
        for g in range(config.motion_classes)]).astype(np.float32)
    motion_class = motion_classes_of(pairs.motion, scale, centres)
    names = np.frombuffer(",".join(cache.motion_columns).encode(), dtype=np.uint8).copy()
    return Samples(pairs.rows, PairSide(motion_class, label),
                   buffers={"motion_scale": scale, "motion_centres": centres, "motion_columns": names})


def motion_classes_of(motion: np.ndarray, scale: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n,) the class of each pair's motion (n, M): the nearest of a run's class centres (G, M),
    in the run's standardised readings."""
    return (((motion / scale)[:, None] - centres[None]) ** 2).sum(-1).argmin(1)


def reading_names(method: nn.Module) -> list[str]:
    """The motion readings a run's classes were made of, in their order (the CSV's columns)."""
    text = bytes(method.motion_columns.cpu().numpy()).decode()
    return text.split(",") if text else []


def _few_labels(cache: VideoCache, rows: np.ndarray, per_class: int) -> np.ndarray:
    """(n,) the class of the frame at each row for the first `per_class` clips of every class, -1 elsewhere."""
    clip = cache.clip[rows]
    kept: dict[int, list[int]] = {}
    for c, row in sorted(dict(zip(clip.tolist(), rows.tolist())).items()):
        chosen = kept.setdefault(int(cache.labels[row]), [])
        if len(chosen) < per_class:
            chosen.append(c)
    return np.where(np.isin(clip, sum(kept.values(), [])), cache.labels[rows], -1)


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size = config, image_size
        self.backbone = backbone
        self.head = mlp([backbone.feature_dim, config.hidden_dim, config.embedding_dim])
        eye = torch.eye(config.embedding_dim).repeat(config.motion_classes, 1, 1)  # (G, D, D)
        if config.invariant:
            self.register_buffer("maps", eye)
        else:  # identity plus a little noise, so the classes' maps start apart
            self.maps = nn.Parameter(eye + 0.01 * torch.randn_like(eye))
        classes = config.supervised_classes if config.supervised_weight > 0 else 0
        self.classifier = nn.Linear(backbone.feature_dim, classes) if classes else None
        # The motion classes as `samples` made them from every pair of the training clips (set by
        # the trainer): each reading's scale (M,), each class's centre in scaled readings (G, M),
        # and the readings' names (UTF-8 bytes of "yaw,forward,..."). Empty in checkpoints
        # written before they were kept.
        self.register_buffer("motion_scale", torch.zeros(0))
        self.register_buffer("motion_centres", torch.zeros(0))
        self.register_buffer("motion_columns", torch.zeros(0, dtype=torch.uint8))
        self._register_load_state_dict_pre_hook(self._take_motion_classes)

    def _take_motion_classes(self, state_dict, prefix, *_):
        """Buffers shaped by the data: take the checkpoint's shape, on this module's device (or
        keep them empty for a checkpoint written before they were kept)."""
        for name in ("motion_scale", "motion_centres", "motion_columns"):
            mine = getattr(self, name)
            if prefix + name in state_dict:
                saved = state_dict[prefix + name]
                self.register_buffer(name, torch.empty(saved.shape, dtype=saved.dtype, device=mine.device))
            else:
                state_dict[prefix + name] = mine

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        x = clip_view(batch.images, self.image_size, self.config.crop_scale, False, batch.generator)  # (B, 2, 3, s, s)
        b = x.shape[0]
        features = self.backbone(x.flatten(0, 1))  # (2B, F)
        z, z_later = F.normalize(self.head(features), dim=1).view(b, 2, -1).unbind(1)  # (B, D) each
        g = batch.side.motion_class
        other_maps = 0.0 if self.config.invariant else self.config.other_map_weight
        loss = equivariance_loss(z, z_later, g, self.maps, self.config.margin, other_maps)
        # Which map fits best says nothing when all are the identity (invariant): left out then.
        metrics = {} if self.config.invariant else \
            {"motion_acc": (closest_map(z.detach(), z_later.detach(), self.maps) == g).float().mean()}
        if self.classifier is not None:
            label = batch.side.label
            logits = self.classifier(features.view(b, 2, -1)[:, 0])
            labelled = label >= 0
            supervised = F.cross_entropy(logits[labelled], label[labelled]) if labelled.any() else logits.sum() * 0
            loss = loss + self.config.supervised_weight * supervised
            metrics["supervised_loss"] = supervised.detach()
        return MethodOutput(loss=loss, metrics=metrics, embedding=z.detach())

    def encoder(self) -> Backbone:
        return self.backbone
