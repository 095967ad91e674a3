"""The DINOv2 recipe (Oquab et al. 2023): DINO + iBOT (Zhou et al. 2022) + KoLeo, on a ViT.

    crops = V global + L local crops of x
    m = masks over the patches of some global crops         # block-wise, 10-50 % of the patches
    s_cls, s_patch = f(global crops, m)                     # student: masked patches -> [MASK] token
    s_cls += f(local crops).cls                             # the local crops add class tokens only
    t_cls, t_patch = f'(global crops)                       # EMA teacher: whole global crops
    loss = dino(h(s_cls), h'(t_cls))                        # image level: CE over pairs of views
         + ibot(g(s_patch[m]), g'(t_patch[m]))              # patch level: recover the teacher's
                                                            # view of each masked patch
         + 0.1 sum of koleo(s_cls of each global crop)      # spread the batch's features
    teacher targets: Sinkhorn-Knopp (DINOv2) or DINO's centring and sharpening (iBOT)
    after the optimizer step: teacher <- EMA of the student (backbone, h, g)

`--method ibot`. The patch head g is h itself (`shared_head`, iBOT's and DINOv2's default) or a
second DINO head. The encoder kept is the teacher's backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.vit import encode, patch_size_of
from ..config import RunConfig, ranged
from ..console import one_of, said_as
from ..errors import UserError
from ..losses import center_and_sharpen, cross_view_entropy, dino_center, ibot_patch_loss, koleo_loss, sinkhorn_knopp
from ..nn import DINOHead, ema_copy, ema_momentum, ema_update, forward_by_size
from ..views import block_mask
from .common import Batch, MethodOutput, MultiCropConfig, Progress, check_multi_crop
from .dino import teacher_temperature


@dataclass
class Config(MultiCropConfig):
    # Heads: DINOv2's defaults (ssl_default_config.yaml).
    out_dim: int = ranged(65536, 1, None)
    patch_out_dim: int = ranged(65536, 1, None)  # used when the patch head is separate
    shared_head: bool = True
    hidden_dim: int = ranged(2048, 1, None)
    bottleneck_dim: int = ranged(256, 1, None)
    head_layers: int = ranged(3, 1, None)
    # DINOv2's head learns the gain of its weight-normalised last layer (iBOT's recipes too:
    # --norm_last_layer false), and freezes that layer in the first epoch. Both presets turn these
    # on; the defaults here keep the head of checkpoints written before.
    norm_last_layer: bool = True
    freeze_last_layer_epochs: float = ranged(0.0, 0.0, None)
    student_temperature: float = ranged(0.1, 1e-6, None)
    teacher_temperature_start: float = ranged(0.04, 1e-6, None)
    teacher_temperature: float = ranged(0.07, 1e-6, None)
    teacher_temperature_warmup_epochs: float = ranged(30.0, 0.0, None)
    centering: Literal["sinkhorn", "centre"] = "sinkhorn"
    sinkhorn_iterations: int = ranged(3, 1, None)
    center_momentum: float = ranged(0.9, 0.0, 1.0)  # with centering "centre"
    momentum: float = ranged(0.992, 0.0, 1.0)
    momentum_final: float = ranged(1.0, 0.0, 1.0)
    dino_weight: float = ranged(1.0, 0.0, None)
    ibot_weight: float = ranged(1.0, 0.0, None)
    koleo_weight: float = ranged(0.1, 0.0, None)
    # Masking: half the global crops get a block mask over 10 % to 50 % of their patches.
    mask_probability: float = ranged(0.5, 0.0, 1.0)
    mask_ratio: tuple[float, float] = ranged((0.1, 0.5), 0.0, 1.0, ordered=True)  # (low, high)


# DINOv2's head (dinov2/configs/ssl_default_config.yaml): the last layer's gain is learned, and the
# layer is frozen in the first epoch. Its gradients are clipped to 3 (here per tensor, as iBOT's).
# Frozen here means no gradient, as DINO and iBOT freeze it; DINOv2 gives the layer a rate of 0
# instead, so its AdamW moments already run during that epoch.
DINOV2_HEAD = {"norm_last_layer": False, "freeze_last_layer_epochs": 1.0}
# ssl_default_config.yaml's optim.layerwise_decay and optim.patch_embed_lr_mult.
DINOV2_LAYERS = {"layer_decay": 0.9, "patch_embed_lr_ratio": 0.2}


def _cifar() -> dict:
    # A ViT-Tiny with 4-pixel patches on 32-pixel images with DINOv2's default optimisation
    # (ssl_default_config.yaml: AdamW, lr 0.004 per 1024 images scaled by the square root of the
    # batch, weight decay 0.04 -> 0.4 on a cosine, 10 warm-up epochs), iBOT's teacher momentum
    # 0.996 (main_ibot.py), stochastic depth 0.1 as iBOT's ViT-S, a smaller head and 6 local
    # crops of 16 px. The crop scales are this preset's own for 32-pixel images, not a source's.
    return {
        "backbone": {"name": "vit-tiny", "patch_size": 4, "drop_path_rate": 0.1},
        "optim": {"name": "adamw", "lr": 4e-3, "lr_scaling": "sqrt", "lr_reference_batch": 1024,
                  "weight_decay": 0.04, "weight_decay_end": 0.4, "warmup_epochs": 10.0, "betas": (0.9, 0.999),
                  "clip_grad": 3.0, "final_lr_ratio": 1e-6 / 2e-3,  # to min_lr 1e-6 from the peak at batch 256
                  **DINOV2_LAYERS},
        "train": {"epochs": 200, "batch_size": 256},
        "ibot": {**DINOV2_HEAD, "out_dim": 4096, "patch_out_dim": 4096, "local_crops": 6, "local_size": 16,
                 "momentum": 0.996, "global_view_1": {"crop_scale": (0.25, 1.0), "blur_prob": 0.0},
                 "global_view_2": {"crop_scale": (0.25, 1.0), "blur_prob": 0.0},
                 "local_view": {"crop_scale": (0.05, 0.25), "blur_prob": 0.0}},
    }


def _imagenet() -> dict:
    # A ViT-S/14 at 224 with DINOv2's default recipe (ssl_default_config.yaml; the repository
    # publishes training configs for ViT-L and ViT-g only): AdamW, lr 0.004 per 1024 images with
    # square-root scaling to the batch, weight decay 0.04 -> 0.4, 10 warm-up epochs, global crops
    # (0.32, 1), 8 local crops of 98 px (0.05, 0.32) as its ViT-L config, teacher momentum
    # 0.992 -> 1, stochastic depth 0.1 (iBOT's ViT-S; DINOv2's default 0.3 is for its larger
    # models). Sinkhorn-Knopp centring (`ibot.centering`) is its ViT-L and ViT-g configs' choice;
    # the default file says DINO's centring. Its layer-wise lr decay 0.9 and patch-embedding lr
    # x 0.2 (both presets). The ViT is timm's plain one: no LayerScale (DINOv2's default 1e-5) and
    # stochastic depth rising over the blocks, as iBOT's (DINOv2's default is uniform).
    return {
        "backbone": {"name": "vit-small", "patch_size": 14, "drop_path_rate": 0.1},
        "data": {"image_size": 224},
        "optim": {"name": "adamw", "lr": 4e-3, "lr_scaling": "sqrt", "lr_reference_batch": 1024,
                  "weight_decay": 0.04, "weight_decay_end": 0.4, "warmup_epochs": 10.0, "clip_grad": 3.0,
                  "final_lr_ratio": 1e-6 / 2e-3, **DINOV2_LAYERS},  # the cosine ends at min_lr 1e-6
        "train": {"epochs": 100, "batch_size": 256},
        "ibot": {**DINOV2_HEAD, "local_size": 98, "global_view_1": {"crop_scale": (0.32, 1.0)},
                 "global_view_2": {"crop_scale": (0.32, 1.0)}, "local_view": {"crop_scale": (0.05, 0.32)}},
    }


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_config(cfg: RunConfig) -> None:
    """iBOT masks patch tokens: it needs one of the ViTs whose tokens selfsup can reach, and local
    crops that ViT can cut into patches."""
    from ..backbones.vit import VITS

    if cfg.backbone.name not in VITS:
        vits = said_as(f"--backbone {', '.join(VITS)}", one_of("backbone", VITS))
        raise UserError(f"ibot masks patch tokens and needs a ViT: {vits} "
                        f"(got {cfg.backbone.name})")
    check_multi_crop(cfg)


def patch_masks(n: int, grid: tuple[int, int], config: Config, generator: torch.Generator) -> torch.Tensor:
    """(n, N) bool, as DINOv2's collate: exactly int(n * mask_probability) of the n images, chosen
    at random, get a block mask; their hidden fractions are stratified over `mask_ratio` (the i-th
    of m drawn uniformly from the i-th of m equal parts of it), so every batch spans the range."""
    device, patches = generator.device, grid[0] * grid[1]
    m = int(n * config.mask_probability)
    edges = torch.linspace(*config.mask_ratio, m + 1, device=device)
    ratios = edges[:-1] + torch.rand(m, generator=generator, device=device) * (edges[1:] - edges[:-1])
    counts = torch.zeros(n, dtype=torch.long, device=device)
    counts[torch.randperm(n, generator=generator, device=device)[:m]] = (ratios * patches).long()
    return block_mask(n, grid, counts, generator)


class Method(nn.Module):
    # A step without masked patches leaves a separate patch head without gradients (DDP must know).
    may_skip_parameters = True

    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        if backbone.kind != "vit" or not hasattr(backbone.net, "patch_embed"):
            raise UserError(f"ibot needs a ViT backbone (vit-tiny, vit-small, vit-base), "
                            f"got {backbone.name}")
        self.config, self.image_size, c = config, image_size, config
        self.grid = (image_size // patch_size_of(backbone.net),) * 2
        heads = {"head": DINOHead(backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                                  norm_last_layer=c.norm_last_layer)}
        if not c.shared_head:
            heads["patch_head"] = DINOHead(backbone.feature_dim, c.patch_out_dim, c.hidden_dim, c.bottleneck_dim,
                                           c.head_layers, norm_last_layer=c.norm_last_layer)
        self.student = nn.ModuleDict({"backbone": backbone, **heads})
        self.teacher = ema_copy(self.student)
        # iBOT's learned [MASK], starting at zero as iBOT's masked_embed and DINOv2's mask_token do.
        self.mask_token = nn.Parameter(torch.zeros(backbone.feature_dim))
        self.register_buffer("center", torch.zeros(c.out_dim))
        self.register_buffer("patch_center", torch.zeros(c.out_dim if c.shared_head else c.patch_out_dim))

    def _patch_head(self, network: nn.ModuleDict) -> nn.Module:
        return network["head"] if self.config.shared_head else network["patch_head"]

    def _targets(self, logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
        """The teacher's distributions (..., K), by Sinkhorn-Knopp or by centring and sharpening."""
        if self.config.centering == "sinkhorn":
            flat = logits.reshape(-1, logits.shape[-1])
            return sinkhorn_knopp(flat, temperature, self.config.sinkhorn_iterations).view_as(logits)
        return center_and_sharpen(logits, center, temperature)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c, n = self.config, len(batch.images)
        crops = c.make_crops(batch.images, self.image_size, batch.generator)
        global_crops = torch.cat(crops[:c.global_crops])  # (V*B, 3, S, S)
        masks = patch_masks(len(global_crops), self.grid, c, batch.generator)  # (V*B, N)
        student, teacher = self.student, self.teacher
        tokens = encode(student["backbone"].net, global_crops, mask=masks, mask_token=self.mask_token)  # (VB, 1+N, D)
        cls = tokens[:, 0]
        if c.local_crops:
            cls = torch.cat([cls, forward_by_size(student["backbone"], crops[c.global_crops:])])  # (S*B, D)
        freeze = progress.epoch < c.freeze_last_layer_epochs
        s = student["head"](cls, freeze).view(len(crops), n, -1)  # (S, B, K)
        masked = masks.nonzero(as_tuple=True)  # (image, patch) of the M masked patches: the step's one sync
        s_patch = self._patch_head(student)(tokens[:, 1:][masked], freeze)  # (M, K')
        with torch.no_grad():
            t_tokens = encode(teacher["backbone"].net, global_crops)  # (VB, 1+N, D)
            t = teacher["head"](t_tokens[:, 0]).view(c.global_crops, n, -1)  # (V, B, K)
            t_patch = self._patch_head(teacher)(t_tokens[:, 1:][masked])  # (M, K')
        temperature = teacher_temperature(c, progress)
        targets = self._targets(t, self.center, temperature)
        dino = cross_view_entropy(s, targets, c.student_temperature)
        ibot = ibot_patch_loss(s_patch, self._targets(t_patch, self.patch_center, temperature), masks,
                               c.student_temperature)
        # Summed over the global crops (never across them: two crops of one image are not neighbours
        # to push apart), as DINOv2's code does: koleo_loss_weight * sum over its 2 global crops.
        koleo = sum(koleo_loss(v) for v in tokens[:, 0].chunk(c.global_crops))
        loss = c.dino_weight * dino + c.ibot_weight * ibot + c.koleo_weight * koleo
        if c.centering == "centre":  # after the loss, as in DINO and iBOT
            self.center.copy_(dino_center(self.center, t, c.center_momentum))
            # The masked patches' outputs, as DINOv2 (iBOT's code averages every patch); on every
            # process, also one without masked patches in this step (a collective).
            self.patch_center.copy_(dino_center(self.patch_center, t_patch, c.center_momentum))
        # The collapse monitor watches the prototype the teacher expects per image (see dino.py).
        expected = targets[0] @ teacher["head"].last_layer.weight  # (B, bottleneck)
        metrics = {"dino_loss": dino.detach(), "ibot_loss": ibot.detach(), "koleo": koleo.detach(),
                   "masked_fraction": masks.float().mean(),
                   "momentum": torch.tensor(ema_momentum(progress, c.momentum, c.momentum_final)),
                   "teacher_temperature": torch.tensor(temperature)}
        return MethodOutput(loss=loss, metrics=metrics, embedding=expected)

    def after_step(self, progress: Progress) -> None:
        ema_update(self.teacher, self.student, ema_momentum(progress, self.config.momentum, self.config.momentum_final))

    def encoder(self) -> Backbone:
        return self.teacher["backbone"]
