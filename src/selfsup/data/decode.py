"""An image file's bytes -> (size, size, 3) uint8 pixels: the shorter side resized, then a centre crop.

Pillow reads what it can; tifffile (tiff.py) reads the TIFFs it cannot (GDAL's multi-band tiles,
a microscope's channel pages) and the bands `--bands` chooses; DICOM files go to dicom.py. Deep
samples (16-bit colour, 16/32-bit gray, floats) are stretched to 8 bits, transparency is
composited over white, and a photo is turned upright by its EXIF orientation. What could not be
done in full (a multi-page TIFF's first page, 16-bit samples read from their top bytes, ...) is
returned as notes, which warn_skipped says once per dataset and command (decode_stream, in
workers.py, decodes many files in a pool of worker processes). The keys of caches and embeddings
name what decides the pixels a file gives: the readers installed (readers_for) and the DICOM
display (dicom_display_key).
"""
from __future__ import annotations

import io
import itertools
import sys
import warnings

import numpy as np
from PIL import Image

from ..console import named_option, option, warn
from .dicom import (DICOM_CODEC, DICOM_DISPLAY, DICOM_READER, FIRST_FRAME, SEGMENTED_PALETTE, codec_hint, decode_dicom,
                    dicom_readers, is_dicom, is_dicom_file_start, syntax_name)
from .sources import DICOM_SUFFIXES, ImageSource, is_tar_path, suffix_of, without_suffix
from .stretch import black_outside, inside_scene, stretch_integers, to_uint8
from .tiff import (FEW_BANDS, FIRST_BANDS, FIRST_PAGE, GDAL_NODATA, MIN_IS_BLACK, MIN_IS_WHITE, PHOTOMETRIC_TAG, RGB,
                   RGB_BANDS, TIFF_COLOUR, TIFF_LAYOUT, TIFF_MAGIC, Bands, first_plane_bands, tiff_readers,
                   unknown_tiff_layout)

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
# (and tiff.py's and dicom.py's notes)
TOP_BYTE = "top_byte"  # 16-bit samples read from their top bytes
NOT_TIFF = "not_tiff"  # an image `bands` does not apply to
NOT_DICOM = "not_dicom"  # named as a DICOM file (.dcm), neither one by its content nor an image: skipped


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
        plane = first_plane_bands(data, LARGEST_IMAGE_PIXELS, bands)
        chosen, total, photometric, channel_pages, more_planes, nodata = plane
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


def decode_named(name: str, data: bytes, size: int, bands: Bands = None
                 ) -> tuple[tuple[np.ndarray, bool, int] | None, list[str]]:
    """decode_noting's answer for the file `name`, and NOT_DICOM where it is named as a DICOM file
    but is neither one by its content nor an image: a file put among the scans by mistake (a report,
    a download's error page), which the warning then tells from a scan selfsup cannot read."""
    decoded, notes = decode_noting(data, size, bands)
    if decoded is None and not notes and suffix_of(name).lower() in DICOM_SUFFIXES and not is_dicom(data):
        return None, [NOT_DICOM]
    return decoded, notes


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
             f"(e.g. {skipped[0]!r}){valid}; going on with {files - len(skipped):,}", once=True)
    if notes.get(FIRST_PAGE):
        warn(f"{len(notes[FIRST_PAGE]):,} of {files:,} files in {description} are multi-page TIFFs (e.g. "
             f"{notes[FIRST_PAGE][0]!r}), of which only the first page is used (the first plane's channels, where "
             f"they are pages); save each page or plane (of a z-stack, a time series) as a file of its own to use "
             f"the others", once=True)
    if notes.get(FIRST_FRAME):
        warn(f"{len(notes[FIRST_FRAME]):,} of {files:,} files in {description} are multi-frame DICOM files (e.g. "
             f"{notes[FIRST_FRAME][0]!r}: an enhanced CT or MR series, a cine loop), of which only the first frame "
             f"is used; save each frame as a file of its own to use the others", once=True)
    if notes.get(NOT_TIFF) and len(notes[NOT_TIFF]) == files:
        warn(f"none of the {files:,} files in {description} is a TIFF: the bands chosen ({option('bands')}) apply "
             f"to TIFFs alone, and these are read as they are", once=True)
    if notes.get(FIRST_BANDS):
        warn(f"{len(notes[FIRST_BANDS]):,} of {files:,} files in {description} are TIFFs with two or more than "
             f"three bands (e.g. {notes[FIRST_BANDS][0]!r}), of which bands 1, 2 and 3 were read as red, green "
             f"and blue (of two, the first as gray); to choose others, pretrain with {option('bands')} "
             f"(e.g. {option('bands', (4, 3, 2))})", once=True)
    if notes.get(TOP_BYTE):
        warn(f"{len(notes[TOP_BYTE]):,} of {files:,} files in {description} hold 16 bits per sample in a layout "
             f"of which Pillow reads the top 8 bits only (e.g. {notes[TOP_BYTE][0]!r}: gray with alpha, or "
             f"premultiplied alpha); those were stretched, so 12-bit data shows 16 levels; save them as 16-bit "
             f"RGB or grayscale PNG or TIFF without alpha to use all their bits", once=True)


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
