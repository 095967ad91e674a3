"""Distillation of a large encoder into a smaller one, as DINOv2 distils its ViT-g (Oquab et al.
2023, sec. 5): the frozen teacher's outputs are the targets of the self-supervised losses.

    t = teacher(global crops)                     # frozen: no gradient, never updated
    s = student(all crops)
    with a DINO/iBOT teacher (it has a prototype head):
        loss = dino(h(s_cls), sinkhorn(h'(t_cls)))    # image level, over pairs of different views
             + ibot(h(s_patch[m]), sinkhorn(h'(t_patch[m])))   # patch level, ViT student and
                                                                # teacher of the same token grid
    with any other teacher (its features only):
        loss = 2 - 2 cos(p(s_global), t_global)       # p: identity, or a linear projection when
                                                      # the dimensions differ (`projection`)
    after each step: student_ema <- EMA(student), BatchNorm statistics too; the EMA is the encoder kept.

`--method distill --teacher CKPT --backbone SMALL`; CKPT is a selfsup checkpoint (or run folder),
or `weights:FILE` with `--set distill.teacher_backbone=NAME` for a plain timm/torchvision file.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.vit import encode, patch_size_of
from ..config import RunConfig, ranged
from ..console import option, said_as, setting, warn
from ..errors import UserError
from ..losses import byol_loss, cross_view_entropy, ibot_patch_loss, sinkhorn_knopp
from ..nn import DINOHead, ema_copy, ema_update, forward_by_size
from .common import Batch, MethodOutput, MultiCropConfig, Progress, check_multi_crop
from .ibot import patch_masks


@dataclass
class Config(MultiCropConfig):
    teacher: str = ""  # a selfsup checkpoint or run folder, or weights:FILE
    teacher_backbone: str | None = None  # the architecture of a weights:FILE teacher
    projection: bool = False  # feature teachers of another width: learn a linear map to it
    hidden_dim: int = ranged(2048, 1, None)
    bottleneck_dim: int = ranged(256, 1, None)
    head_layers: int = ranged(3, 1, None)
    student_temperature: float = ranged(0.1, 1e-6, None)
    teacher_temperature: float = ranged(0.07, 1e-6, None)  # a trained teacher: no warm-up
    patch_loss_weight: float = ranged(1.0, 0.0, None)
    mask_probability: float = ranged(0.5, 0.0, 1.0)
    mask_ratio: tuple[float, float] = ranged((0.1, 0.5), 0.0, 1.0, ordered=True)
    ema_momentum: float = ranged(0.994, 0.0, 1.0)
    local_crops: int = ranged(0, 0, None)  # DINOv2's distillation: global crops only by default


# DINOv2 distils with its own pretraining recipe and a frozen teacher (MODEL_CARD.md); the values
# below are this library's simpler choice (constant weight decay, no clipping, linear lr scaling),
# not a source's. BENCHMARKS.md ("Distillation against training from scratch") measured them.
def _cifar() -> dict:
    no_blur = {"blur_prob": 0.0}
    return {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.04, "warmup_epochs": 5.0},
            "train": {"epochs": 100, "batch_size": 256},
            "distill": {"hidden_dim": 1024, "local_size": 16, "global_view_1": no_blur, "global_view_2": no_blur,
                        "local_view": no_blur}}


def _imagenet() -> dict:
    return {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.04, "warmup_epochs": 10.0},
            "train": {"epochs": 100, "batch_size": 256}, "distill": {"local_crops": 8, "local_size": 96}}


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def check_config(cfg: RunConfig) -> None:
    check_multi_crop(cfg)
    if not cfg.method_config.teacher:
        raise UserError(f"{option('method', 'distill')} needs a teacher: {said_as('--teacher CKPT', 'teacher=CKPT')} "
                        f"(a selfsup checkpoint or run folder, or weights:FILE with "
                        f"{setting('distill.teacher_backbone', 'NAME')})")
    check_teacher_exists(cfg.method_config.teacher)  # before the data is decoded, not after


def check_teacher_exists(teacher: str) -> None:
    if not teacher.startswith(("weights:", "random:")) and not Path(teacher).expanduser().exists():
        raise UserError(f"the teacher {teacher!r} does not exist; give its place with "
                        f"{said_as('--teacher PATH', 'teacher=PATH')} (also with {option('resume', True)}: the run's "
                        f"checkpoint holds the teacher's weights)")


def load_teacher(config: Config, image_size: int) -> nn.ModuleDict:
    """{"backbone"} of any encoder, plus {"head", "patch_head"} when it is a DINO or iBOT run."""
    from ..checkpoint import load_checkpoint
    from ..config import from_dict
    from ..encoder import load_encoder
    from . import restore_method

    if config.teacher.startswith(("weights:", "random:")):
        return nn.ModuleDict({"backbone": load_encoder(config.teacher, image_size=image_size,
                                                       backbone=config.teacher_backbone).backbone})
    check_teacher_exists(config.teacher)
    instead = said_as("use --teacher weights:FILE --set distill.teacher_backbone=NAME",
                      "give teacher='weights:FILE' with config={'distill': {'teacher_backbone': NAME}}")
    checkpoint = load_checkpoint(config.teacher, plain_weights=f"plain weights: {instead}")
    teacher_cfg = from_dict(checkpoint["config"])
    if teacher_cfg.data.image_size != image_size:
        warn(f"the teacher {config.teacher!r} was trained on {teacher_cfg.data.image_size}-pixel images and "
             f"teaches on {image_size}-pixel crops here (its features may differ there); "
             f"{option('image_size', teacher_cfg.data.image_size)} keeps its size")
    if teacher_cfg.method == "distill":  # a distilled student teaches with its kept encoder, its EMA
        return nn.ModuleDict({"backbone": encoder_from_state(teacher_cfg, checkpoint["model"])})
    method = restore_method(teacher_cfg, checkpoint["model"])
    teacher = getattr(method, "teacher", None)
    if isinstance(teacher, nn.ModuleDict) and "head" in teacher:
        patch_head = teacher["patch_head"] if "patch_head" in teacher else teacher["head"]
        return nn.ModuleDict({"backbone": teacher["backbone"], "head": teacher["head"], "patch_head": patch_head})
    return nn.ModuleDict({"backbone": method.encoder()})


def encoder_from_state(cfg: RunConfig, state: dict) -> Backbone:
    """The kept encoder (the student's EMA) from a checkpoint, without loading the teacher."""
    from ..backbones import build_backbone

    backbone = build_backbone(cfg.backbone, cfg.data.image_size)
    prefix = "student_ema.backbone."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return backbone


class Method(nn.Module):
    may_skip_parameters = True  # a step without masked patches leaves the mask token idle

    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        self.config, self.image_size, c = config, image_size, config
        self.teacher = load_teacher(config, image_size).requires_grad_(False).eval()
        t_backbone = self.teacher["backbone"]
        if "head" in self.teacher:
            out_dim = self.teacher["head"].last_layer.weight.shape[0]
            head = DINOHead(backbone.feature_dim, out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers)
        elif c.projection:
            head = nn.Linear(backbone.feature_dim, t_backbone.feature_dim)
        elif backbone.feature_dim != t_backbone.feature_dim:
            raise UserError(f"the teacher's features have {t_backbone.feature_dim} dimensions and the student's "
                            f"{backbone.feature_dim}; add a learned projection with "
                            f"{setting('distill.projection', True)}")
        else:
            head = nn.Identity()
        self.student = nn.ModuleDict({"backbone": backbone, "head": head})
        self.patch_level = ("head" in self.teacher and c.patch_loss_weight > 0 and backbone.kind == t_backbone.kind
                            == "vit" and patch_size_of(backbone.net) == patch_size_of(t_backbone.net))
        if "head" in self.teacher and c.patch_loss_weight > 0 and not self.patch_level and backbone.kind == "vit":
            warn(f"no patch-level loss: the student's patches ({patch_size_of(backbone.net)} px) are not the "
                 f"teacher's ({patch_size_of(t_backbone.net) if t_backbone.kind == 'vit' else 'none'}); "
                 f"the student learns the image-level targets only")
        if self.patch_level:
            # An iBOT teacher with its own patch head has other prototypes for patches: the student
            # matches them with a head of its own, as DINOv2's student has when its teacher does.
            t_patch_head = self.teacher["patch_head"]
            if t_patch_head is not self.teacher["head"]:
                self.student["patch_head"] = DINOHead(backbone.feature_dim, t_patch_head.last_layer.weight.shape[0],
                                                      c.hidden_dim, c.bottleneck_dim, c.head_layers)
            # The student's [MASK], starting at zero as DINOv2's (and iBOT's, ibot.py) mask token.
            self.mask_token = nn.Parameter(torch.zeros(backbone.feature_dim))
        self.student_ema = ema_copy(self.student)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        c, n = self.config, len(batch.images)
        features_only = "head" not in self.teacher  # its targets are the global crops' features alone
        crops = (replace(c, local_crops=0) if features_only else c).make_crops(batch.images, self.image_size,
                                                                               batch.generator)
        global_crops = torch.cat(crops[:c.global_crops])  # (V*B, 3, S, S)
        if features_only:
            with torch.no_grad():
                t = self.teacher["backbone"](global_crops)  # (VB, D_t)
            s = self.student["head"](self.student["backbone"](global_crops))  # (VB, D_t): the same views
            loss = byol_loss(s, t)
            return MethodOutput(loss=loss, metrics={"feature_loss": loss.detach()}, embedding=s.detach())
        return self._prototypes(crops, global_crops, n, batch.generator)

    def _prototypes(self, crops, global_crops, n, generator) -> MethodOutput:
        c, student, teacher = self.config, self.student, self.teacher
        metrics = {}
        if self.patch_level:
            masks = patch_masks(len(global_crops), (self.image_size // patch_size_of(student["backbone"].net),) * 2,
                                c, generator)  # (VB, N)
            masked = masks.nonzero(as_tuple=True)  # (image, patch) of the masked patches: one sync
            tokens = encode(student["backbone"].net, global_crops, mask=masks, mask_token=self.mask_token)
            cls = tokens[:, 0]
            with torch.no_grad():
                t_tokens = encode(teacher["backbone"].net, global_crops)  # (VB, 1+N, D_t)
                t_cls = t_tokens[:, 0]
                t_patch = sinkhorn_knopp(teacher["patch_head"](t_tokens[:, 1:][masked]), c.teacher_temperature)
            patch_head = student["patch_head"] if "patch_head" in student else student["head"]
            patch = ibot_patch_loss(patch_head(tokens[:, 1:][masked]), t_patch, masks, c.student_temperature)
            metrics["patch_loss"] = patch.detach()
        else:
            cls = student["backbone"](global_crops)
            with torch.no_grad():
                t_cls = teacher["backbone"](global_crops)
            patch = torch.zeros((), device=global_crops.device)
        if c.local_crops:
            cls = torch.cat([cls, forward_by_size(student["backbone"], crops[c.global_crops:])])
        s = student["head"](cls).view(len(crops), n, -1)  # (S, B, K)
        with torch.no_grad():
            t = teacher["head"](t_cls)  # (VB, K)
            targets = sinkhorn_knopp(t, c.teacher_temperature).view(c.global_crops, n, -1)  # (V, B, K)
        image = cross_view_entropy(s, targets, c.student_temperature)
        metrics["image_loss"] = image.detach()
        return MethodOutput(loss=image + c.patch_loss_weight * patch, metrics=metrics, embedding=s[0].detach())

    def after_step(self, progress: Progress) -> None:
        # The EMA never runs forward: its BatchNorm statistics are averaged like its weights.
        ema_update(self.student_ema, self.student, self.config.ema_momentum, buffers=True)

    def encoder(self) -> Backbone:
        return self.student_ema["backbone"]
