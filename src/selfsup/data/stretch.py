"""Samples deeper than 8 bits onto 0..255: stretched between percentiles of their own values,
with the pixels outside a scene (GDAL's nodata) left out and black."""
from __future__ import annotations

import math

import numpy as np

# Deep images are stretched between these percentiles of their values, not from minimum to maximum:
# one hot pixel (4095 in a dim 12-bit field) would leave the rest near black. 0.05 % at either end
# saturates a few stray pixels (a 96x96 field has 4.6 per end) while sparse bright structures, such
# as fluorescent cells over 0.1 % of a field, keep the lower half of their range unsaturated.
STRETCH_PERCENTILES = (0.05, 99.95)


def stretch_integers(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """`stretch` for unsigned 16-bit (or 8-bit) samples (H, W, C), with the percentiles taken over
    the pixels `where` (H, W) is true (all when None), from a histogram: no float copies of a
    picture that may have a gigapixel, and the same figures as np.percentile's."""
    counts = np.bincount((values if where is None else values[where]).ravel(), minlength=1 << 16)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(values.shape, np.uint8)
    below = np.cumsum(counts)  # below[v]: samples <= v; the sample of rank k is the first v with below[v] > k

    def percentile(q: float) -> float:  # linear between the two ranks around q, as np.percentile
        rank = q / 100 * (total - 1)
        lower, upper = (int(np.searchsorted(below, r, side="right")) for r in (math.floor(rank), math.ceil(rank)))
        return lower + (upper - lower) * (rank - math.floor(rank))

    low, high = (percentile(q) for q in STRETCH_PERCENTILES)
    if high <= low:
        present = np.flatnonzero(counts)
        low, high = float(present[0]), float(present[-1])
    levels = np.arange(1 << 16, dtype=np.float64)
    table = np.round((np.clip(levels, low, high) - low) * (255 / (high - low))) if high > low else np.zeros_like(levels)
    return table.astype(np.uint8)[values]


def stretch(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """`values` (H, W[, C]) as uint8, stretched jointly between STRETCH_PERCENTILES of the finite
    ones of the pixels `where` (H, W) is true (all when None); from their minimum to their maximum
    where those percentiles coincide (a sparse signal on an even field); NaN as the bottom, +-inf
    at the ends. PIL's conversion would clip every value above 255 to white, and a fixed divisor
    would leave 12-bit data nearly black."""
    considered = values if where is None else values[where]
    finite = considered[np.isfinite(considered)]
    low, high = np.percentile(finite, STRETCH_PERCENTILES) if finite.size else (0.0, 0.0)
    if high <= low and finite.size:
        low, high = finite.min(), finite.max()
    values = np.clip(np.nan_to_num(values, nan=low), low, high)
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.round(scaled).astype(np.uint8)


def to_uint8(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Samples of any type as uint8: 8-bit as they are, bool as 0 and 255, deeper ones stretched
    between percentiles of the pixels `where` is true (unsigned 16-bit from a histogram, 32-bit
    and floats in float64)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "u" and values.itemsize == 2:  # either byte order: an "MM" TIFF's too
        return stretch_integers(values, where)
    return stretch(values.astype(np.float64), where)


def inside_scene(values: np.ndarray, nodata: str | None) -> np.ndarray | None:
    """(H, W) of `values` (H, W[, C]): False where every band of a pixel holds the value that the
    GDAL_NODATA text `nodata` names, compared in the samples' own type as GDAL does; None where no
    pixel does, or no sample of that type can hold it (NaN needs no mask: it is not finite)."""
    if nodata is None:
        return None
    try:
        value = float(str(nodata).strip(" \0"))
    except ValueError:
        return None
    if values.dtype.kind in "ui":
        if not math.isfinite(value) or value != int(value) or not (
                np.iinfo(values.dtype).min <= value <= np.iinfo(values.dtype).max):
            return None
        value = int(value)
    elif values.dtype.kind == "f":
        value = values.dtype.type(value)
    else:
        return None
    outside = values == value
    outside = outside.all(axis=2) if outside.ndim == 3 else outside
    return ~outside if outside.any() else None


def black_outside(pixels: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """uint8 `pixels` (H, W[, C]) with those outside the scene black."""
    if inside is None:
        return pixels
    return np.where(inside[..., None] if pixels.ndim == 3 else inside, pixels, np.uint8(0))
