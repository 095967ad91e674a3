"""DICOM files (CT, MR, X-ray, ultrasound) decoded as they are displayed: PS3.3 C.11's pipeline.

A scanner stores sample values whose meaning the file itself gives: the Modality LUT (Rescale Slope
and Intercept: a CT's Hounsfield units; or a table, the Modality LUT Sequence, where the mapping is
not linear) turns them into values of the modality, and the VOI transform (a window, C.11.2.1.2)
chooses which of those the display shows from black to white: a lung or a bone window, as the
scanner or the radiologist chose it, or a lookup table (a VOI LUT, an X-ray's or a mammogram's).
Without either, the modality's values are stretched between percentiles as any deep image is.
MONOCHROME1 (0 is white: many X-rays) is inverted so that 0 is black as in MONOCHROME2; PALETTE
COLOR (an ultrasound's Doppler, a PET's colour scale) shows its indices through its red, green and
blue tables (listed, or segmented). Of a multi-frame file (an enhanced CT series, a cine loop) only
the first frame is read, with its own rescale and window where an enhanced object keeps them (its
functional groups). pydicom is an optional package (`pip install 'selfsup[dicom]'`); without it, and
for a compression that no installed package decodes, DICOM files are skipped and the notes say what
to install.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np

from ..lazy import installed
from .segmented_lut import expand_segments
from .stretch import stretch_integers, to_uint8

# What decode_dicom could not do in full, by file, as decode_noting's notes are
FIRST_FRAME = "first_frame"  # a multi-frame file: its first frame read
DICOM_READER = "dicom_reader"  # a DICOM file, and pydicom is not installed: skipped
DICOM_CODEC = "dicom_codec:"  # + the transfer syntax's UID: compressed as no installed package decodes; skipped
# PALETTE COLOR whose segmented tables (C.7.9.2) are not read: of 8-bit entries, with indirect
# segments, or damaged; skipped
SEGMENTED_PALETTE = "dicom_segmented_palette"
DICOM_MAGIC_AT = 128  # "DICM" after the preamble of a DICOM file (PS3.10 7.1)
# The packages that pydicom's decoders use (module names), as its plugin table lists them
CODEC_MODULES = ("pylibjpeg", "libjpeg", "openjpeg", "gdcm", "jpeg_ls")
# Compressed transfer syntaxes, by UID, and what decodes them (pydicom 3's plugin table; Pillow, a
# dependency, decodes JPEG baseline and JPEG 2000 where it was built with libjpeg and openjpeg)
JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # baseline 8-bit, extended 12-bit
                 "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # lossless, lossless SV1
                 "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # JPEG-LS lossless, near-lossless
JPEG_2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossless, lossy
                      "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # HTJ2K
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Where an enhanced multi-frame object keeps, frame by frame, its rescale and its window (PS3.3
# C.7.6.16.2.9 Pixel Value Transformation, C.7.6.16.2.10 Frame VOI LUT functional groups)
FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
# Raised whenever a DICOM file's display changes, so that caches and embeddings of pools holding
# DICOM files are decoded again (and only theirs). 2: functional groups, VOI LUT Sequence, palettes.
# 3: the Modality LUT Sequence read here (8-bit tables packed two a word, and depths other than 8 and
# 16, were files skipped); files without a preamble in big endian or with their file meta read;
# segmented palettes of 16-bit entries and discrete or linear segments read.
DICOM_DISPLAY = 3
BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian: its OW data (a LUT's) are big-endian words
# The value representations of PS3.5 6.2, as an explicit VR data element writes them after its tag
VALUE_REPRESENTATIONS = frozenset(code.encode() for code in (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()))


def dicom_readers() -> list[str]:
    """The optional packages installed that decide which DICOM files decode: pydicom (`pip install
    'selfsup[dicom]'`), and the decoders of compressed pixel data it uses."""
    return [name for name in ("pydicom", *CODEC_MODULES) if installed(name)]


def is_dicom_file_start(data: bytes) -> bool:
    """The first DICOM_MAGIC_AT + 4 bytes of a file are a DICOM file's (its preamble, then "DICM")."""
    return data[DICOM_MAGIC_AT:DICOM_MAGIC_AT + 4] == b"DICM"


def is_dicom(data: bytes) -> bool:
    """A DICOM file by content: "DICM" after the 128-byte preamble, or a data set from its first
    byte, without the preamble (see is_dicom_start)."""
    return is_dicom_start(data, len(data))


def is_dicom_start(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes whose first bytes are `head` (DICOM_MAGIC_AT + 4 of them, or
    all) is a DICOM file by content: "DICM" after the preamble (PS3.10 7.1), or a data set from its
    first byte, as older software wrote them without preamble nor file meta (or with file meta but
    no preamble): what pydicom's force=True reads."""
    return is_dicom_file_start(head) or _bare_data_set(head, size)


def _bare_data_set(head: bytes, size: int) -> bool:
    # A data set's first element, of group 0008 (0002 where the file meta is kept, always explicit VR
    # little endian: PS3.10 7.1): little endian with an explicit VR or an implicit length that fits in
    # the file, or big endian, which is explicit VR alone (PS3.5 A.3). Few other formats start so (a TGA
    # with an 8-byte ID does): where pydicom then reads no data set, Pillow is left to try.
    if len(head) < 8:
        return False
    explicit = head[4:6] in VALUE_REPRESENTATIONS
    if head[:2] == b"\x08\x00" and head[3] == 0:  # (0008,00xx), little endian
        return explicit or int.from_bytes(head[4:8], "little") <= size - 8
    if head[:2] == b"\x00\x08" and head[2] == 0:  # (0008,00xx), big endian
        return explicit
    return head[:2] == b"\x02\x00" and head[3] == 0 and explicit  # (0002,00xx): file meta, no preamble


def codec_hint(uid: str) -> str:
    """What to install to decode pixel data compressed as the transfer syntax `uid`."""
    if uid in JPEG_SYNTAXES:
        return "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm) to read them"
    if uid in JPEG_2000_SYNTAXES:
        return "pip install pylibjpeg pylibjpeg-openjpeg to read them"
    return "no package that pydicom uses decodes it: convert them to an uncompressed transfer syntax to read them"


def syntax_name(uid: str) -> str:
    """The transfer syntax `uid` by name and UID, e.g. "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"."""
    try:
        from pydicom.uid import UID
        name = UID(uid).name
    except ImportError:  # a cache read on a machine without pydicom
        return uid
    return f"{name} ({uid})" if name != uid else uid


def decode_dicom(data: bytes, largest_image: int) -> tuple[tuple[np.ndarray, bool] | None, list[str]]:
    """The display of a DICOM file, (H, W) or (H, W, 3) uint8, and whether it is grayscale; None
    where it cannot be decoded: damaged, no pixel data, over `largest_image` pixels, a photometric
    interpretation other than MONOCHROME1/2, PALETTE COLOR, RGB or YBR (which pydicom gives as
    RGB). Notes: DICOM_READER without pydicom, DICOM_CODEC + UID for a compression no installed
    package decodes, SEGMENTED_PALETTE for a palette this module does not read, FIRST_FRAME for a
    multi-frame file."""
    try:
        import pydicom
    except ImportError:
        return None, [DICOM_READER]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's complaints: it is skipped all the same
            return _display(pydicom, data, largest_image)
    except Exception:  # noqa: BLE001 - damaged, or pixel data that does not agree with its header
        return None, []


def _display(pydicom, data: bytes, largest_image: int) -> tuple[tuple[np.ndarray, bool] | None, list[str]]:
    """decode_dicom's answer, where reading or decoding may raise."""
    from pydicom.pixels import get_decoder, pixel_array
    ds = read_data_set(pydicom, data)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    try:
        readable = get_decoder(syntax).is_available
    except NotImplementedError:  # a syntax pydicom has no decoder for (MPEG video, JPIP)
        readable = False
    if not readable:
        return None, [DICOM_CODEC + syntax]
    if int(ds.Rows) * int(ds.Columns) > largest_image:  # before decoding a frame of GBs
        return None, []
    frame = pixel_array(ds, index=0)  # (H, W) or (H, W, 3); YBR as RGB
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    adopt_first_frame_groups(ds)  # an enhanced CT's or MR's rescale and window, where the display reads them
    if photometric in MONOCHROME and frame.ndim == 2:
        pixels = grayscale_display(frame, ds, invert=photometric == "MONOCHROME1")
    elif frame.ndim == 3 and frame.shape[2] == 3 and (photometric == "RGB" or photometric.startswith("YBR")):
        pixels = colour_display(frame)
    elif photometric == "PALETTE COLOR" and frame.ndim == 2:
        pixels = palette_display(frame, ds)
        if pixels is None:  # segmented, as some PET and ultrasound palettes are, in a way not read here
            return None, [SEGMENTED_PALETTE] if "SegmentedRedPaletteColorLookupTableData" in ds else []
    else:
        return None, []
    gray = pixels.ndim == 2 or bool((pixels[..., :1] == pixels[..., 1:]).all())
    return (pixels, gray), [FIRST_FRAME] if int(ds.get("NumberOfFrames") or 1) > 1 else []


def read_data_set(pydicom, data: bytes):
    """The data set of a DICOM file. force=True only for a bare data set (is_dicom), whose
    transfer syntax its encoding then says; forced on other bytes, pydicom reads anything as one."""
    if data[DICOM_MAGIC_AT:DICOM_MAGIC_AT + 4] == b"DICM":
        return pydicom.dcmread(io.BytesIO(data))
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: uncompressed, as it was read
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                          pydicom.uid.ExplicitVRLittleEndian if little else
                                          pydicom.uid.ExplicitVRBigEndian)
    return ds


def adopt_first_frame_groups(ds) -> None:
    """Puts at the top level of `ds` the rescale and window of its first frame where an enhanced
    multi-frame object (Enhanced CT, MR, XA, ...) keeps them: in the functional groups FRAME_GROUPS
    shared by all frames (SharedFunctionalGroupsSequence) or the first frame's own
    (PerFrameFunctionalGroupsSequence[0]), which win (PS3.3 C.7.6.16)."""
    for groups in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")):
        for keyword in FRAME_GROUPS:
            items = groups[0].get(keyword) if groups else None
            for element in items[0] if items else ():
                ds[element.tag] = element


def grayscale_display(frame: np.ndarray, ds, invert: bool) -> np.ndarray:
    """(H, W) uint8 of a MONOCHROME frame: the Modality LUT, then the data set's first window
    (C.11.2.1.2), else its first VOI LUT (C.11.2.1.1), else a percentile stretch (8-bit samples
    without a Modality LUT are shown as they are, as an 8-bit gray PNG is; fewer bits, a 1-bit
    mask's, are stretched); MONOCHROME1 (`invert`) then turned so that 0 is black."""
    values = modality_values(frame, ds)  # a CT's Hounsfield units; the samples where it has none
    window = first_window(ds)
    # A file may hold both, alternative views of which a viewer may show either (C.11.2): the window here
    voi_lut = first_voi_lut(ds) if window is None else None
    if window is not None:
        pixels = apply_window(values, *window)
    elif voi_lut is not None:
        first, entries, bits = voi_lut
        pixels = to_8_bits(look_up(values, first, entries), bits)
    elif values is frame and values.dtype == np.uint8 and int(ds.get("BitsStored") or 8) < 8:
        pixels = stretch_integers(values)
    else:
        pixels = to_uint8(values)
    return 255 - pixels if invert else pixels


def modality_values(stored: np.ndarray, ds) -> np.ndarray:
    """The Modality LUT's output for `stored` values (PS3.3 C.11.1): through the first LUT of the
    Modality LUT Sequence, 8-bit entries as uint8 and deeper ones as uint16 (its output range,
    0..2^bits-1, is unsigned), else Rescale Slope and Intercept in float64, else `stored` itself.
    The two are exclusive (C.11.1: no Rescale Intercept beside the sequence); a file holding both is
    shown through its LUT, as it was when pydicom's apply_modality_lut read it. Read here, as the VOI
    LUT is: pydicom's reads 8-bit entries only one a word, where 8 bits allocated pack two."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1  # the first value mapped is SS where the samples are
    lut = first_lut(ds.get("ModalityLUTSequence"), signed, is_big_endian(ds))
    if lut is not None:
        first, entries, bits = lut
        fits = bits <= 8 and entries.max() < 1 << 8
        return look_up(stored, first, entries).astype(np.uint8 if fits else np.uint16)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return stored


def first_voi_lut(ds) -> tuple[int, np.ndarray, int] | None:
    """(first input value mapped, entries (N,) int64, bits per entry) of the data set's first VOI LUT
    (VOI LUT Sequence, PS3.3 C.11.2.1.1); None without one."""
    if not ds.get("VOILUTSequence"):
        return None
    # its input is the Modality LUT's output, and its first value mapped signed (SS) where that may be negative
    return first_lut(ds.VOILUTSequence, modality_may_be_negative(ds), is_big_endian(ds))


def first_lut(sequence, signed: bool, big_endian: bool) -> tuple[int, np.ndarray, int] | None:
    """(first input value mapped, entries (N,) int64, bits per entry) of the first item of a
    Modality or VOI LUT Sequence, its first value mapped read as `signed` or not; None without a
    sequence, or with a LUT Descriptor or LUT Data damaged (the file is then shown as without it)."""
    lut = (sequence or [None])[0]
    if lut is None or "LUTDescriptor" not in lut or "LUTData" not in lut:
        return None
    if len(lut.LUTDescriptor) != 3:
        return None
    count, first, bits = (int(value) for value in lut.LUTDescriptor)
    entries = lut_entries(lut.LUTData, count or 1 << 16, big_endian)
    if not len(entries) or not 1 <= bits <= 16:
        return None
    return first_mapped(first, signed), entries, bits


def modality_may_be_negative(ds) -> bool:
    """Whether the Modality LUT's output may be negative, over the whole range of the stored samples."""
    bits, signed = int(ds.get("BitsStored") or 16), int(ds.get("PixelRepresentation") or 0) == 1
    ends = np.array([-(1 << bits - 1), (1 << bits - 1) - 1] if signed else [0, (1 << bits) - 1])
    return bool(np.min(modality_values(ends, ds)) < 0)


def first_mapped(value: int, signed: bool) -> int:
    """A LUT Descriptor's first value mapped, written as US or SS, as the input it maps: signed or not."""
    value %= 1 << 16
    return value - (1 << 16) if signed and value >= 1 << 15 else value


def is_big_endian(ds) -> bool:
    """Whether the data set was written big endian, and so its OW data (LUT Data) in big-endian words."""
    return str(ds.file_meta.get("TransferSyntaxUID", "")) == BIG_ENDIAN


def lut_entries(data, count: int, big_endian: bool) -> np.ndarray:
    """The `count` entries of LUT Data as int64 (N,): numbers (US), or OW bytes holding one 16-bit word
    each, or where there are fewer than two bytes an entry, two 8-bit entries a word, the first in its
    low byte (PS3.3 C.7.6.3.1.5: as 8 bits allocated would store them)."""
    if not isinstance(data, bytes):
        return np.atleast_1d(np.asarray(data, np.int64))[:count]
    words = np.frombuffer(data[:len(data) // 2 * 2], ">u2" if big_endian else "<u2")
    packed = words.astype("<u2").view(np.uint8) if len(data) < 2 * count else words
    return packed[:count].astype(np.int64)


def look_up(values: np.ndarray, first: int, entries: np.ndarray) -> np.ndarray:
    """The `entries` of a LUT for `values` (PS3.3 C.11.2.1.1): `first` and the values below it map to the
    first entry, each value above to the next entry, values past the last to the last; between two
    integers a value maps as the lower one does."""
    index = np.clip(np.floor(values.astype(np.float64)) - first, 0, len(entries) - 1).astype(np.intp)
    return entries[index]


def to_8_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """A LUT's output, whose range is 0 .. 2^bits - 1, onto 0..255, uint8."""
    top = (1 << bits) - 1
    return np.round(np.clip(values, 0, top) * (255 / top)).astype(np.uint8)


def colour_display(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an RGB frame: 8-bit as it is, deeper samples stretched jointly."""
    return to_uint8(frame)


def palette_display(frame: np.ndarray, ds) -> np.ndarray | None:
    """(H, W, 3) uint8 of a PALETTE COLOR frame: its stored values, indices, through the red, green
    and blue Palette Color Lookup Tables (PS3.3 C.7.6.3.1.5, C.7.6.3.1.6), whose 8- or 16-bit
    entries are shown as 0..255; None where a table cannot be read (palette_entries)."""
    signed, big = int(ds.get("PixelRepresentation") or 0) == 1, is_big_endian(ds)
    channels = []
    for colour in ("Red", "Green", "Blue"):
        count, first, bits = (int(value) for value in getattr(ds, f"{colour}PaletteColorLookupTableDescriptor"))
        entries = palette_entries(ds, colour, count or 1 << 16, bits, big)
        if entries is None:
            return None
        channels.append(to_8_bits(look_up(frame, first_mapped(first, signed), entries), bits))
    return np.stack(channels, axis=-1)  # (H, W, 3)


def palette_entries(ds, colour: str, count: int, bits: int, big_endian: bool) -> np.ndarray | None:
    """The entries (N,) int64 of the `colour` Palette Color Lookup Table: its data, or its segmented
    data expanded where its entries are 16-bit (segmented_lut); None without either, or for segmented
    data of 8-bit entries, with indirect segments, or whose segments do not make `count` entries."""
    data = ds.get(f"{colour}PaletteColorLookupTableData")
    if data is not None:
        return lut_entries(data, count, big_endian)
    segmented = ds.get(f"Segmented{colour}PaletteColorLookupTableData")
    if not isinstance(segmented, bytes) or bits != 16:
        return None
    words = np.frombuffer(segmented[:len(segmented) // 2 * 2], ">u2" if big_endian else "<u2")
    return expand_segments(words, count)


def first_window(ds) -> tuple[float, float, str] | None:
    """(centre, width, VOI LUT function) of the data set's first window; None without one, or
    with a width the function does not define (LINEAR needs at least 1, the others more than 0)."""
    try:
        centre, width = (_first(ds.get(keyword)) for keyword in ("WindowCenter", "WindowWidth"))
    except (TypeError, ValueError, IndexError):  # none, empty, or not a number
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    function = function if function in ("LINEAR_EXACT", "SIGMOID") else "LINEAR"
    if not (np.isfinite(centre) and np.isfinite(width)) or (width < 1 if function == "LINEAR" else width <= 0):
        return None
    return centre, width, function


def _first(value) -> float:
    """A number of a data set, the first where it holds several (a window for lungs, then for bone)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def apply_window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """`values` (the Modality LUT's output) through the window onto 0..255, uint8 (PS3.3
    C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT, C.11.2.1.3.1 SIGMOID, with y_min 0, y_max 255)."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # far below the centre: exp overflows, and the output is 0
            y = 255 / (1 + np.exp(-4 * (x - centre) / width))
    elif function == "LINEAR_EXACT":
        y = np.clip((x - centre) / width + 0.5, 0, 1) * 255
    elif width == 1:  # LINEAR's ramp is empty: below or at c - 0.5 black, above it white
        y = np.where(x > centre - 0.5, 255.0, 0.0)
    else:  # x <= c - 0.5 - (w-1)/2: 0; x > c - 0.5 + (w-1)/2: 255; else ((x - (c-0.5)) / (w-1) + 0.5) * 255
        y = np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    return np.round(y).astype(np.uint8)
