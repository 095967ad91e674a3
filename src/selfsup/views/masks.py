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
    (len_keep = int(L * (1 - mask_ratio)): 49 of 196 at 0.75)."""
    return int(num_patches * (1 - ratio))


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool: exactly N - num_visible(N, ratio) patches hidden in every image, uniformly at
    random and independently per image (the ranks of uniform noise, MAE's per-sample shuffle)."""
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N) a random permutation of 0..N-1 per row
    return ranks >= num_visible(num_patches, ratio)


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """(B, K) the positions of the visible patches of each image, in increasing order; every row
    of `mask` must hide the same number of patches."""
    batch = mask.shape[0]
    return (~mask).nonzero()[:, 1].reshape(batch, -1)


def block_mask(batch: int, grid: tuple[int, int], num_masked: int | list[int], generator: torch.Generator,
               min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10) -> torch.Tensor:
    """(B, N) bool: rectangles of patches hidden until `num_masked` are (BEiT's block-wise
    masking): each block has an area uniform in [min_block, patches still to hide] and a log-aspect
    ratio uniform in `aspect`, and is kept when it hides new patches without overshooting. As in
    BEiT the count can stop short of `num_masked` when no block fits in `attempts` tries.

    The loop runs on the CPU with its own generator, seeded by one draw from `generator`, so a
    CUDA generator costs one synchronisation per batch, not one per block."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
    cpu = torch.Generator().manual_seed(seed)
    height, width = grid
    masks = torch.zeros(batch, height, width, dtype=torch.bool)
    targets = [num_masked] * batch if isinstance(num_masked, int) else list(num_masked)  # or one per image
    for image, target in zip(masks, targets):
        while (left := target - int(image.sum())) > 0 and _add_block(image, left, min_block, aspect, attempts, cpu):
            pass
    return masks.flatten(1).to(generator.device)


def _add_block(mask: torch.Tensor, budget: int, min_block: int, aspect: tuple[float, float], attempts: int,
               generator: torch.Generator) -> bool:
    """Hide one random rectangle in `mask` (h, w) adding between 1 and `budget` patches; False
    when none of `attempts` draws does."""
    height, width = mask.shape
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        low, high = min(min_block, budget), budget
        area, log_ratio = torch.rand(2, generator=generator).tolist()
        area = low + area * (high - low)
        ratio = math.exp(log_low + log_ratio * (log_high - log_low))
        h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if not (0 < h < height and 0 < w < width):
            continue
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        new = h * w - int(mask[top:top + h, left:left + w].sum())
        if 0 < new <= budget:
            mask[top:top + h, left:left + w] = True
            return True
    return False
