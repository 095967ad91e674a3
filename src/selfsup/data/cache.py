"""Decode images once into a memory-mapped uint8 cache at the working resolution.

Every image is decoded, its shorter side resized to `size` and centre-cropped to a square, and
the pixels appended to one raw (N, size, size, 3) uint8 file. Training and evaluation then read
pixels, never files: a batch is a slice of a memory map (so a dataset larger than RAM works), and
views are made from it on the model's device. The cache is keyed by the source's fingerprint
(names, sizes and modification times of its files), so it is rebuilt when the source changes.
Files that cannot be decoded are skipped, counted and reported in one warning; so are those
decoded in part (a multi-page TIFF's first page, a multi-frame DICOM's first frame).
"""
from __future__ import annotations

import collections
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, TiffImagePlugin

from ..console import named_option, option, progress_bar, warn
from ..errors import UserError
from ..lazy import installed
from ..outputs import NO_ROOM, cannot_write, current_umask, os_reason
from .dicom import (DICOM_CODEC, DICOM_DISPLAY, DICOM_READER, FIRST_FRAME, SEGMENTED_PALETTE, codec_hint, decode_dicom,
                    dicom_readers, is_dicom, is_dicom_file_start, syntax_name)
from .sources import DICOM_SUFFIXES, SPLIT_NAMES, ImageSource, is_tar_path, suffix_of, without_suffix
from .stretch import black_outside, inside_scene, stretch_integers, to_uint8

# 2: EXIF orientation applied; deeper than 8 bits stretched; gray rows and median side kept.
# 3: 16-bit colour decoded in full; deep images stretched between percentiles; transparency composited.
# 4: GDAL's nodata pixels left out of the stretch, and black; MINISWHITE turned over at any depth;
#    DICOM files.
CACHE_FORMAT = 4
HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # one channel of 16/32-bit ints or floats
GRAYSCALE_MODES = {"1", "L", "LA", *HIGH_DEPTH_MODES}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transposition that shows the stored pixels upright (as ImageOps.exif_transpose)
UPRIGHT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}
# Transparent pixels are composited over white: a cut-out product then looks like the same product
# photographed on a studio's white, as shops and browsers show it, whatever colour (black, noise, a
# hidden palette entry) the file keeps under its transparent pixels. White is gray: gray stays gray.
BACKGROUND = (255, 255, 255, 255)
# Pillow opens 16-bit RGB(A) as 8-bit, keeping each sample's top byte (12-bit data: values 0-15). Read
# in the other byte order, the same samples give their low bytes: rawmode ending -> its swap.
LOW_BYTES = {";16B": ";16L", ";16L": ";16B", ";16N": ";16B" if sys.byteorder == "little" else ";16L"}
STRAIGHT_SAMPLES = {"RGB", "RGBA", "RGBX"}  # not premultiplied RGBa, nor LA;16B (no low-byte reader)
# What decode_image could not do in full, said once per dataset: the names of the files concerned
FIRST_PAGE, TOP_BYTE, TIFF_LAYOUT, FIRST_BANDS = "first_page", "top_byte", "tiff_layout", "first_bands"
FEW_BANDS = "few_bands"  # a TIFF that holds fewer bands than `bands` asks for: skipped
NOT_TIFF = "not_tiff"  # an image `bands` does not apply to
NOT_DICOM = "not_dicom"  # named as a DICOM file (.dcm), neither one by its content nor an image: skipped
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
TIFF_COLOUR = "tiff_colour"  # a TIFF in CMYK, Lab, ...: no bands to read as red, green and blue


@dataclass
class ImageCache:
    """Decoded images of one source: pixels on disk, memory-mapped, and what is known of them."""

    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped read-only
    names: list[str]  # file of each row, relative to the source root
    labels: np.ndarray | None  # (N,) int64 class index, when the source is laid out by class
    classes: list[str]
    skipped: list[str]  # files that could not be decoded
    grayscale_rows: np.ndarray  # (G,) int64 rows whose image was gray (one channel, or three equal ones)
    source: str  # a description of where the images came from
    median_side: int | None  # the images' median shorter side before resizing (None: not known)
    # SHA-256 of images.u8, the decoded pixels: the data by content, not by file names and times
    # (None: a cache built before it was kept, or frames of videos).
    pixels_sha256: str | None = field(default=None, kw_only=True)  # keyword-only: subclasses add fields

    def __len__(self) -> int:
        return len(self.names)

    @property
    def grayscale(self) -> int:
        return len(self.grayscale_rows)

    @property
    def size(self) -> int:
        return self.images.shape[1]


def cache_remedy() -> str:
    return f"set {option('cache_dir')} or $SELFSUP_CACHE to a writable folder"


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where decoded images (and features, label subsets) are kept: `cache_dir` when given (a
    --cache-dir), else $SELFSUP_CACHE, else ~/.cache/selfsup."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")


# A user's own scans and tiles, not uploads from strangers: Pillow's guard against decompression
# bombs (an error above 179 megapixels) would skip a 14,000-pixel satellite tile. Images up to a
# gigapixel decode (3 GB of RGB at most, per decoding process); larger ones are skipped.
LARGEST_IMAGE_PIXELS = 2**30


def decode_image(data: bytes, size: int, bands: Bands = None) -> tuple[np.ndarray, bool, int] | None:
    """(size, size, 3) uint8 RGB pixels, whether the image was grayscale, and its shorter side
    before resizing (exact below `size`: JPEG's reduced decoding never goes under it), or None when
    the bytes are not a decodable image (corrupt, truncated, over a gigapixel, or not an image).
    `bands` chooses a TIFF's bands (see decode_tiff_bands); other images are read as they are."""
    return decode_noting(data, size, bands)[0]


def decode_noting(data: bytes, size: int, bands: Bands = None
                  ) -> tuple[tuple[np.ndarray, bool, int] | None, list[str]]:
    """decode_image's answer, and what it could not do in full: FIRST_PAGE (a multi-page TIFF),
    TOP_BYTE (16-bit samples read from their top bytes), TIFF_LAYOUT (a TIFF Pillow cannot open),
    FIRST_BANDS (a TIFF's first three of more bands), FEW_BANDS (fewer than `bands` asks),
    NOT_TIFF (`bands` given for an image that is not a TIFF); and decode_dicom's for DICOM files
    (FIRST_FRAME, DICOM_READER, DICOM_CODEC + a transfer syntax, SEGMENTED_PALETTE)."""
    if bands and data[:4] in TIFF_MAGIC:
        return decode_tiff_bands(data, size, bands=bands)
    if bands:
        decoded, notes = decode_noting(data, size)
        return decoded, notes + [NOT_TIFF]
    unread = []  # a bare data set's DICOM_READER, said where Pillow cannot read it either
    if data[:4] not in TIFF_MAGIC and is_dicom(data):  # a DICOM file whose preamble is a TIFF's is read as a TIFF
        display, notes = decode_dicom(data, LARGEST_IMAGE_PIXELS)
        if display is not None:
            pixels, gray = display
            return (fit_square(Image.fromarray(pixels), size), gray, min(pixels.shape[:2])), notes
        if notes and (notes != [DICOM_READER] or is_dicom_file_start(data)):  # a DICOM file a package would read
            return None, notes
        unread = notes  # else perhaps not DICOM after all (a TGA can start as a bare data set does): Pillow's to try
    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = LARGEST_IMAGE_PIXELS // 2  # Pillow refuses twice its value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF, palette transparency, ...
            with Image.open(io.BytesIO(data)) as opened:
                opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
                gray, side = opened.mode in GRAYSCALE_MODES, min(opened.size)
                notes = [FIRST_PAGE] if opened.format == "TIFF" and getattr(opened, "n_frames", 1) > 1 else []
                if notes:  # a microscope's stack may hold a page per channel: tifffile reads them as colour
                    by_channel = decode_tiff_bands(data, size, channel_pages_only=True)
                    if by_channel[0] is not None:
                        return by_channel
                tags = opened.tag_v2 if opened.format == "TIFF" else {}
                nodata, min_is_white = tags.get(GDAL_NODATA), tags.get(PHOTOMETRIC_TAG) == MIN_IS_WHITE
                colour = sixteen_bit_colour(opened, data, nodata)  # from the tiles, before anything loads the pixels
                notes += [TOP_BYTE] if colour and not colour[1] else []
                img = to_rgb8(colour[0]) if colour else to_rgb8(opened, nodata, min_is_white)
                img.load()  # `opened` itself when already RGB, and its file is closed below
                # Read after loading: Pillow's TIFF loader turns the pixels upright itself and then
                # drops the tag, which read before would turn them a second time.
                orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
        if orientation in UPRIGHT:  # a phone's photo, upright as viewers show it
            img = img.transpose(UPRIGHT[orientation])
        pixels = fit_square(img, size)
        # Gray pictures are often saved as RGB (most JPEGs): equal channels say so whatever the mode.
        return (pixels, gray or bool((pixels[..., :1] == pixels[..., 1:]).all()), side), notes
    except Exception:  # noqa: BLE001 - any failure to decode means "not an image we can use"
        return decode_tiff_bands(data, size) if data[:4] in TIFF_MAGIC else (None, unread)
    finally:
        Image.MAX_IMAGE_PIXELS = guard


def tiff_readers() -> list[str]:
    """The optional packages installed that read TIFFs Pillow cannot (`pip install 'selfsup[tiff]'`):
    tifffile reads any layout (GDAL's multi-band tiles, microscopes' channel stacks), imagecodecs
    lets it decompress LZW, JPEG, zstd, ..."""
    return [name for name in ("tifffile", "imagecodecs") if installed(name)]


def readers_for(names: list[str]) -> list[str]:
    """The optional packages installed that decide what these files decode to: the TIFF readers
    where some are TIFFs, the DICOM readers where some are or may be DICOM files (a name without
    a suffix). Installing pydicom does not make a pool of JPEGs embed again."""
    suffixes = {suffix_of(name).lower() for name in names}
    readers = tiff_readers() if suffixes & {".tif", ".tiff"} else []
    return readers + (dicom_readers() if may_hold_dicom(names) else [])


def may_hold_dicom(names: list[str]) -> bool:
    """Whether some of these files are or may be DICOM files: a .dcm or .dicom, or a name without a suffix."""
    return any(suffix_of(name).lower() in DICOM_SUFFIXES or without_suffix(name) for name in names)


def dicom_display_key(names: list[str]) -> str:
    """What a cache's or embeddings' key adds for these files: the DICOM display's version where they
    may hold DICOM files (only such pools are decoded again when it changes), else nothing."""
    return f"|dicom display {DICOM_DISPLAY}" if may_hold_dicom(names) else ""


def decode_tiff_bands(data: bytes, size: int, channel_pages_only: bool = False, bands: Bands = None
                      ) -> tuple[tuple[np.ndarray, bool, int] | None, list[str]]:
    """decode_noting's answer for a TIFF read by tifffile: one that Pillow cannot decode, or (with
    `channel_pages_only`) one that holds its channels as pages, or any TIFF when `bands` chooses
    which of its bands are red, green and blue (or gray). Without `bands`, the first three bands
    of its first plane are read as red, green and blue (FIRST_BANDS noted when it has more, or
    two), one band as gray; FIRST_PAGE when it has more planes. Deep samples are stretched jointly,
    as Pillow's are. TIFF_LAYOUT when a package to read it is missing."""
    try:
        chosen, total, photometric, channel_pages, more_planes, nodata = first_plane_bands(data, bands)
    except ImportError:
        return None, [TIFF_LAYOUT] if not channel_pages_only and unknown_tiff_layout(data) else []
    except Exception as e:  # noqa: BLE001 - damaged, or a compression only imagecodecs reads
        return None, [TIFF_LAYOUT] if not channel_pages_only and "imagecodecs" in str(e) else []
    if channel_pages_only and channel_pages < 2:
        return None, []
    if chosen is None:
        return None, [FEW_BANDS]
    height, width = chosen.shape[:2]
    if photometric not in (MIN_IS_WHITE, MIN_IS_BLACK, RGB):
        return None, [TIFF_COLOUR] if bands else []  # without bands: Pillow's to read, had it been able
    inside = inside_scene(chosen, nodata)
    pixels = to_uint8(chosen, inside)
    if photometric == MIN_IS_WHITE:  # 0 is white
        pixels = 255 - pixels
    pixels = black_outside(pixels, inside)
    img = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels))
    out = fit_square(img.convert("RGB"), size)
    gray = pixels.shape[2] == 1 or bool((out[..., :1] == out[..., 1:]).all())
    notes = [FIRST_BANDS] if not bands and (total > RGB_BANDS or total == 2) else []
    return (out, gray, min(height, width)), notes + ([FIRST_PAGE] if more_planes else [])


class FirstPlane(NamedTuple):
    chosen: np.ndarray | None  # (height, width, 1 or 3); None where the TIFF holds fewer bands than asked
    total: int  # the bands it holds
    photometric: int  # a palette's colours and JPEG's YCbCr come as RGB
    channel_pages: int  # how many of its bands are pages
    more_planes: bool
    nodata: str | None  # its GDAL_NODATA text


def first_plane_bands(data: bytes, bands: Bands = None) -> FirstPlane:
    """The samples of the first plane of a TIFF's first image (the first of each z-slice, time
    point, ...): `bands` (1-based), or its first band or first three. Bands are samples of a pixel
    (a GDAL tile's) or pages (a microscope's channels)."""
    import tifffile  # ImportError: the caller's to say

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series, page = tif.series[0], tif.series[0].keyframe
        sides = dict(zip(page.axes, page.shape))
        if sides.get("Y", 1) * sides.get("X", 1) > LARGEST_IMAGE_PIXELS:  # before reading a plane of GBs
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


def _rawmode(tile) -> str:
    return tile[3] if isinstance(tile[3], str) else tile[3][0]  # PNG's args are the rawmode alone


def _low_byte_tile(tile) -> tuple:
    rawmode = _rawmode(tile)
    swapped = rawmode[:-4] + LOW_BYTES[rawmode[-4:]]
    args = swapped if isinstance(tile[3], str) else (swapped, *tile[3][1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)  # Pillow < 11: tuples


def _low_bytes(data: bytes) -> np.ndarray | None:
    """The low byte of each sample of a 16-bit RGB(A) image: its samples read in the other byte
    order; None where that fails (a decoder that takes no other order)."""
    try:
        with Image.open(io.BytesIO(data)) as again:
            again.tile = [_low_byte_tile(tile) for tile in again.tile]
            again.load()  # raises, where np.asarray would make an array of one object
            return np.asarray(again)
    except Exception:  # noqa: BLE001 - the top bytes are still there
        return None


def sixteen_bit_colour(img: Image.Image, data: bytes, nodata: str | None = None) -> tuple[Image.Image, bool] | None:
    """A 16-bit RGB(A) image (PNG, TIFF) as 8-bit, its colour stretched from all 16 bits of each
    sample, and True; or stretched from the top bytes Pillow keeps, and False, where Pillow cannot
    read the low ones (16-bit gray with alpha, premultiplied alpha). None for other images.
    The channels are stretched jointly, not each to its own range, which would tint the image
    (the little blue of a field tile stretched to full blue): a gray stays gray."""
    rawmodes = {_rawmode(tile) for tile in img.tile}
    if img.mode not in ("RGB", "RGBA") or not rawmodes or any(r[-4:] not in LOW_BYTES for r in rawmodes):
        return None
    img.load()
    top = np.asarray(img)  # (H, W, 3 or 4) uint8
    low = _low_bytes(data) if all(r[:-4] in STRAIGHT_SAMPLES for r in rawmodes) else None
    values = (top.astype(np.uint16) << 8 | low) if low is not None else top
    pixels = top.copy()  # alpha keeps its top byte: a 16-bit alpha spans its whole range by definition
    # Only what can be seen sets the range: not the colour the file keeps under transparent pixels.
    visible = top[..., 3] > 0 if top.shape[-1] == 4 else None
    inside = inside_scene(values[..., :3], nodata) if low is not None else None  # a top byte is no sample value
    where = inside if visible is None else visible if inside is None else visible & inside
    pixels[..., :3] = black_outside(stretch_integers(values[..., :3], where), inside)
    return Image.fromarray(pixels, img.mode), low is not None


def to_rgb8(img: Image.Image, nodata: str | None = None, min_is_white: bool = False) -> Image.Image:
    """`img` as 8-bit RGB: a 16-bit, 32-bit or float image (scans, microscopy) stretched, and an
    image with transparency composited over BACKGROUND (so is a 4th band stored as alpha, such as
    a satellite tile's near infrared in an RGBA file). Pixels that hold the GDAL_NODATA value
    `nodata` are black, and left out of the stretch. `min_is_white`: a TIFF whose 0 is white,
    which Pillow turns over at 8 bits and leaves as stored deeper."""
    if img.mode in HIGH_DEPTH_MODES:
        values = np.asarray(img)
        inside = inside_scene(values, nodata)
        pixels = to_uint8(values, inside)
        img = Image.fromarray(black_outside(255 - pixels if min_is_white else pixels, inside))  # mode L
    elif nodata is not None and img.mode in ("L", "RGB"):
        shown = np.asarray(img)
        inside = inside_scene(255 - shown if min_is_white and img.mode == "L" else shown, nodata)
        img = img if inside is None else Image.fromarray(black_outside(shown, inside))
    if img.mode in ALPHA_MODES or "transparency" in img.info:  # a palette's or a colour key's too
        img = Image.alpha_composite(Image.new("RGBA", img.size, BACKGROUND), img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy of what is RGB: a gigapixel is 3 GB


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: the shorter side resized to `size`, then a centre crop."""
    img = to_rgb8(img)
    width, height = img.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        img = img.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _decode_chunk(args: tuple[list[tuple[str, bytes]], int, Bands]) -> list[tuple[str, tuple | None, list[str]]]:
    chunk, size, bands = args
    return [(name, *decode_named(name, data, size, bands)) for name, data in chunk]


def decode_named(name: str, data: bytes, size: int, bands: Bands = None
                 ) -> tuple[tuple[np.ndarray, bool, int] | None, list[str]]:
    """decode_noting's answer for the file `name`, and NOT_DICOM where it is named as a DICOM file
    but is neither one by its content nor an image: a file put among the scans by mistake (a report,
    a download's error page), which the warning then tells from a scan selfsup cannot read."""
    decoded, notes = decode_noting(data, size, bands)
    if decoded is None and not notes and suffix_of(name).lower() in DICOM_SUFFIXES and not is_dicom(data):
        return None, [NOT_DICOM]
    return decoded, notes


def _chunks(items, size: int, bands: Bands, per_chunk: int = 64):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == per_chunk:
            yield chunk, size, bands
            chunk = []
    if chunk:
        yield chunk, size, bands


def decode_stream(items, size: int, workers: int = 0, parallel: bool = True, notes: dict | None = None,
                  bands: Bands = None):
    """(name, decode_image(bytes, size, bands)) for each (name, bytes) of `items`, in order;
    decoded by a pool of `workers` processes (0: one per core) when `parallel`. `notes`, when
    given, gets the names of the files decode_noting had a note on, by note."""
    require_tiff_reader(bands)
    for name, decoded, noted in _decoded_chunks(items, size, workers, parallel, bands):
        for note in noted if notes is not None else ():
            notes.setdefault(note, []).append(name)
        yield name, decoded


def _decoded_chunks(items, size: int, workers: int, parallel: bool, bands: Bands):
    workers = workers or os.cpu_count() or 1
    if not parallel or workers <= 1:
        for chunk in map(_decode_chunk, _chunks(items, size, bands)):
            yield from chunk
        return
    # A Ctrl-C (or a stop signal a handler turns into an exception) that lands while the workers
    # are forked is raised inside a fork handler, where Python drops it: note it then, and deliver
    # it again once the workers exist (which then stop with it).
    arrived, previous, parent = [], {}, os.getpid()

    def note(number, _frame):
        if os.getpid() != parent:  # a worker forked with this handler, before its own
            signal.signal(number, _in_a_worker(number))
            if _in_a_worker(number) == signal.SIG_DFL:
                os.kill(os.getpid(), number)  # ended, as it would have been by default
            return
        arrived.append(number)

    if threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            if callable(signal.getsignal(number)):
                previous[number] = signal.signal(number, note)
    try:
        pool = DecodeWorkers(workers, multiprocessing.get_context("fork" if os.name == "posix" else "spawn"))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    try:
        for number in arrived[:1]:
            signal.raise_signal(number)  # to the handler put back: KeyboardInterrupt, RunStopped, ...
        for chunk in pool.imap(_chunks(items, size, bands)):
            yield from chunk
    finally:
        pool.close()


# Ctrl-C, and a scheduler's stop (SLURM's scancel, a preemption), reach the whole process group.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


def _in_a_worker(number: int):
    """A decoding worker's handling of a stop signal: none of Ctrl-C's or a run's stop request (the
    parent's to act on, which then kills the workers); SIGTERM ends it, as by default."""
    return signal.SIG_DFL if number == getattr(signal, "SIGTERM", None) else signal.SIG_IGN


def _decode_worker(tasks, results, parent_ends) -> None:
    """A decoding process: chunks of (name, bytes) in, decoded chunks out, until its task pipe
    closes (the parent is done, or gone). `parent_ends`: the parent's ends of its own pipes and of
    those of the workers forked before it, which a fork copies: closed, so that each pipe closes
    when the parent's end does."""
    for pipe in parent_ends:
        pipe.close()
    for number in STOP_SIGNALS:
        signal.signal(number, _in_a_worker(number))
    while True:
        try:
            chunk = tasks.recv()
            results.send(_decode_chunk(chunk))
        except (EOFError, OSError):  # the parent closed its ends, or ended
            return


class DecodeWorkers:
    """Processes that decode chunks of images for the main thread, which alone feeds and reads
    them, one chunk in flight each: no helper threads and no locks shared with them, so stopping
    is killing them. (multiprocessing.Pool's terminate could wait for ever: its task thread blocked
    writing a chunk of image bytes that no stopped worker would read, or a queue's lock was left
    taken by a worker a signal ended.)"""

    def __init__(self, count: int, context):
        self.links = []  # (process, its task pipe's writing end, its result pipe's reading end)
        try:
            for _ in range(count):
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                parent_ends = [task_writer, result_reader, *(pipe for _, *pipes in self.links for pipe in pipes)]
                process = context.Process(target=_decode_worker, args=(task_reader, result_writer, parent_ends),
                                          daemon=True)
                process.start()
                task_reader.close()
                result_writer.close()
                self.links.append((process, task_writer, result_reader))
        except BaseException:
            self.close()
            raise

    def imap(self, chunks):
        """The decoded chunks, in the order of `chunks`. A worker gets its next chunk as soon as its
        last one is read back, before that one is handed on."""
        chunks = iter(chunks)
        in_flight = collections.deque(worker for worker in range(len(self.links)) if self._send(worker, chunks))
        while in_flight:
            worker = in_flight.popleft()
            process, _, results = self.links[worker]
            try:
                decoded = results.recv()
            except EOFError:
                raise RuntimeError(f"a decoding worker ended unexpectedly (exit code {process.exitcode})") from None
            if self._send(worker, chunks):
                in_flight.append(worker)
            yield decoded

    def _send(self, worker: int, chunks) -> bool:
        chunk = next(chunks, None)
        if chunk is not None:
            self.links[worker][1].send(chunk)
        return chunk is not None

    def close(self) -> None:
        for process, _, _ in self.links:
            if process.is_alive():
                process.kill()
        for process, tasks, results in self.links:
            process.join()
            tasks.close()
            results.close()


def typical_side(source: ImageSource, sample: int = 32) -> int | None:
    """The median shorter side of a few of the source's images (spread over a folder's; a tar's
    first, read in one pass that stops there), from their headers alone, in milliseconds; None
    when none opens so (DICOM, TIFFs that Pillow cannot read)."""
    tar = is_tar_path(source.path)
    reader = source.read() if tar else None
    # A folder's files are opened by path: Pillow reads their headers, not a tile's or a scan's GBs.
    files = (io.BytesIO(data) for _, data in reader) if tar else \
        (source.file_path(name) for name in source.names[::max(1, len(source.names) // sample)])
    sides = []
    try:
        for file in itertools.islice(files, sample):
            try:
                with Image.open(file) as img:
                    sides.append(min(img.size))
            except (OSError, ValueError, Image.DecompressionBombError):  # not an image Pillow reads, or gone
                continue
    finally:
        if reader is not None:
            reader.close()
    return int(np.median(sides)) if sides else None


def _cache_key(source: ImageSource, size: int, bands: Bands = None) -> str:
    # A folder's split is named as its folder read on its own (their fingerprints agree): one cache.
    in_folder = source.split is not None and source.path.is_dir()
    named = source.path / source.split if in_folder else source.path
    # "cifar-train", not "train": a split's folder says little without the dataset's.
    name = named.name.split(".")[0]  # a tar's suffix, or a dotted folder's tail
    name = f"{named.parent.name.split('.')[0]}-{name}" if name in SPLIT_NAMES and named.parent.name else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"
    chosen = f"|bands={','.join(map(str, bands))}" if bands else ""  # no bands: the keys caches had before
    key = f"{CACHE_FORMAT}|{source.fingerprint}|{size}{chosen}{dicom_display_key(source.names)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{stem}{'-' + source.split if source.split and not in_folder else ''}-{size}px-{digest}"


STAGING = ".building-"  # the start of a cache's name while it is built (then: host, builder)


def _staging_prefix() -> str:
    # The machine and the process that builds: a folder left by a killed build (kill -9, a time
    # limit) is recognised and removed by the next build on the same machine.
    host = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname())[:40] or "host"
    return f"{STAGING}{host}-"


def _process_table() -> str:
    """Which table of processes this process's PID is looked up in, as 8 hex digits: this boot
    of this machine and this PID namespace (containers that share a host name each have their
    own). A PID is known dead only when looked up in the table it was taken from."""
    parts = []
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:  # not Linux: no namespaces, the host name alone says which machine
            parts.append("")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _builder(pid: int | None = None) -> str:
    """The process that builds (this one by default) as its staging folders name it: PID.TABLE."""
    return f"{os.getpid() if pid is None else pid}.{_process_table()}"


def _abandoned(build: Path, quiet_seconds: float = 600) -> bool:
    """Whether the build folder `build` is this machine's and its process has ended: known at once
    when its PID was taken from this table of processes (see _process_table), so that a build
    killed a moment ago does not hold its disk through the next; otherwise (another PID namespace
    under the same host name, or a folder named before tables were) only once nothing has written
    to it for `quiet_seconds`. Other machines' builds are theirs to judge: a PID says nothing here."""
    prefix = _staging_prefix()
    if not build.name.startswith(prefix):
        return False
    pid, _, its_table = build.name[len(prefix):].split("-", 1)[0].partition(".")
    if not pid.isdigit() or _alive(int(pid)):
        return False
    return its_table == _process_table() or time.time() - _last_write(build) > quiet_seconds


def _last_write(folder: Path) -> float:
    try:
        return max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
    except OSError:
        return time.time()  # changing under us: someone is at work there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def make_staging(target: Path, kind: str = "image") -> Path:
    """A new temporary folder beside `target`, to build a cache in and rename into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_builds(target.parent)  # a build killed here frees its disk for this one
        return Path(tempfile.mkdtemp(prefix=f"{_staging_prefix()}{_builder()}-", dir=target.parent))
    except OSError as e:
        raise _cannot_write_cache(target, e, kind) from None


def _cannot_write_cache(target: Path, e: OSError, kind: str) -> UserError:
    return cannot_write(f"the {kind} cache in {str(target.parent)!r}", e, cache_remedy())


@contextmanager
def building(target: Path, kind: str = "image"):
    """A staging folder (make_staging) to build the cache `target` in, removed if the block fails;
    a disk that fills up meanwhile is a UserError naming the cache folder, not a bare errno."""
    staging = make_staging(target, kind)
    try:
        yield staging
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in NO_ROOM:  # a write; reading the source fails otherwise
            raise _cannot_write_cache(target, e, kind) from None
        raise


def publish(staging: Path, target: Path, meta: dict) -> None:
    """Write the index beside the pixels and move the finished cache into place: on disk first
    (a power cut after the rename must not leave a short cache), readable by whoever may read the
    cache folder (mkdtemp makes it private)."""
    with open(staging / "index.json", "w") as f:
        f.write(json.dumps(meta))
    for written in staging.iterdir():
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        staging.rename(target)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(staging, ignore_errors=True)


def _build(source: ImageSource, size: int, target: Path, workers: int, show_progress: bool, bands: Bands) -> None:
    """Decode `source` into `target` (written to a temporary folder, then renamed into place)."""
    names, skipped, grayscale_rows, sides, notes = [], [], [], [], {}
    digest = hashlib.sha256()  # hashed as written: no second pass over a cache of many GB
    with building(target) as staging:
        with (progress_bar(len(source.names), f"decoding {source.describe()}", enabled=show_progress) as bar,
              open(staging / "images.u8", "wb") as pixels):
            parallel = len(source.names) >= 2048
            for name, decoded in decode_stream(source.read(), size, workers, parallel, notes, bands):
                if decoded is None:
                    skipped.append(name)
                else:
                    row = decoded[0].tobytes()
                    pixels.write(row)
                    digest.update(row)
                    if decoded[1]:
                        grayscale_rows.append(len(names))
                    sides.append(decoded[2])
                    names.append(name)
                bar.update(1)
        classes = source.classes
        index = {c: i for i, c in enumerate(classes)}
        meta = {"format": CACHE_FORMAT, "source": source.describe(), "fingerprint": source.fingerprint,
                "size": size, "names": names, "classes": classes, "skipped": skipped,
                "labels": [index[n.split("/", 1)[0]] for n in names] if classes else None,
                "grayscale_rows": grayscale_rows, "median_side": int(np.median(sides)) if sides else None,
                "notes": notes, "pixels_sha256": digest.hexdigest(), "tiff_readers": tiff_readers(),
                "dicom_readers": dicom_readers(), "bands": list(bands) if bands else None}
        publish(staging, target, meta)


def readable_now(meta: dict) -> str:
    """The packages installed since a cache was built that would read more than it did, and what
    ('' where none would): TIFFs it skipped, or of which it read a stack's first page alone (in
    full: a microscope's channels); DICOM files it skipped without pydicom, or without a decoder
    of their compression."""
    notes = {note: names for note, names in meta.get("notes", {}).items() if names}
    reasons = []
    tiff = sorted(set(tiff_readers()) - set(meta.get("tiff_readers", [])))
    if tiff and (TIFF_LAYOUT in notes or FIRST_PAGE in notes):
        reasons.append(f"{' and '.join(tiff)}, which read TIFFs it skipped or read in part")
    dicom = sorted(set(dicom_readers()) - set(meta.get("dicom_readers", [])))
    if dicom and any(note == DICOM_READER or note.startswith(DICOM_CODEC) for note in notes):
        reasons.append(f"{' and '.join(dicom)}, which read DICOM files it skipped")
    return "; ".join(reasons)


def load_cache(source: ImageSource, size: int, cache_dir: str | Path | None = None,
               workers: int = 0, show_progress: bool = True, bands: Bands = None) -> ImageCache:
    """The decoded images of `source` at `size` pixels (of TIFFs, `bands`), built on first use
    and reused after."""
    require_tiff_reader(bands)
    root = cache_folder(cache_dir)
    target = root / _cache_key(source, size, bands)
    return open_built(target, lambda: _build(source, size, target, workers, show_progress, bands), source.describe())


def cache_built(source: ImageSource, size: int, cache_dir: str | Path | None = None, bands: Bands = None) -> bool:
    """Whether `source` at `size` pixels (of TIFFs, `bands`) has a published cache that load_cache
    would read as it is (one that a pretraining run on it left): whole, and not outdated by a
    package installed since (see read_built), where load_cache would decode every image again."""
    target = cache_folder(cache_dir) / _cache_key(source, size, bands)
    try:
        meta = json.loads((target / "index.json").read_text())
        whole = (target / "images.u8").stat().st_size == len(meta["names"]) * meta["size"] ** 2 * 3
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return whole and not readable_now(meta)


def require_tiff_reader(bands: Bands) -> None:
    """Bands are chosen by tifffile: without it, the run would skip every TIFF."""
    if bands and "tifffile" not in tiff_readers():
        raise UserError(f"choosing TIFF bands ({','.join(map(str, bands))}) needs tifffile: "
                        f"pip install 'selfsup[tiff]'")


class DamagedCache(Exception):
    """A published cache whose files do not agree (a disk that failed, a file cut short by hand)."""


class OutdatedCache(DamagedCache):
    """A cache that skipped TIFFs or DICOM files that a package installed since it was built
    reads (readable_now)."""


def open_built(target: Path, build, description: str, kind: str = "image") -> ImageCache:
    """The cache in `target`, made by `build()` when it is missing, and made again when damaged."""
    if not (target / "index.json").is_file():
        build()
    try:
        cache = read_built(target, description, kind)
        _mark_used(target)
        return cache
    except DamagedCache as e:
        state = "was built without" if isinstance(e, OutdatedCache) else "is damaged"
        warn(f"the {kind} cache {str(target)!r} {state} ({e}); decoding the {kind}s again")
        discarded = target.with_name(f"{_staging_prefix()}{_builder()}-damaged-{target.name}")
        try:
            target.rename(discarded)
        except FileNotFoundError:  # another process found it damaged too, and took it away
            pass
        except OSError as error:
            raise UserError(f"cannot remove the damaged cache {str(target)!r} ({os_reason(error)}); delete it, "
                            f"then run the same command again") from None
        shutil.rmtree(discarded, ignore_errors=True)
        build()
        try:
            return read_built(target, description, kind)
        except DamagedCache as again:
            raise UserError(f"the {kind} cache {str(target)!r} was decoded again and is still damaged ({again}); "
                            f"check the free space and the disk of the cache folder, "
                            f"or set {option('cache_dir')}") from None


def _mark_used(target: Path) -> None:
    """The index's time is the cache's last use, for `selfsup cache --remove-unused-days`."""
    try:
        os.utime(target / "index.json")
    except OSError:  # a cache on a read-only disk: used all the same
        pass


def mark_used(cache: ImageCache) -> None:
    """Say that `cache` is still in use (a run that trains for days calls it at each checkpoint)."""
    filename = getattr(cache.images, "filename", None)  # a memory map knows its file
    if filename:
        _mark_used(Path(filename).parent)


@dataclass
class CacheEntry:
    path: Path
    source: str
    images: int
    size: int  # pixels per side
    bytes: int
    last_used: float  # seconds since the epoch
    bands: list[int] | None = None  # the TIFF bands chosen (--bands), where they were


def list_caches(root: str | Path | None = None) -> list[CacheEntry]:
    """The image and video caches under `root` (default: the cache folder), most recently used
    first. Only folders that hold a cache's index and pixels are counted."""
    root = cache_folder(root)
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        index, pixels = folder / "index.json", folder / "images.u8"
        if folder.name.startswith(".") or folder.is_symlink() or not (index.is_file() and pixels.is_file()):
            continue  # a link is not counted twice, nor its target removed through it
        try:
            meta = json.loads(index.read_text())
            held = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append(CacheEntry(folder, str(meta.get("source", "?")), len(meta.get("names", [])),
                                      int(meta.get("size", 0)), held, index.stat().st_mtime, meta.get("bands")))
        except (OSError, ValueError):
            continue  # being replaced or damaged: the next run that opens it deals with it
    return sorted(entries, key=lambda e: -e.last_used)


class UnfinishedBuild(NamedTuple):
    path: Path
    bytes: int
    dead: bool  # left by a build killed on this machine (see _abandoned); else under way, or another machine's


def unfinished_builds(root: str | Path | None = None) -> list[UnfinishedBuild]:
    """Each cache being built under `root`, or left by a killed build: disk list_caches does not
    count. Only looked at: remove_dead_builds removes the dead ones, as does the next build here."""
    root = cache_folder(root)
    builds = []
    for folder in sorted(root.glob(STAGING + "*")) if root.is_dir() else []:
        try:
            held = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            builds.append(UnfinishedBuild(folder, held, _abandoned(folder)))
        except OSError:  # published or removed meanwhile
            continue
    return builds


def remove_dead_builds(root: str | Path | None = None) -> list[UnfinishedBuild]:
    """Remove the build folders under `root` left by builds killed on this machine; returns them."""
    dead = [build for build in unfinished_builds(root) if build.dead]
    for build in dead:
        shutil.rmtree(build.path, ignore_errors=True)
    return [build for build in dead if not build.path.exists()]


def remove_unused_caches(root: str | Path | None, days: float) -> list[CacheEntry]:
    """Remove the caches no run has opened or checkpointed with for `days` days, with the
    features and label subsets computed from them (named after the cache, in features/ and
    subsets/), and builds abandoned on this machine; returns the caches removed. A run that needs
    one again decodes its images again."""
    root = cache_folder(root)
    remove_dead_builds(root)
    cutoff = time.time() - days * 86400
    removed = []
    for entry in list_caches(root):
        if entry.last_used < cutoff:
            shutil.rmtree(entry.path, ignore_errors=True)
            if entry.path.exists():  # e.g. NFS keeps files a process still has open
                warn(f"could not remove all of {str(entry.path)!r} (a file still open?); try again later")
            else:
                removed.append(entry)
                for folder in ("features", "subsets"):  # a ViT-B's features of ImageNet: 4 GB per encoder
                    for derived in root.glob(f"{folder}/{entry.path.name}-*"):
                        derived.unlink(missing_ok=True)
    for folder in ("features", "subsets"):  # what a write killed midway left (.NAME.PID.*.tmp): GBs of features
        for left in root.glob(f"{folder}/.*.tmp"):
            if left.stat().st_mtime < cutoff:
                left.unlink(missing_ok=True)
    return removed


def warn_skipped(skipped: list[str], files: int, description: str, kind: str = "image",
                 notes: dict | None = None) -> None:
    """One warning for all the files of `description` that could not be decoded, if any; and one
    for each `notes` (decode_noting's, by note) on what was decoded only in part."""
    notes = notes or {}
    if skipped:
        layouts = notes.get(TIFF_LAYOUT, [])
        valid = "" if not layouts else (
            f"; {len(layouts):,} of them are valid TIFFs in a layout Pillow cannot decode (e.g. {layouts[0]!r}; "
            f"16-bit with 4 bands, as GDAL writes them, or LZW-compressed): pip install 'selfsup[tiff]' "
            f"(tifffile and imagecodecs) to read them")
        few, colour = notes.get(FEW_BANDS, []), notes.get(TIFF_COLOUR, [])
        valid += "" if not few else (f"; {len(few):,} of them are TIFFs with fewer bands than asked for "
                                     f"(e.g. {few[0]!r})")
        valid += "" if not colour else (f"; {len(colour):,} of them are TIFFs in CMYK, Lab or another colour "
                                        f"space whose bands {named_option('bands')} cannot choose from "
                                        f"(e.g. {colour[0]!r})")
        valid += _unread_dicoms(notes)
        warn(f"skipped {len(skipped):,} of {files:,} files in {description} that are not readable {kind}s "
             f"(e.g. {skipped[0]!r}){valid}; going on with {files - len(skipped):,}")
    if notes.get(FIRST_PAGE):
        warn(f"{len(notes[FIRST_PAGE]):,} of {files:,} files in {description} are multi-page TIFFs (e.g. "
             f"{notes[FIRST_PAGE][0]!r}), of which only the first page is used (the first plane's channels, where "
             f"they are pages); save each page or plane (of a z-stack, a time series) as a file of its own to use "
             f"the others")
    if notes.get(FIRST_FRAME):
        warn(f"{len(notes[FIRST_FRAME]):,} of {files:,} files in {description} are multi-frame DICOM files (e.g. "
             f"{notes[FIRST_FRAME][0]!r}: an enhanced CT or MR series, a cine loop), of which only the first frame "
             f"is used; save each frame as a file of its own to use the others")
    if notes.get(NOT_TIFF) and len(notes[NOT_TIFF]) == files:
        warn(f"none of the {files:,} files in {description} is a TIFF: the bands chosen ({option('bands')}) apply "
             f"to TIFFs alone, and these are read as they are")
    if notes.get(FIRST_BANDS):
        warn(f"{len(notes[FIRST_BANDS]):,} of {files:,} files in {description} are TIFFs with two or more than "
             f"three bands (e.g. {notes[FIRST_BANDS][0]!r}), of which bands 1, 2 and 3 were read as red, green "
             f"and blue (of two, the first as gray); to choose others, pretrain with {option('bands')} "
             f"(e.g. {option('bands', (4, 3, 2))})")
    if notes.get(TOP_BYTE):
        warn(f"{len(notes[TOP_BYTE]):,} of {files:,} files in {description} hold 16 bits per sample in a layout "
             f"of which Pillow reads the top 8 bits only (e.g. {notes[TOP_BYTE][0]!r}: gray with alpha, or "
             f"premultiplied alpha); those were stretched, so 12-bit data shows 16 levels; save them as 16-bit "
             f"RGB or grayscale PNG or TIFF without alpha to use all their bits")


def _unread_dicoms(notes: dict, examples: bool = True) -> str:
    """"; N of them are DICOM files ..." for each reason (decode_dicom's notes) DICOM files were
    skipped for, with what to install, and for files named as DICOM files that are not (NOT_DICOM);
    '' where none were."""
    said = ""
    for note, names in sorted(notes.items()):
        example = f" (e.g. {names[0]!r})" if examples and names else ""
        if note == DICOM_READER and names:
            said += (f"; {len(names):,} of them are DICOM files{example}: pip install 'selfsup[dicom]' (pydicom) "
                     f"to read them")
        elif note.startswith(DICOM_CODEC) and names:
            syntax = note[len(DICOM_CODEC):]
            said += (f"; {len(names):,} of them are DICOM files compressed as {syntax_name(syntax)}{example}, which "
                     f"no installed package decodes: {codec_hint(syntax)}")
        elif note == SEGMENTED_PALETTE and names:
            said += (f"; {len(names):,} of them are DICOM files coloured by a segmented palette{example} that "
                     f"selfsup does not read (of 8-bit entries, with indirect segments, or whose segments do not make "
                     f"its table): convert them to RGB to use them")
        elif note == NOT_DICOM and names:
            said += (f"; {len(names):,} of them are named as DICOM files but are not{example}: neither 'DICM' at "
                     f"byte 128 nor a data set at their start")
    return said


def what_to_do(notes: dict, kind: str) -> str:
    """When no file decodes: what the notes say would make them decode, else to check them."""
    if notes.get(TIFF_LAYOUT):
        return (f"{len(notes[TIFF_LAYOUT]):,} of them are TIFFs in a layout Pillow cannot decode: pip install "
                f"'selfsup[tiff]' (tifffile and imagecodecs) to read them")
    if notes.get(FEW_BANDS):
        return (f"{len(notes[FEW_BANDS]):,} of them are TIFFs with fewer bands than {named_option('bands')} asks for: "
                f"choose others")
    dicoms = _unread_dicoms(notes, examples=False)
    if dicoms:
        return dicoms[2:]  # without its "; "
    return f"check that they are {kind}s"


def read_built(target: Path, description: str, kind: str = "image") -> ImageCache:
    """The cache written in `target` (images.u8 and index.json), memory-mapped, named by
    `description`: the data as this caller names it, not as whoever built the cache did (a cache
    is keyed by content, so a relative and an absolute path share one)."""
    try:
        meta = json.loads((target / "index.json").read_text())
        names, size = meta["names"], meta["size"]
        files = meta.get("files", len(names) + len(meta["skipped"]))  # a video file holds many rows
        expected, held = len(names) * size * size * 3, (target / "images.u8").stat().st_size
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise DamagedCache(f"its index cannot be read: {type(e).__name__}") from None
    if held != expected:
        raise DamagedCache(f"images.u8 holds {held:,} bytes where its index says {expected:,}")
    newly_readable = readable_now(meta)
    if newly_readable:
        raise OutdatedCache(newly_readable)
    if names:  # else the error below says it all
        warn_skipped(meta["skipped"], files, description, kind, meta.get("notes"))
    if not names:
        raise UserError(f"none of the {len(meta['skipped']):,} {kind} files in {description!r} "
                        f"could be decoded; {what_to_do(meta.get('notes') or {}, kind)}")
    images = np.memmap(target / "images.u8", dtype=np.uint8, mode="r", shape=(len(names), size, size, 3))
    labels = np.asarray(meta["labels"], dtype=np.int64) if meta["labels"] is not None else None
    return ImageCache(images=images, names=names, labels=labels, classes=meta["classes"],
                      skipped=meta["skipped"], grayscale_rows=np.asarray(meta["grayscale_rows"], dtype=np.int64),
                      source=description, median_side=meta["median_side"], pixels_sha256=meta.get("pixels_sha256"))


def open_images(path: str | Path, size: int, split: str | None = None, cache_dir=None,
                workers: int = 0, show_progress: bool = True, bands: Bands = None) -> ImageCache:
    """Shortcut: list the images under `path` and load (or build) their cache. A folder (or tar)
    of video files gives the frames of its videos, so that any image method trains on them."""
    from .sources import open_source
    try:
        source = open_source(path, split)
    except UserError as e:
        from .video import has_videos, open_clips
        if split is None and "no images found" in str(e) and has_videos(Path(path).expanduser()):
            return open_clips(path, size, cache_dir, workers, show_progress, motion=False)
        raise
    return load_cache(source, size, cache_dir, workers, show_progress, bands)
