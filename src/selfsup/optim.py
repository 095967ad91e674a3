"""Optimizers (SGD, LARS, AdamW) and schedules as pure functions of training progress."""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from .config import OptimConfig


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up over `warmup_steps` (step s gets peak * (s + 1) / warmup_steps, so the last
    warm-up step is at `peak`), then a cosine from `peak` to `final` at `total_steps` (Goyal et
    al. 2017; Loshchilov & Hutter 2017)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * t))


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """A cosine from `start` at step 0 to `end` at `total_steps` (DINO's weight decay, BYOL's EMA)."""
    t = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def peak_lr(cfg: OptimConfig, batch_size: int) -> float:
    """The base rate scaled to the global batch: linear (Goyal et al. 2017) or square-root."""
    ratio = batch_size / cfg.lr_reference_batch
    scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]
    return cfg.lr * scale


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as SimCLR and BYOL use it.

    For parameters in groups with `lars=True`, the update direction g + wd*w is rescaled by
    eta * |w| / |g + wd*w|. Groups with `lars=False` (biases, norm weights) take plain SGD steps.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                        torch.ones_like(w_norm))
                    update.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def clip_gradients_per_tensor(parameters, max_norm: float) -> None:
    """Scale every gradient longer than `max_norm` (L2) down to that length, each tensor on its
    own (DINO's `clip_gradients`, not one norm over all tensors as `clip_grad_norm_`). The scale is
    computed on the device, so the step waits for nothing on the host."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    scales = (max_norm / (torch.stack(torch._foreach_norm(grads)) + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, scales.unbind())


def parameter_groups(model: nn.Module, cfg: OptimConfig, spare_tokens: bool = False) -> list[dict]:
    """Weights (decayed, LARS-adapted) and biases/norm weights (neither, when
    `exclude_bias_and_norm`; with `spare_tokens`, as MAE's fine-tuning, also the class and
    register tokens and the positions); with `layer_decay` < 1 or `patch_embed_lr_ratio` != 1
    (ViTs, as DINOv2 pretrains), each further split by its learning-rate scale, `lr_scale`:
    layer_decay ** (depth + 1 - layer) (`vit_layer_id`), times patch_embed_lr_ratio in the patch
    embedding. Parameters without gradients (EMA teachers) are left out."""
    layered = cfg.layer_decay < 1 or cfg.patch_embed_lr_ratio != 1
    depth = _depth(model) if layered else 0
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if spare_tokens:  # MAE's lr_decay.py
            spared = param.ndim <= 1 or name.endswith(NO_DECAY_TOKENS)
        else:  # iBOT's and DINOv2's shape test; their mask token is (1, D), so decayed; selfsup's is (D,)
            spared = param.ndim <= 1 and not name.endswith("mask_token")
        decayed = not (cfg.exclude_bias_and_norm and spared)
        scale = 1.0
        if layered:
            scale = cfg.layer_decay ** (depth + 1 - vit_layer_id(name, depth))
            scale *= cfg.patch_embed_lr_ratio if ".patch_embed." in f".{name}" else 1.0
        group = groups.setdefault((scale, decayed), {
            "params": [], "weight_decay": cfg.weight_decay if decayed else 0.0, "lars": decayed, "decay": decayed,
            "lr_scale": scale})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]  # weights, then the rest


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise decay (layer_decay_groups)
        if group.get("decay", True):
            group["weight_decay"] = weight_decay


# ---------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay for fine-tuning ViTs

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")  # a transformer block's parameter: blocks.<i>.


def vit_layer_id(name: str, depth: int) -> int:
    """The layer of a ViT parameter in BEiT's layer-wise decay (Bao et al. 2022, used by MAE's
    fine-tuning, facebookresearch/mae util/lr_decay.py): the patch embedding, class token, mask
    token and positions are layer 0, block i is layer i + 1, and everything after the blocks
    (final norm, head) is layer depth + 1. `name` may carry a prefix (e.g. `backbone.net.`)."""
    block = _BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    if re.search(r"(?:^|\.)(?:patch_embed|cls_token|mask_token|reg_token|pos_embed)(?:\.|$)", name):
        return 0
    return depth + 1


NO_DECAY_TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")


def _depth(model: nn.Module) -> int:
    # The blocks of the networks being trained: a frozen teacher (distillation) may be deeper than
    # the student it teaches. A trained network's frozen blocks still count (its depth is its own).
    found = [(n[:m.start()], int(m.group(1)), p.requires_grad) for n, p in model.named_parameters()
             if (m := _BLOCK.search(n))]
    trained = {network for network, _, grad in found if grad} or {network for network, _, _ in found}
    blocks = {block for network, block, _ in found if network in trained}
    if not blocks:
        raise ValueError("layer-wise decay needs a ViT: no parameter belongs to `blocks.N`")
    return max(blocks) + 1


def layer_decay_groups(model: nn.Module, cfg: OptimConfig, decay: float) -> list[dict]:
    """Fine-tuning's parameter groups with `lr_scale` = decay ** (depth + 1 - layer): the head
    learns at the full rate, each layer below at `decay` times the rate of the one above, the
    embedding at decay ** (depth + 1). Biases, norm weights, the class (and register) tokens and
    the position embeddings get no weight decay when `cfg.exclude_bias_and_norm`. `set_schedule`
    multiplies each group's scheduled rate by its `lr_scale`."""
    return parameter_groups(model, dataclasses.replace(cfg, layer_decay=decay, patch_embed_lr_ratio=1.0),
                            spare_tokens=True)
