"""Which patches to hide: masks over a ViT's patch grid, one per image, drawn from a generator.

A mask is a (B, N) bool tensor over the N patches in token order (row-major), True where the
patch is hidden. `random_patch_mask` hides the same number of patches in every image, at random
positions (MAE, He et al. 2022, sec. 3); `block_mask` hides rectangles of patches (BEiT, Bao et al.
2022, alg. 1; iBOT). All randomness comes from the generator, so masks are reproducible from its
state.
"""
from __future__ import annotations

import math

import torch


def num_visible(num_patches: int, ratio: float) -> int:
    """Patches left visible when `ratio` of them are masked, rounded down as MAE does
    (len_keep = int(L * (1 - mask_ratio)): 49 of 196 at 0.75). The rounding is of the float
    product, as MAE's: 100 patches at 0.9 leave int(9.999...) = 9 visible, not 10."""
    return int(num_patches * (1 - ratio))


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool: exactly N - num_visible(N, ratio) patches hidden in every image, uniformly at
    random and independently per image (the ranks of uniform noise, MAE's per-sample shuffle)."""
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N) a random permutation of 0..N-1 per row
    return ranks >= num_visible(num_patches, ratio)


def visible_indices(mask: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """(B, K) the positions of the visible patches of each image, in increasing order; every row
    of `mask` must leave the same number K visible. Given that `count`, no value is read back
    from the device (a stable sort puts the visible positions first, in order)."""
    if count is None:
        return (~mask).nonzero()[:, 1].reshape(mask.shape[0], -1)
    return torch.sort(mask.to(torch.int8), dim=1, stable=True).indices[:, :count]


def block_mask(batch: int, grid: tuple[int, int], num_masked: int | torch.Tensor, generator: torch.Generator,
               min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10,
               rounds: int = 40) -> torch.Tensor:
    """(B, N) bool: rectangles of patches hidden until `num_masked` (one count, or one per image)
    are (BEiT's block-wise masking): each block has an area uniform in [min_block, patches still to
    hide] and a log-aspect ratio uniform in `aspect`, and is kept when it hides new patches without
    overshooting. As in BEiT an image can stop short of its count: after `attempts` rejected blocks
    in a row, or after `rounds` proposals.

    All images draw their blocks together, one proposal each per round, in tensor operations on the
    generator's device: no per-image Python and no host synchronisation in a training step."""
    device = generator.device
    height, width = grid
    target = torch.as_tensor(num_masked, device=device).long().expand(batch)
    masks = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    rejected = torch.zeros(batch, dtype=torch.long, device=device)  # rejections in a row
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(rounds):
        left = target - masks.sum(dim=(1, 2))
        active = (left > 0) & (rejected < attempts)
        if device.type == "cpu" and not active.any():  # free to ask on the CPU; a sync on a GPU
            break
        u = torch.rand(batch, 4, generator=generator, device=device)
        low = left.clamp(max=min_block).float()
        area = low + u[:, 0] * (left.float() - low)
        ratio = torch.exp(log_low + u[:, 1] * (log_high - log_low))
        h, w = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        fits = (h > 0) & (h < height) & (w > 0) & (w < width)
        top, left_col = (u[:, 2] * (height - h + 1)).floor(), (u[:, 3] * (width - w + 1)).floor()
        top, left_col, h, w = (t.view(-1, 1, 1) for t in (top, left_col, h, w))
        block = (rows >= top) & (rows < top + h) & (cols >= left_col) & (cols < left_col + w)
        new = (block & ~masks).sum(dim=(1, 2))
        keep = active & fits & (new > 0) & (new <= left)
        masks |= block & keep.view(-1, 1, 1)
        rejected = torch.where(keep, torch.zeros_like(rejected), rejected + active.long())
    return masks.flatten(1)
