"""Fine-tuning: the whole encoder and a new linear head trained together on the labelled subset.

The encoder learns at `encoder_lr_ratio` times the head's rate, so the pretrained weights move
less than the randomly initialised head; ViTs use BEiT's layer-wise decay instead (as MAE's
fine-tuning does): each block learns `layer_decay` times as fast as the one above it. Optionally the first N
stages are frozen (weights and BatchNorm statistics) and the rest trained, as in the rotation
paper's CIFAR-10 experiments (Gidaris et al. 2018, sec. 3.1). Views are the standard supervised
ones, made on the device: random resized crop and horizontal flip. AdamW with a linear warm-up and
a cosine decay; the validation top-1 is measured `epochs` times along the way and the best state is
kept (early stopping after `patience` checks without improvement). Test images are only predicted,
after training; their labels are read by the caller.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit import set_drop_path
from ..config import ranged
from ..console import protocol_option
from ..errors import UserError
from ..optim import warmup_cosine
from ..views import ViewConfig, make_view
from .features import extract_features
from .knn import topk_accuracy


@dataclass
class FinetuneConfig:
    epochs: int = ranged(30, 1, None)  # passes over the labelled images (also: validation checks)
    min_steps: int = ranged(200, 0, None)  # with a few labels an epoch is one step: at least this many
    batch_size: int = ranged(128, 2, None)
    lr: float = ranged(1e-3, 0.0, None)  # AdamW peak rate of the new head
    encoder_lr_ratio: float = ranged(0.1, 0.0, 1.0)  # encoder rate / head rate (CNNs)
    # ViTs: rate factor per block below the top (MAE's fine-tuning: 0.65 for ViT-B, 0.75 for ViT-L/H)
    layer_decay: float = ranged(0.75, 0.0, 1.0)
    weight_decay: float = ranged(0.05, 0.0, None)
    warmup_fraction: float = ranged(0.05, 0.0, 1.0)
    # RandomResizedCrop's lower scale: 0.08 (torchvision's default) is harsh on 32-pixel images.
    crop_scale: tuple[float, float] = ranged((0.25, 1.0), 1e-4, 1.0, ordered=True)
    patience: int = ranged(5, 1, None)  # validation checks without improvement before stopping
    freeze_stages: int = ranged(0, 0, None)  # freeze the stem and the first N stages
    label_smoothing: float = ranged(0.0, 0.0, 1.0)
    # ViTs: stochastic depth while fine-tuning, rising over the blocks to this rate (MAE: 0.1 for ViT-B)
    drop_path_rate: float = ranged(0.1, 0.0, 1.0)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, generator: torch.Generator):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        with torch.no_grad():  # small, so the head starts near uniform predictions (as MAE does)
            self.head.weight.normal_(0, 0.01, generator=generator)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, C)


def finetune_option(name: str, value: object = None) -> str:
    """A fine-tuning option as the reader gives it: `--freeze-stages 0` in a command, a key of the
    `config` dict from Python (`config={'freeze_stages': 0}`, in a curve's protocol_options:
    `protocol_options={'config': {'freeze_stages': 0}}`); without a value, `--freeze-stages` or
    `config['freeze_stages']`."""
    if value is None:
        return protocol_option(name, within=("config",))
    return protocol_option(name, value, within=("config",))


def stages(net: nn.Module) -> tuple[list[nn.Module | nn.Parameter], list[nn.Module]]:
    """(stem, stages) of a ResNet (conv1/bn1, layer1..4) or a timm ViT (embedding, blocks)."""
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return [net.conv1, net.bn1], [getattr(net, f"layer{i}") for i in range(1, 5)]
    if hasattr(net, "blocks") and hasattr(net, "patch_embed"):
        stem = [net.patch_embed] + [getattr(net, n) for n in ("cls_token", "reg_token", "pos_embed")
                                    if getattr(net, n, None) is not None]
        return stem, list(net.blocks)
    raise UserError(f"{finetune_option('freeze_stages')} knows ResNets and ViTs, not {type(net).__name__}; use "
                    f"{finetune_option('freeze_stages', 0)}")


def freeze(net: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the stem and the first `n` stages; returns the frozen modules (kept in eval mode,
    so their BatchNorm statistics stay those of pretraining)."""
    if n == 0:
        return []
    stem, blocks = stages(net)
    if n > len(blocks):
        raise UserError(f"{finetune_option('freeze_stages', n)} is more than the {len(blocks)} stages of this backbone")
    frozen = stem + blocks[:n]
    for part in frozen:
        for p in ([part] if isinstance(part, nn.Parameter) else part.parameters()):
            p.requires_grad_(False)
    return [m for m in frozen if isinstance(m, nn.Module)]


def param_groups(model: Classifier, cfg: FinetuneConfig) -> list[dict]:
    """CNNs: the head at `lr`, the encoder at `lr * encoder_lr_ratio`. ViTs (with layer_decay < 1):
    BEiT's layer-wise decay instead, the head (and final norm) at `lr`, each block below at
    `layer_decay` times the rate above. Biases and norm weights without weight decay. Each group
    keeps its peak rate in `peak_lr`."""
    from ..config import OptimConfig
    from ..optim import layer_decay_groups

    if model.backbone.kind == "vit" and cfg.layer_decay < 1:
        groups = layer_decay_groups(model, OptimConfig(weight_decay=cfg.weight_decay), cfg.layer_decay)
        return [dict(g, lr=cfg.lr * g["lr_scale"], peak_lr=cfg.lr * g["lr_scale"]) for g in groups]
    groups = []
    for part, lr in ((model.backbone, cfg.lr * cfg.encoder_lr_ratio), (model.head, cfg.lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        groups += [{"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": cfg.weight_decay},
                   {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}]
    return [dict(g, peak_lr=g["lr"]) for g in groups if g["params"]]


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Indices of endless shuffled passes over n items, `batch_size` at a time (the last batch
    of a pass may be smaller, but never a single image, which BatchNorm cannot normalise)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if min(batch_size, n - start) > 1:
                yield order[start:start + batch_size].numpy()


@dataclass
class Finetuned:
    model: Classifier  # in its best state (by validation top-1), or its last without validation
    val_top1: float | None
    steps: int  # optimizer steps taken (fewer than planned when stopped early)
    best_step: int


class EarlyStopping:
    """Keeps the state of the best validation top-1; says stop after `patience` checks without a gain."""

    def __init__(self, patience: int):
        self.patience, self.best, self.state, self.step, self.stale = patience, -1.0, None, 0, 0

    def update(self, model: nn.Module, step: int, top1: float) -> bool:
        if top1 > self.best:
            self.best, self.step, self.stale = top1, step, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1
        return self.stale >= self.patience


def _train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()


def _val_top1(model: nn.Module, images, val_idx, val_y, image_size: int, device) -> float:
    logits = extract_features(model, images, image_size, device, indices=val_idx, desc="validation")
    return topk_accuracy(logits, val_y, ks=(1,))["top1"]


def _plan(cfg: FinetuneConfig, n: int) -> tuple[int, int, int, int]:
    """(batch size, total steps, steps between validation checks, warm-up steps)."""
    batch_size = min(cfg.batch_size, n)
    total = max(cfg.epochs * math.ceil(n / batch_size), cfg.min_steps)
    return batch_size, total, math.ceil(total / cfg.epochs), int(cfg.warmup_fraction * total)


def finetune(backbone: nn.Module, images: np.ndarray, train_idx: np.ndarray, train_y: torch.Tensor,
             val_idx: np.ndarray, val_y: torch.Tensor, num_classes: int, image_size: int,
             cfg: FinetuneConfig, device: torch.device, seed: int = 0) -> Finetuned:
    """Fine-tune a copy of `backbone` with a new head on `images[train_idx]` ((N, S, S, 3) uint8)."""
    # Stochastic depth draws from torch's global generator: seeded here, and the caller's restored.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _finetune(backbone, images, train_idx, train_y, val_idx, val_y, num_classes, image_size, cfg,
                         device, seed)


def _finetune(backbone, images, train_idx, train_y, val_idx, val_y, num_classes, image_size, cfg, device,
              seed) -> Finetuned:
    from ..train import autocast_for

    generator = torch.Generator().manual_seed(seed)
    view_generator = torch.Generator(device=device).manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), num_classes, generator).to(device)
    # Everything trains unless frozen here: an EMA teacher's encoder (DINO) and MAE's fixed
    # positional embeddings arrive with requires_grad off.
    model.backbone.requires_grad_(True)
    if model.backbone.kind == "vit" and hasattr(model.backbone.net, "blocks"):
        set_drop_path(model.backbone.net, cfg.drop_path_rate)
    frozen = freeze(model.backbone.net, cfg.freeze_stages)
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    batch_size, total, check_every, warmup = _plan(cfg, len(train_idx))
    views = ViewConfig(crop_scale=cfg.crop_scale, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    train_y, stopper = train_y.to(device), EarlyStopping(cfg.patience)
    batches = _batches(len(train_idx), batch_size, generator)
    for step in range(1, total + 1):
        _train_mode(model, frozen)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * warmup_cosine(step - 1, total, warmup, 1.0, 0.0)
        idx = next(batches)
        x = torch.from_numpy(images[train_idx[idx]]).to(device, non_blocking=True)
        with autocast_for(device, "auto"):
            logits = model(make_view(x, views, image_size, view_generator))  # (B, C)
        loss = F.cross_entropy(logits.float(), train_y[idx], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        checked = step % check_every == 0 or step == total  # looked at where validation is: no sync a step
        if checked and not torch.isfinite(loss):
            raise UserError(f"fine-tuning diverged: its loss is {loss.item()} at step {step:,} of {total:,}; "
                            f"lower its learning rate ({finetune_option('lr', cfg.lr / 10)})")
        if len(val_idx) and checked and \
                stopper.update(model, step, _val_top1(model, images, val_idx, val_y, image_size, device)):
            break
    if stopper.state is not None:
        model.load_state_dict(stopper.state)
        return Finetuned(model.eval(), stopper.best, step, stopper.step)
    return Finetuned(model.eval(), None, step, step)
