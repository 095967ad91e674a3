"""A view: one random augmentation of every image in a uint8 batch, made on the batch's device.

`ViewConfig` holds the augmentation recipe (SimCLR's by default: Chen et al. 2020, appendix A);
`make_view` turns a (B, S, S, 3) uint8 batch into a normalised (B, 3, size, size) float batch in
the order crop → flip → colour jitter → grayscale → blur → solarize → normalise. Every image gets
its own random parameters; all randomness comes from the generator passed in, so a view is
reproducible from the generator's state. One deviation from torchvision by default, for speed:
colour jitter applies brightness, contrast, saturation and hue in this fixed order;
`random_jitter_order=True` draws the order per image as torchvision's ColorJitter does, at four
times the jitter's arithmetic (every adjustment is computed in every slot).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ranged
from ..phases import phase
from . import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewConfig:
    crop_scale: tuple[float, float] = ranged((0.08, 1.0), 1e-4, 1.0, ordered=True)
    crop_ratio: tuple[float, float] = ranged((3 / 4, 4 / 3), 1e-2, 100.0, ordered=True)
    flip_prob: float = ranged(0.5, 0.0, 1.0)
    jitter_prob: float = ranged(0.8, 0.0, 1.0)
    # SimCLR's colour distortion of strength 1: (0.8s, 0.8s, 0.8s, 0.2s).
    brightness: float = ranged(0.8, 0.0, None)
    contrast: float = ranged(0.8, 0.0, None)
    saturation: float = ranged(0.8, 0.0, None)
    hue: float = ranged(0.2, 0.0, 0.5)  # a fraction of the colour wheel, as torchvision's
    random_jitter_order: bool = False  # torchvision's order per image, not the fixed order above
    grayscale_prob: float = ranged(0.2, 0.0, 1.0)
    blur_prob: float = ranged(0.5, 0.0, 1.0)
    blur_sigma: tuple[float, float] = ranged((0.1, 2.0), 1e-3, None, ordered=True)
    blur_kernel_fraction: float = ranged(0.1, 1e-3, 1.0)  # kernel side as a fraction of the view's side (SimCLR)
    solarize_prob: float = ranged(0.0, 0.0, 1.0)
    solarize_threshold: float = ranged(0.5, 0.0, 1.0)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255)


def blur_kernel_size(size: int, fraction: float) -> int:
    k = max(3, int(size * fraction))
    k = k if k % 2 == 1 else k + 1
    return min(k, size - 1 if size % 2 == 0 else size)


# Columns of the one uniform draw (B, VIEW_UNIFORMS) that makes every random choice of a view.
_C = ops.crop_uniforms()
_CROP, _FLIP, _JITTER, _JITTER_APPLY = slice(0, _C), _C, slice(_C + 1, _C + 5), _C + 5
_GRAY, _BLUR_SIGMA, _BLUR_APPLY, _SOLARIZE = _C + 6, _C + 7, _C + 8, _C + 9
VIEW_UNIFORMS = _C + 10
_JITTER_ORDER = slice(VIEW_UNIFORMS, VIEW_UNIFORMS + 4)  # drawn only with random_jitter_order


def view_uniforms(cfg: ViewConfig | None = None) -> int:
    """How many uniforms a view of one image takes under `cfg`."""
    return VIEW_UNIFORMS + (4 if cfg is not None and cfg.random_jitter_order else 0)


def sample_view_uniforms(n: int, generator: torch.Generator, device, cfg: ViewConfig | None = None) -> torch.Tensor:
    """All the randomness of one view of n images: one kernel, whatever the recipe."""
    return torch.rand(n, view_uniforms(cfg), generator=generator, device=device)


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return u * (high - low) + low


def apply_view(images_u8: torch.Tensor, uniforms: torch.Tensor, cfg: ViewConfig, size: int,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The view that `uniforms` (B, VIEW_UNIFORMS) picks: pure tensor arithmetic, which
    torch.compile fuses into a few kernels. With k x B rows of uniforms, k views of every image
    (row r views image r mod B)."""
    _, height, width, _ = images_u8.shape
    boxes = ops.crop_boxes_from_uniforms(uniforms[:, _CROP], height, width, cfg.crop_scale, cfg.crop_ratio)
    x = ops.crop_and_resize(to_float(images_u8), boxes, size)
    x = ops.flip_horizontal(x, uniforms[:, _FLIP] < cfg.flip_prob)
    if cfg.jitter_prob > 0:
        order = uniforms[:, _JITTER_ORDER] if cfg.random_jitter_order else None
        x = color_jitter(x, cfg, uniforms[:, _JITTER], uniforms[:, _JITTER_APPLY] < cfg.jitter_prob, order)
    x = ops.to_grayscale_rgb(x, uniforms[:, _GRAY] < cfg.grayscale_prob)
    if cfg.blur_prob > 0:
        sigma = _between(uniforms[:, _BLUR_SIGMA], *cfg.blur_sigma)
        blurred = ops.gaussian_blur(x, sigma, blur_kernel_size(size, cfg.blur_kernel_fraction))
        x = torch.where((uniforms[:, _BLUR_APPLY] < cfg.blur_prob).view(-1, 1, 1, 1), blurred, x)
    if cfg.solarize_prob > 0:
        x = ops.solarize(x, uniforms[:, _SOLARIZE] < cfg.solarize_prob, cfg.solarize_threshold)
    return ops.normalize(x, mean, std).contiguous(memory_format=torch.channels_last)


_apply_view = apply_view  # replaced by a compiled version by `compile_views`


def compile_views(enabled: bool = True) -> None:
    """Make every later `make_view` in this process run its arithmetic through torch.compile
    (`train.compile`): on a GPU the dozens of small element-wise kernels of a view fuse into a few."""
    global _apply_view
    _apply_view = torch.compile(apply_view, dynamic=False) if enabled else apply_view


def make_view(images_u8: torch.Tensor, cfg: ViewConfig, size: int, generator: torch.Generator,
              mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """One random view of each image: (B, 3, size, size) float, normalised, channels-last."""
    with phase("views"):
        uniforms = sample_view_uniforms(images_u8.shape[0], generator, images_u8.device, cfg)
        return _apply_view(images_u8, uniforms, cfg, size, mean, std)


def make_views(images_u8: torch.Tensor, cfg: ViewConfig, size: int, copies: int, generator: torch.Generator,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[torch.Tensor]:
    """`copies` random views of each image with one recipe, made as one batch of copies x B: the
    views of `copies` calls of `make_view` in a row, from the same draws, in an eighth of the
    operator calls for 8 copies. The methods still make their views one call each: on the CPU the
    batch is slower (its larger tensors fall out of cache; BENCHMARKS.md, "Views as one batch");
    whether the fewer launches win on a GPU is measured by `bench/view_cost.py --copies`."""
    with phase("views"):
        uniforms = sample_view_uniforms(copies * images_u8.shape[0], generator, images_u8.device, cfg)
        return list(_apply_view(images_u8, uniforms, cfg, size, mean, std).chunk(copies))


def color_jitter(x: torch.Tensor, cfg: ViewConfig, uniforms: torch.Tensor, apply: torch.Tensor,
                 order: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's ColorJitter on the images where `apply`, its factors from `uniforms` (B, 4):
    brightness, contrast and saturation in [max(0, 1 - s), 1 + s], hue shift in [-h, h]. The
    adjustments run in that order, or with `order` (B, 4 uniforms) in a random order per image."""
    adjustments = []
    if cfg.brightness > 0:
        factor = _between(uniforms[:, 0], max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        adjustments.append(lambda im, f=factor: ops.adjust_brightness(im, f))
    if cfg.contrast > 0:
        factor = _between(uniforms[:, 1], max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        adjustments.append(lambda im, f=factor: ops.adjust_contrast(im, f))
    if cfg.saturation > 0:
        factor = _between(uniforms[:, 2], max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        adjustments.append(lambda im, f=factor: ops.adjust_saturation(im, f))
    if cfg.hue > 0:
        shift = _between(uniforms[:, 3], -cfg.hue, cfg.hue)
        adjustments.append(lambda im, f=shift: ops.adjust_hue(im, f))
    out = x
    if order is None:
        for adjust in adjustments:
            out = adjust(out)
    else:
        # Slot k applies, in each image, the adjustment its permutation puts k-th: every
        # adjustment is computed in every slot and the image's own one kept.
        permutation = order[:, :len(adjustments)].argsort(dim=1)  # (B, A): uniform over the A! orders
        for slot in range(len(adjustments)):
            chosen = permutation[:, slot].view(-1, 1, 1, 1)
            out = sum(torch.where(chosen == a, adjust(out), 0.0) for a, adjust in enumerate(adjustments))
    return torch.where(apply.view(-1, 1, 1, 1), out, x)


def eval_view(images_u8: torch.Tensor, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The deterministic view used to extract features: centre crop to `size`, normalised."""
    x = to_float(images_u8)
    side = x.shape[-1]
    if side != size:
        offset = (side - size) // 2
        if offset >= 0:
            x = x[..., offset:offset + size, offset:offset + size]
        else:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
    return ops.normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
