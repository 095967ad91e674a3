"""What the trainer hands a method, and what a method hands back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..config import RunConfig, ranged
from ..console import option
from ..errors import UserError
from ..views import ViewConfig, dino_global_view_1, dino_global_view_2, dino_local_view, multi_crop


@dataclass(frozen=True)
class Progress:
    """Where training stands; schedules are pure functions of it."""

    step: int  # optimizer steps taken before this one
    total_steps: int
    epochs: int  # epochs in the whole run

    @property
    def fraction(self) -> float:
        """0 at the first step, approaching 1 at the last."""
        return self.step / max(1, self.total_steps)

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional (e.g. 2.5 halfway through the third)."""
        return self.fraction * self.epochs


@dataclass
class MultiCropConfig:
    """DINO's multi-crop (Caron et al. 2021): the config fields that dino, ibot and distill share.
    Their configs extend this one, so the fields stay flat in each method's section
    (`dino.local_crops`, `ibot.local_view`, ...) and the CLI's --local-crops reaches all three."""

    global_crops: int = ranged(2, 2, None)  # each teacher view needs another view to teach
    local_crops: int = ranged(8, 0, None)
    local_size: int = ranged(96, 8, None)
    global_view_1: ViewConfig = field(default_factory=dino_global_view_1)
    global_view_2: ViewConfig = field(default_factory=dino_global_view_2)
    local_view: ViewConfig = field(default_factory=dino_local_view)

    def make_crops(self, images_u8: torch.Tensor, global_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """The global crops at `global_size`, then the local crops (`views.multi_crop`)."""
        return multi_crop(images_u8, [self.global_view_1, self.global_view_2], self.global_crops, global_size,
                          self.local_view, self.local_crops, self.local_size, generator)


def check_multi_crop(cfg: RunConfig) -> None:
    """Refuse, before any data is read, local crops larger than the global ones, or that a ViT
    cannot cut into whole patches (for `check_config` of the methods with a `MultiCropConfig`)."""
    from ..backbones.vit import VITS, check_image_size

    c, size = cfg.method_config, cfg.data.image_size
    if not c.local_crops:
        return
    if c.local_size > size:
        raise UserError(f"{option('local_size', c.local_size)} is larger than the global crops "
                        f"({option('image_size', size)}); "
                        f"local crops must be at most {size} pixels")
    if cfg.backbone.name in VITS:
        check_image_size(c.local_size, c.local_size, cfg.backbone.patch_size, cfg.backbone.name,
                         option="local_size", other_patch_sizes=False)


def two_views(network: Callable[[torch.Tensor], torch.Tensor], x1: torch.Tensor, x2: torch.Tensor,
              one_pass: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`network` on two views of a batch. one_pass: as one batch of 2B, so BatchNorm normalises the
    two views together (SimCLR's global BN); otherwise a pass per view, BatchNorm statistics per
    view (BYOL's and MoCo v3's pseudo-code and official code)."""
    if one_pass:
        return network(torch.cat([x1, x2])).chunk(2)
    return network(x1), network(x2)


@dataclass
class Batch:
    images: torch.Tensor  # (B, S, S, 3) uint8 on the model's device; (B, k, S, S, 3) with `samples`
    generator: torch.Generator  # all randomness of views and masks comes from here
    # With `samples`: this batch's slice of `Samples.side` (the method's own dataclass), as tensors
    # on the device.
    side: Any = None


@dataclass
class Samples:
    """What a method with a module-level `samples(config, cache, seed) -> Samples` trains on
    instead of single images: sample i is the k cache rows `rows[i]` (frames of one clip, a pair
    and its motion, an image and its interaction), with per-sample side data `side`, a dataclass
    of the method's own whose fields are numpy arrays of first dimension n. Made once before
    training, as a pure function of (config, cache, seed), so a resumed run sees the same ones."""

    rows: np.ndarray  # (n, k) int64
    side: Any = None
    # What the method derives from all its samples and keeps for later use on other data (egomotion:
    # the motion classes' centres), set on its buffers of the same names, so it is in checkpoints.
    buffers: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MethodOutput:
    loss: torch.Tensor  # scalar, to minimise
    # Scalars to log (kept on the device; the trainer syncs only when it prints).
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # (rows, d) the vectors the loss compares (e.g. projections), for the collapse monitor: one row
    # per image, or per tile or frame where the method embeds those (jigsaw, temporal order).
    embedding: torch.Tensor | None = None


def lightly_cifar_recipe(loss_scale: float = 1.0) -> dict:
    """Optimizer and schedule of lightly's CIFAR-10 benchmark (ResNet-18, kNN at k=200), which
    the `cifar` presets of several methods follow: SGD at 0.06 per 128 images with momentum 0.9,
    weight decay 5e-4 on every parameter (biases and norms too, as lightly), a cosine without
    warm-up, 200 epochs of batch 512.

    `loss_scale`: how many times lightly's loss the method's loss is, for the same batch (BYOL's
    (2 - 2 cos) summed over both directions is 4 times lightly's 0.5 (-cos - cos)). SGD with the
    rate divided by it and the weight decay multiplied by it takes exactly lightly's steps on the
    scaled loss: w -= (lr / s) (s g + s wd w) = lr (g + wd w), and so does its momentum buffer."""
    return {
        "optim": {"name": "sgd", "lr": 0.12 / loss_scale, "lr_scaling": "linear", "lr_reference_batch": 256,
                  "weight_decay": 5e-4 * loss_scale, "momentum": 0.9, "warmup_epochs": 0.0,
                  "exclude_bias_and_norm": False},
        "train": {"epochs": 200, "batch_size": 512},
    }
