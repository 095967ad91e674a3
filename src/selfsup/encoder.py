"""Getting an encoder to evaluate, export or embed with: from a checkpoint, or at random.

An encoder spec is the path of a selfsup checkpoint (or a run folder), or `random:BACKBONE` for
that architecture at random initialisation (the baseline every method must beat).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as config_lib
from .backbones import Backbone, build_backbone
from .checkpoint import load_checkpoint
from .config import BackboneConfig, RunConfig
from .methods import build_method


@dataclass
class Encoder:
    backbone: Backbone
    image_size: int  # the size it was trained at; evaluation centre-crops to it
    cache_size: int  # the square side images are decoded to before the centre crop
    description: str  # for reports: where it came from
    config: RunConfig | None = None  # the training run's config, when there was one


def default_cache_size(image_size: int) -> int:
    return image_size if image_size <= 64 else round(image_size * 8 / 7)


def load_encoder(spec: str | Path, image_size: int | None = None, small_stem: bool | None = None,
                 seed: int = 0) -> Encoder:
    """The encoder of a selfsup checkpoint, or `random:BACKBONE` at random initialisation."""
    spec = str(spec)
    if spec.startswith("random:"):
        size = image_size or 224
        stem = small_stem if small_stem is not None else size <= 64
        torch.manual_seed(seed)
        backbone = build_backbone(BackboneConfig(name=spec[len("random:"):], small_stem=stem), size)
        return Encoder(backbone, size, default_cache_size(size), f"{spec} (random initialisation)")
    checkpoint = load_checkpoint(spec)
    cfg = config_lib.from_dict(checkpoint["config"])
    method = build_method(cfg)
    method.load_state_dict(checkpoint["model"])
    epoch = checkpoint.get("position", {}).get("epoch", "?")
    return Encoder(method.encoder(), cfg.data.image_size, cfg.data.cache_size,
                   f"{cfg.method} {cfg.backbone.name}, {epoch} epochs ({spec})", cfg)
