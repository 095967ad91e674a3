"""TIFFs: the bytes that tell one, the tags and notes decoding uses, and tifffile's reading.

Pillow decodes most TIFFs (decode.py). tifffile, an optional package (`pip install 'selfsup[tiff]'`),
reads the layouts Pillow cannot (GDAL's multi-band 16-bit tiles, a microscope's channels kept as
pages) and the bands `--bands` chooses: first_plane_bands gives the first plane of a TIFF's first
image. Without it, unknown_tiff_layout tells such a TIFF from a damaged file, so that the warning
says what to install. The notes are decode_noting's for TIFFs, as dicom.py's are for DICOM files.
"""
from __future__ import annotations

import io
import itertools
import math
import warnings
from typing import NamedTuple

import numpy as np
from PIL import TiffImagePlugin

from ..errors import UserError
from ..lazy import installed

# What decoding a TIFF could not do in full, by file, as decode_noting's notes are
FIRST_PAGE, TIFF_LAYOUT, FIRST_BANDS = "first_page", "tiff_layout", "first_bands"
FEW_BANDS = "few_bands"  # a TIFF that holds fewer bands than `bands` asks for: skipped
TIFF_COLOUR = "tiff_colour"  # a TIFF in CMYK, Lab, ...: no bands to read as red, green and blue
Bands = tuple[int, ...] | None  # 1-based bands of a TIFF read as red, green, blue (or one as gray); None: 1, 2, 3
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order
RGB_BANDS = 3
MIN_IS_WHITE, MIN_IS_BLACK, RGB, PALETTE, YCBCR = 0, 1, 2, 3, 6  # TIFF's photometric interpretations
PHOTOMETRIC_TAG = 262
JPEG_COMPRESSION = 7
# GDAL's tag: as text, the sample value of pixels outside the scene (a tile's corners beyond the
# scene's edge, a masked cloud). Counted in the stretch, -9999 in a DEM or 65535 in a 16-bit tile
# would leave the scene itself one flat shade.
GDAL_NODATA = 42113


def tiff_readers() -> list[str]:
    """The optional packages installed that read TIFFs Pillow cannot (`pip install 'selfsup[tiff]'`):
    tifffile reads any layout (GDAL's multi-band tiles, microscopes' channel stacks), imagecodecs
    lets it decompress LZW, JPEG, zstd, ..."""
    return [name for name in ("tifffile", "imagecodecs") if installed(name)]


def require_tiff_reader(bands: Bands) -> None:
    """Bands are chosen by tifffile: without it, the run would skip every TIFF."""
    if bands and "tifffile" not in tiff_readers():
        raise UserError(f"choosing TIFF bands ({','.join(map(str, bands))}) needs tifffile: "
                        f"pip install 'selfsup[tiff]'")


class FirstPlane(NamedTuple):
    chosen: np.ndarray | None  # (height, width, 1 or 3); None where the TIFF holds fewer bands than asked
    total: int  # the bands it holds
    photometric: int  # a palette's colours and JPEG's YCbCr come as RGB
    channel_pages: int  # how many of its bands are pages
    more_planes: bool
    nodata: str | None  # its GDAL_NODATA text


def first_plane_bands(data: bytes, largest_image: int, bands: Bands = None) -> FirstPlane:
    """The samples of the first plane of a TIFF's first image (the first of each z-slice, time
    point, ...): `bands` (1-based), or its first band or first three. Bands are samples of a pixel
    (a GDAL tile's) or pages (a microscope's channels). ValueError over `largest_image` pixels."""
    import tifffile  # ImportError: the caller's to say

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series, page = tif.series[0], tif.series[0].keyframe
        sides = dict(zip(page.axes, page.shape))
        if sides.get("Y", 1) * sides.get("X", 1) > largest_image:  # before reading a plane of GBs
            raise ValueError("over a gigapixel")
        held, total, channel_pages, more_planes = _first_plane(series, page, max(bands) if bands else RGB_BANDS)
        photometric, colormap, compression = int(page.photometric), page.colormap, int(page.compression)
        nodata = page.tags.valueof(GDAL_NODATA)
    if photometric == PALETTE and colormap is not None:  # its colour table, 16 bits per entry
        held, total, photometric = np.moveaxis(colormap[:, held[..., 0]] >> 8, 0, -1).astype(np.uint8), 3, RGB
        nodata = None  # an index, not a colour
    elif photometric == YCBCR and compression == JPEG_COMPRESSION:  # tifffile decodes JPEG's YCbCr to RGB
        photometric = RGB
    if bands:
        chosen = held[..., [b - 1 for b in bands]] if max(bands) <= held.shape[2] else None
    else:
        chosen = held[..., :RGB_BANDS] if held.shape[2] >= RGB_BANDS else held[..., :1]
    return FirstPlane(chosen, total, photometric, channel_pages, more_planes, nodata)


def _first_plane(series, page, needed: int) -> tuple[np.ndarray, int, int, bool]:
    """(height, width, bands) of a tifffile series' first plane, with up to `needed` of its channel
    pages; how many bands it holds; how many of them are pages; whether it has more planes."""
    axes, shape = series.get_axes(False), series.get_shape(False)
    outer = len(shape)  # the series' axes before the page's own say which page holds which plane
    while outer > 0 and math.prod(shape[outer - 1:]) <= page.size:
        outer -= 1
    pages_by_axis = list(zip(axes[:outer], shape[:outer]))
    channels = math.prod(n for axis, n in pages_by_axis if axis == "C")
    more_planes = math.prod(n for axis, n in pages_by_axis if axis != "C") > 1 or \
        any(axis not in "YXS" and n > 1 for axis, n in zip(page.axes, page.shape))
    reading = [range(min(n, needed)) if axis == "C" else range(1) for axis, n in pages_by_axis]
    keys = [int(np.ravel_multi_index(i, shape[:outer])) for i in itertools.product(*reading)] if outer else [0]
    planes = series.asarray(key=keys).reshape(len(keys), *page.shape)  # (pages, *the page's axes)
    for axis in reversed(range(len(page.axes))):  # a depth inside a page: its first slice
        if page.axes[axis] not in "YXS":
            planes = planes.take(0, axis=axis + 1)
    kept = [a for a in page.axes if a in "YXS"]
    order = [1 + kept.index(a) for a in "YX"] + ([1 + kept.index("S")] if "S" in kept else [])
    planes = planes.transpose(0, *order)  # (pages, Y, X[, S])
    samples = planes.shape[3] if planes.ndim == 4 else 1
    held = np.moveaxis(planes.reshape(*planes.shape[:3], samples), 0, 2).reshape(*planes.shape[1:3], -1)
    return held, channels * samples, channels, more_planes


def unknown_tiff_layout(data: bytes) -> bool:
    """Whether `data` is a TIFF whose layout Pillow cannot decode (e.g. 16-bit with 4 bands, as GDAL
    writes them): a valid image that tifffile or GDAL reads, not a damaged file."""
    if data[:4] not in (b"II*\0", b"MM\0*"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's complaints: it is skipped all the same
            TiffImagePlugin.TiffImageFile(io.BytesIO(data))
    except SyntaxError as e:
        return "unknown pixel mode" in str(e)
    except Exception:  # noqa: BLE001 - damaged, or failing later: not a layout question
        return False
    return False
