"""A view: one random augmentation of every image in a uint8 batch, made on the batch's device.

`ViewConfig` holds the augmentation recipe (SimCLR's by default: Chen et al. 2020, appendix A);
`make_view` turns a (B, S, S, 3) uint8 batch into a normalised (B, 3, size, size) float batch in
the order crop → flip → colour jitter → grayscale → blur → solarize → normalise. Every image gets
its own random parameters; all randomness comes from the generator passed in, so a view is
reproducible from the generator's state. One deviation from torchvision, for speed: colour jitter
applies brightness, contrast, saturation and hue in this fixed order, not a random order per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    # SimCLR's colour distortion of strength 1: (0.8s, 0.8s, 0.8s, 0.2s).
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1  # kernel side as a fraction of the view's side (SimCLR)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255)


def blur_kernel_size(size: int, fraction: float) -> int:
    k = max(3, int(size * fraction))
    k = k if k % 2 == 1 else k + 1
    return min(k, size - 1 if size % 2 == 0 else size)


def make_view(images_u8: torch.Tensor, cfg: ViewConfig, size: int, generator: torch.Generator,
              mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """One random view of each image: (B, 3, size, size) float, normalised, channels-last."""
    n, height, width, _ = images_u8.shape
    dev = images_u8.device
    x = to_float(images_u8)
    boxes = ops.sample_crop_boxes(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator, dev)
    x = ops.crop_and_resize(x, boxes, size)
    x = ops.flip_horizontal(x, ops.bernoulli(n, cfg.flip_prob, generator, dev))
    x = color_jitter(x, cfg, generator)
    x = ops.to_grayscale_rgb(x, ops.bernoulli(n, cfg.grayscale_prob, generator, dev))
    if cfg.blur_prob > 0:
        sigma = ops.uniform(n, *cfg.blur_sigma, generator, dev)
        blurred = ops.gaussian_blur(x, sigma, blur_kernel_size(size, cfg.blur_kernel_fraction))
        x = torch.where(ops.bernoulli(n, cfg.blur_prob, generator, dev).view(-1, 1, 1, 1), blurred, x)
    if cfg.solarize_prob > 0:
        x = ops.solarize(x, ops.bernoulli(n, cfg.solarize_prob, generator, dev), cfg.solarize_threshold)
    return ops.normalize(x, mean, std).contiguous(memory_format=torch.channels_last)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter with probability `jitter_prob`, factors drawn per image."""
    n, dev = x.shape[0], x.device
    if cfg.jitter_prob <= 0:
        return x
    out = x
    if cfg.brightness > 0:
        out = ops.adjust_brightness(out, ops.uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, generator, dev))
    if cfg.contrast > 0:
        out = ops.adjust_contrast(out, ops.uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, generator, dev))
    if cfg.saturation > 0:
        out = ops.adjust_saturation(out, ops.uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, generator, dev))
    if cfg.hue > 0:
        out = ops.adjust_hue(out, ops.uniform(n, -cfg.hue, cfg.hue, generator, dev))
    return torch.where(ops.bernoulli(n, cfg.jitter_prob, generator, dev).view(-1, 1, 1, 1), out, x)


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
