"""Batched image operations with per-sample parameters, on whatever device the batch is on.

Each function takes float images (B, C, H, W) in [0, 1] and per-sample parameters as tensors of
shape (B,), and does for the whole batch in a few tensor operations what torchvision's transforms
do one image at a time. The formulas follow torchvision's functional transforms, so that a view
made here with fixed parameters matches torchvision's (checked in tests/test_views.py).
Random parameters come from `sample_*` functions that draw from an explicit `torch.Generator`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def bernoulli(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


# ---------------------------------------------------------------------------------------------
# Geometry


CROP_ATTEMPTS = 10


def crop_uniforms(attempts: int = CROP_ATTEMPTS) -> int:
    """How many uniform draws one crop box takes (see `crop_boxes_from_uniforms`)."""
    return 2 * attempts + 2


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float], generator: torch.Generator, device,
                      attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """Integer crop boxes (B, 4) drawn as torchvision's RandomResizedCrop does (see below)."""
    uniforms = torch.rand(n, crop_uniforms(attempts), generator=generator, device=device)
    return crop_boxes_from_uniforms(uniforms, height, width, scale, ratio)


def crop_boxes_from_uniforms(uniforms: torch.Tensor, height: int, width: int, scale: tuple[float, float],
                             ratio: tuple[float, float]) -> torch.Tensor:
    """Integer crop boxes (B, 4) as (x0, y0, x1, y1), from uniforms (B, 2 * attempts + 2) in [0, 1),
    as torchvision's RandomResizedCrop draws them: area fraction uniform in `scale`, log aspect
    ratio uniform in `ratio`, the first of the attempts that fits, and a centre crop clamped to
    `ratio` when none fits. Pure arithmetic on its input, so it compiles with the rest of a view."""
    attempts = (uniforms.shape[1] - 2) // 2
    area = height * width
    target = area * (uniforms[:, :attempts] * (scale[1] - scale[0]) + scale[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = (uniforms[:, attempts:2 * attempts] * (log_high - log_low) + log_low).exp()
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)  # index of the first candidate that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # Fallback (no candidate fits): the largest centred crop whose ratio lies within `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    top_draw, left_draw = uniforms[:, -2], uniforms[:, -1]
    top = torch.where(any_fit, (top_draw * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(any_fit, (left_draw * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([left, top, left + w, top + h], dim=1)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box (B, 4: x0, y0, x1, y1 in pixels) and resize to size x size.
    With k x B boxes, box r crops image r mod B: k crops of every image in one call.

    Bilinear sampling at output-pixel centres (the mapping of torchvision's resize); where a box is
    larger than the output, each output pixel averages ceil(box/size)^2 samples, which suppresses
    aliasing as torchvision's antialiased resize does.
    """
    image_of_box = torch.arange(boxes.shape[0], device=images.device) % images.shape[0]
    rois = torch.cat([image_of_box.to(images.dtype)[:, None], boxes.to(images.dtype)], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def flip_horizontal(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


# ---------------------------------------------------------------------------------------------
# Colour


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma."""
    r, g, b = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, grayscale(images), factor)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = images.unbind(dim=1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    gray = delta == 0
    saturation = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(gray, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(gray, torch.zeros_like(hue), (hue / 6.0) % 1.0)
    return torch.stack([hue, saturation, maxc], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(dim=1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # For each sector, which of (v, q, p, t) goes to R, G and B.
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]],
                         device=hsv.device)
    candidates = torch.stack([v, q, p, t], dim=1)  # (B, 4, H, W)
    choice = table[sector].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return candidates.gather(1, choice)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (fraction of a turn, in [-0.5, 0.5]) per image."""
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1)).clamp(0, 1)


def to_grayscale_rgb(images: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    return torch.where(apply.view(-1, 1, 1, 1), grayscale(images).expand_as(images), images)


def solarize(images: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    flipped = torch.where(images >= threshold, 1.0 - images, images)
    return torch.where(apply.view(-1, 1, 1, 1), flipped, images)


# ---------------------------------------------------------------------------------------------
# Blur


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, K) normalised 1-D Gaussian kernels, one per sigma (torchvision's construction)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image and reflect padding."""
    n, c, h, w = images.shape
    kernels = gaussian_kernels(sigma.to(images.dtype), kernel_size).repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    x = images.reshape(1, n * c, h, w)
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = F.conv2d(x, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    x = F.pad(x, (0, 0, pad, pad), mode="reflect")
    x = F.conv2d(x, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return x.view(n, c, h, w)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
