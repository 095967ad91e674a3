"""Labels and inputs of the classic pretext tasks, made from a batch on its own device.

Rotation (Gidaris et al. 2018), a 3x3 grid of jittered tiles with gaps for relative patch
location (Doersch et al. 2015) and jigsaw puzzles (Noroozi & Favaro 2016), the jigsaw's set of
maximally distant permutations, RGB <-> CIE Lab and quantised ab colours for colorization (Zhang
et al. 2016, 2017; also the 2016 paper's soft encoding and rare-colour weights), and inpainting
masks (Pathak et al. 2016). Images are float (B, C, S, S); every random draw comes from the
`torch.Generator` passed in, as in ops.py.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..console import option
from ..errors import UserError
from ..losses.precision import float32_math
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, ViewConfig


def light_views(**changes) -> ViewConfig:
    """Pretext tasks make their own difficulty: a random crop (about Noroozi & Favaro's 225 of
    256 pixels, area 0.6 to 1) and a flip, without colour distortion, blur or grayscale."""
    base = dict(crop_scale=(0.6, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    return ViewConfig(**{**base, **changes})


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Normalised views back to RGB in [0, 1] (the inverse of `ops.normalize`)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x * std + mean


def randint(n: int, high: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=device)


# ---------------------------------------------------------------------------------------------
# Rotation


def rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each square image rotated counter-clockwise by k[i] * 90 degrees (k: (B,) in 0..3)."""
    turns = torch.stack([torch.rot90(images, r, dims=(-2, -1)) for r in range(4)])  # (4, B, C, S, S)
    return turns[k, torch.arange(len(images), device=images.device)]


def all_rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four rotations of every image in one batch (Gidaris et al. found this better than one
    random rotation per image): (4B, C, S, S) and their labels (4B,) in 0..3."""
    k = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return torch.cat([torch.rot90(images, r, dims=(-2, -1)) for r in range(4)]), k


# ---------------------------------------------------------------------------------------------
# A 3x3 grid of tiles with gaps and jitter

MIN_TILE = 6  # pixels: below this a tile holds little but its average colour
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)  # grid cells (raster order) around the centre cell 4


@dataclass(frozen=True)
class TileGrid:
    """Pixel geometry of a 3x3 grid: cells of side `cell`, each holding a tile of side `tile`
    placed at its centre and moved by up to `jitter` pixels on each axis, so neighbouring tiles
    are at least `gap` pixels apart and their edges cannot simply be matched."""

    size: int
    cell: int
    tile: int
    gap: int
    jitter: int

    @property
    def origin(self) -> int:  # the grid is centred in the image
        return (self.size - 3 * self.cell) // 2


def _grid(size: int, gap: float, jitter: float) -> TileGrid:
    cell = size // 3
    gap_px = max(1, round(gap * cell)) if gap > 0 else 0
    jitter_px = max(1, round(jitter * cell)) if jitter > 0 else 0
    return TileGrid(size, cell, cell - gap_px - 2 * jitter_px, gap_px, jitter_px)


def tile_grid(size: int, gap: float, jitter: float, task: str) -> TileGrid:
    """The grid of an image of `size` pixels; `gap` and `jitter` are fractions of a cell.
    Refuses images too small to hold tiles of MIN_TILE pixels with these gaps, naming the
    smallest size that does."""
    if gap + 2 * jitter > 0.9:
        raise UserError(f"{task}: gap + 2 x jitter is {gap + 2 * jitter:g} of a cell, leaving no room for a tile; "
                        f"keep it at 0.9 or below")
    grid = _grid(size, gap, jitter)
    if grid.tile < MIN_TILE:
        smallest = next(s for s in itertools.count(size + 1) if _grid(s, gap, jitter).tile >= MIN_TILE)
        raise UserError(f"{task} needs images of at least {smallest} pixels for a 3x3 grid of tiles of "
                        f"{MIN_TILE}+ pixels with gap {gap} and jitter {jitter} (fractions of a cell); "
                        f"got {size}: use {option('image_size', smallest)} or more, "
                        f"or lower {task}.gap and {task}.jitter")
    return grid


def sample_tile_corners(n: int, grid: TileGrid, generator: torch.Generator, device) -> torch.Tensor:
    """(B, 9, 2) top-left (row, column) of the 9 tiles of each image, in raster order of cells,
    each with its own jitter."""
    cells = torch.arange(3, device=device)
    rows, cols = torch.meshgrid(cells, cells, indexing="ij")
    nominal = grid.origin + grid.cell * torch.stack([rows, cols], -1).view(9, 2) + (grid.cell - grid.tile) // 2
    jitter = torch.randint(-grid.jitter, grid.jitter + 1, (n, 9, 2), generator=generator, device=device)
    return nominal + jitter


def extract_tiles(images: torch.Tensor, corners: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, K, C, tile, tile) exact pixel crops of `images` (B, C, H, W) at `corners` (B, K, 2)."""
    offsets = torch.arange(tile, device=images.device)
    rows = (corners[..., 0:1] + offsets)[..., :, None]  # (B, K, tile, 1)
    cols = (corners[..., 1:2] + offsets)[..., None, :]  # (B, K, 1, tile)
    batch = torch.arange(len(images), device=images.device).view(-1, 1, 1, 1)
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)


def relative_location_pair(images: torch.Tensor, grid: TileGrid, generator: torch.Generator):
    """Doersch et al.'s task: the centre tile, one of its 8 neighbours and which one (label in
    0..7, the index into NEIGHBOURS). Returns (centre, neighbour) each (B, C, t, t), labels (B,)."""
    n, dev = len(images), images.device
    corners = sample_tile_corners(n, grid, generator, dev)  # (B, 9, 2)
    labels = randint(n, 8, generator, dev)
    cell = torch.tensor(NEIGHBOURS, device=dev)[labels]
    pair = torch.stack([corners[:, 4], corners[torch.arange(n, device=dev), cell]], 1)  # (B, 2, 2)
    tiles = extract_tiles(images, pair, grid.tile)
    return tiles[:, 0], tiles[:, 1], labels


def chromatic_guard(tiles: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Remove the chromatic-aberration cue (Doersch et al. 2015, sec. 3.1) from RGB tiles in [0, 1].

    "drop": keep one random channel per tile; the others become that channel's mean pixel plus
    Gaussian noise of 1/100 of the kept channel's deviation. "project": remove the green-magenta
    component, the colour axis along which lens aberration displaces the image."""
    if kind == "none":
        return tiles
    if kind == "project":
        axis = torch.tensor([-1.0, 2.0, -1.0], device=tiles.device, dtype=tiles.dtype) / math.sqrt(6)
        along = torch.einsum("nchw,c->nhw", tiles, axis)
        return tiles - along[:, None] * axis.view(1, 3, 1, 1)
    n = len(tiles)
    keep = F.one_hot(randint(n, 3, generator, tiles.device), 3).bool().view(n, 3, 1, 1)
    kept = (tiles * keep).sum(1, keepdim=True)  # (N, 1, h, w)
    noise = torch.randn(tiles.shape, generator=generator, device=tiles.device, dtype=tiles.dtype)
    mean = torch.tensor(IMAGENET_MEAN, device=tiles.device, dtype=tiles.dtype).view(1, 3, 1, 1)
    filler = mean + noise * kept.std(dim=(2, 3), keepdim=True) / 100
    return torch.where(keep, tiles, filler)


# ---------------------------------------------------------------------------------------------
# Jigsaw


@lru_cache(maxsize=1)
def _all_permutations() -> tuple[np.ndarray, np.ndarray]:
    """The 9! permutations (9!, 9), and for each (position, value) which of them put that value
    there (81, 9!) as 0/1, so that matches with one permutation are a sum of 9 rows."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(9)))
    perms = np.fromiter(flat, dtype=np.int64, count=9 * math.factorial(9)).reshape(-1, 9)
    table = (perms.T[:, None, :] == np.arange(9)[None, :, None]).reshape(81, -1)
    return perms, np.ascontiguousarray(table, dtype=np.uint8)


def jigsaw_permutations(count: int, seed: int = 0) -> torch.Tensor:
    """(count, 9) distinct permutations of the 9 tiles, far apart in Hamming distance: a variant
    of Noroozi & Favaro's greedy algorithm, which adds the permutation of largest *average*
    distance to those chosen; here the one whose *smallest* distance is largest (ties broken at
    random), so that no two puzzles of the set differ in few tile positions (measured at P = 100,
    seed 0: minimum distance 6, average 8.07; the average rule, same start: minimum 3, average 8.08).
    Deterministic given `seed`.
    (numpy: single-threaded, it is several times faster here than torch on a busy CPU.)"""
    perms, table = _all_permutations()
    rows = 9 * np.arange(9)

    def distances(pick: int) -> np.ndarray:  # (9!,) Hamming distance of each permutation to one
        return 9 - table[rows + perms[pick]].sum(0, dtype=np.uint8)

    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(perms)))]
    nearest = distances(chosen[0])  # each permutation's distance to the chosen set
    for _ in range(count - 1):
        chosen.append(int(rng.choice(np.flatnonzero(nearest == nearest.max()))))
        nearest = np.minimum(nearest, distances(chosen[-1]))
    return torch.from_numpy(perms[chosen])


def min_hamming_distance(permutations: torch.Tensor) -> int:
    """The smallest number of positions in which two permutations of the set differ."""
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(-1)
    distance.fill_diagonal_(permutations.shape[1] + 1)
    return int(distance.min())


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Position i of image b receives tile permutations[b, i]: (B, 9, ...) -> (B, 9, ...)."""
    batch = torch.arange(len(tiles), device=tiles.device)[:, None]
    return tiles[batch, permutations]


def standardize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each tile and channel to zero mean and unit deviation (Noroozi & Favaro), so that tiles
    cannot be matched by their brightness or contrast."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


# ---------------------------------------------------------------------------------------------
# CIE Lab (D65 white, sRGB primaries and companding)

# sRGB (IEC 61966-2-1) linear RGB -> XYZ; the D65 white is the image of RGB white (1, 1, 1).
SRGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
_DELTA = 6 / 29  # the CIE's f(t) is a cube root above DELTA**3 and linear below


# Inverted once, in float64: an inverse taken in the forward pass was a step no ONNX export takes.
XYZ_TO_SRGB = tuple(map(tuple, np.linalg.inv(np.array(SRGB_TO_XYZ, dtype=np.float64)).tolist()))


def _matrices(device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = torch.tensor(SRGB_TO_XYZ, dtype=torch.float64)
    white = m.sum(1)
    return m.to(device, dtype), torch.tensor(XYZ_TO_SRGB, dtype=dtype, device=device), white.to(device, dtype)


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(3, 3) matrix times every pixel of (B, 3, H, W), elementwise so that autocast keeps the
    input's precision (a bf16 matmul would shift colours by several Lab units)."""
    return (matrix.view(1, 3, 3, 1, 1) * x[:, None]).sum(2)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> CIE Lab (L in [0, 100], a and b roughly in [-110, 110])."""
    m, _, white = _matrices(rgb.device, rgb.dtype)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    xyz = _mix(m, linear) / white.view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab`; colours outside the sRGB gamut come out beyond [0, 1]."""
    _, m_inv, white = _matrices(lab.device, lab.dtype)
    l, a, b = lab.unbind(1)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29)) * white.view(1, 3, 1, 1)
    linear = _mix(m_inv, xyz)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


PRIOR_SMOOTHING = 5.0  # ab units: the Gaussian that smooths the empirical colour distribution (Zhang et al. 2016)


class ABBins(nn.Module):
    """The ab plane cut into squares of side `grid`, keeping those sRGB colours reach (Zhang et
    al. 2016: grid 10 gives their 313 bins over a wider gamut; sRGB's gives 261). A colour's bin
    is the in-gamut bin nearest to its square."""

    def __init__(self, grid: float = 10.0):
        super().__init__()
        self.grid = grid
        levels = torch.linspace(0, 1, 65)
        rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, -1, 1)
        cells = torch.round(rgb_to_lab(rgb)[0, 1:, :, 0].T / grid).long()  # (65**3, 2)
        reach = math.ceil(120 / grid)  # |a|, |b| < 120 for every sRGB colour
        in_gamut = torch.unique(cells, dim=0)  # (Q, 2) integer cell coordinates
        every = torch.cartesian_prod(*[torch.arange(-reach, reach + 1)] * 2)  # (n*n, 2)
        nearest = torch.cdist(every.float(), in_gamut.float()).argmin(1)
        self.reach = reach
        self.register_buffer("centres", in_gamut.float() * grid, persistent=False)  # (Q, 2)
        self.register_buffer("lookup", nearest.view(2 * reach + 1, 2 * reach + 1), persistent=False)
        gaps = torch.cdist(self.centres.double(), self.centres.double())
        self.register_buffer("smoothing", torch.exp(-gaps ** 2 / (2 * PRIOR_SMOOTHING ** 2)).float(), persistent=False)

    def __len__(self) -> int:
        return len(self.centres)

    def quantize(self, ab: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) ab -> (B, H, W) bin index."""
        cell = (torch.round(ab / self.grid).long() + self.reach).clamp(0, 2 * self.reach)
        return self.lookup[cell[:, 0], cell[:, 1]]

    def decode(self, logits: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
        """(B, Q, H, W) logits -> (B, 2, H, W) ab: Zhang et al.'s annealed mean (T = 0.38)."""
        probs = torch.softmax(logits.float() / temperature, dim=1)
        return torch.einsum("bqhw,qc->bchw", probs, self.centres)

    def encode(self, ab: torch.Tensor, neighbours: int = 1, sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Zhang et al. 2016's soft encoding of (B, 2, H, W) ab over its `neighbours` nearest bin
        centres, nearest first: their indices (B, k, H, W) and weights (B, k, H, W), a Gaussian of
        the distance, exp(-d^2 / (2 sigma^2)), normalised to sum to 1 (the paper: 5 neighbours,
        sigma 5; their released code: 10). Up to 1 neighbour: the one bin of `quantize`, weight 1."""
        if neighbours <= 1:
            bins = self.quantize(ab)[:, None]
            return bins, torch.ones(bins.shape, device=ab.device)
        points = ab.float().movedim(1, -1).reshape(-1, 2)  # (N, 2)
        # (N, Q): about as large as the ab logits themselves (0.8 GB at batch 256, 224 px, stride 4).
        distance = torch.cdist(points, self.centres, compute_mode="donot_use_mm_for_euclid_dist")
        nearest, bins = distance.topk(neighbours, dim=1, largest=False)  # sorted, nearest first
        weights = torch.softmax(-nearest ** 2 / (2 * sigma ** 2), dim=1)  # the normalised Gaussian
        shape = (ab.shape[0], *ab.shape[2:], neighbours)
        return bins.view(shape).movedim(-1, 1), weights.view(shape).movedim(-1, 1)

    @float32_math
    def rebalancing_weights(self, counts: torch.Tensor, mix: float) -> torch.Tensor:
        """Zhang et al. 2016's class rebalancing (eq. 4): (Q,) weights w proportional to
        ((1 - mix) p + mix / Q)^-1, with p the empirical distribution of the bins (`counts`)
        smoothed by a Gaussian of sigma PRIOR_SMOOTHING ab units, scaled so that the expected
        weight under p is 1 (the paper: mix 0.5). No counts yet: all weights 1."""
        counts = counts.float()
        p = self.smoothing @ counts
        p = p / p.sum().clamp_min(1e-12)
        w = 1 / ((1 - mix) * p + mix / len(p))
        w = w / (p * w).sum().clamp_min(1e-12)
        return torch.where(counts.sum() > 0, w, torch.ones_like(w))  # no host sync to ask which


def quantize_lightness(l: torch.Tensor, bins: int) -> torch.Tensor:
    """L in [0, 100] -> index of one of `bins` equal bins (split-brain: 50)."""
    return (l * (bins / 100)).long().clamp(0, bins - 1)


def decode_lightness(logits: torch.Tensor) -> torch.Tensor:
    """(B, bins, H, W) logits over `quantize_lightness`'s bins -> (B, 1, H, W) expected L."""
    bins = logits.shape[1]
    centres = (torch.arange(bins, device=logits.device) + 0.5) * (100 / bins)
    return torch.einsum("bkhw,k->bhw", logits.float().softmax(1), centres)[:, None]


# ---------------------------------------------------------------------------------------------
# Inpainting masks


def inpainting_masks(n: int, size: int, kind: str, fraction: float, blocks: int,
                     generator: torch.Generator, device) -> torch.Tensor:
    """(B, 1, S, S) bool, True where pixels are hidden (Pathak et al. 2016, sec. 3.3).

    "center": a centred square of `fraction` of the area. "blocks": `blocks` squares of
    `fraction / blocks` of the area each at random places (they may overlap, so they cover at
    most `fraction`). "regions": arbitrary shapes: the `fraction` of pixels where a smooth
    random field is highest."""
    if kind == "center":
        side = max(1, round(size * math.sqrt(fraction)))
        start = (size - side) // 2
        mask = torch.zeros(n, 1, size, size, dtype=torch.bool, device=device)
        mask[..., start:start + side, start:start + side] = True
        return mask
    if kind == "blocks":
        side = max(1, round(size * math.sqrt(fraction / blocks)))
        corners = torch.randint(0, size - side + 1, (n, blocks, 2, 1), generator=generator, device=device)
        pixels = torch.arange(size, device=device)
        inside = (pixels >= corners) & (pixels < corners + side)  # (B, blocks, 2, S): rows, cols
        return (inside[:, :, 0, :, None] & inside[:, :, 1, None, :]).any(1, keepdim=True)
    field = torch.rand(n, 1, 4, 4, generator=generator, device=device)
    field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False).flatten(1)
    hidden = max(1, round(fraction * size * size))
    threshold = field.kthvalue(size * size - hidden + 1, dim=1, keepdim=True).values
    return (field >= threshold).view(n, 1, size, size)
