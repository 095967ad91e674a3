"""DICOM files: PS3.3 C.11's display (Modality LUT, window, VOI LUT, MONOCHROME1), the first frame
(an enhanced object's through its functional groups), colour, palette colour, big endian,
compressions no package decodes, and a folder of scans through the cache and a pretraining run.

The files are written by pydicom itself; the expected pixels are computed here by hand in float64
from the standard's formulas, and checked against pydicom's own apply_windowing where that is
defined on 0..255."""
import contextlib
import copy
import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from selfsup.data import load_cache, open_images, open_source
from selfsup.errors import UserError

EXPLICIT, RLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"  # Explicit VR Little Endian, RLE Lossless
BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian
JPEG_LS, MPEG2 = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.100"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def syntaxes() -> list[str]:
    """The transfer syntaxes written: uncompressed, and RLE Lossless where pydicom can encode it."""
    try:
        from pydicom.pixels import get_encoder
        return [EXPLICIT] + ([RLE] if get_encoder(RLE).is_available else [])
    except ImportError:
        return [EXPLICIT]


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                syntax: str = EXPLICIT, preamble: bool = True, **elements) -> bytes:
    """A DICOM file of `pixels` ((frames,) rows, columns (, 3)) with the data elements `elements`."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if syntax == RLE:
        ds.compress(RLE)
    if syntax == BIG_ENDIAN:  # pydicom writes the elements big endian; 16-bit Pixel Data and OW words it keeps as
        ds = copy.deepcopy(ds)  # the bytes they are: swapped here (in a copy: the items are the caller's)
        ds.file_meta.TransferSyntaxUID = BIG_ENDIAN
        for element in ds.iterall():
            if element.VR == "OW" or element.tag == 0x7FE00010 and ds.BitsAllocated == 16:
                element.value = np.frombuffer(element.value, "<u2").astype(">u2").tobytes()
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:  # a bare data set, as older software wrote them: no preamble, no file meta; implicit VR little
        del ds.file_meta  # endian, or explicit VR big endian (big endian is explicit VR alone)
        ds.save_as(buffer, implicit_vr=syntax != BIG_ENDIAN, little_endian=syntax != BIG_ENDIAN)
    return buffer.getvalue()


def window_by_hand(x: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID), onto
    y_min = 0, y_max = 255, case by case as the standard writes them, in float64, rounded."""
    x, y = x.astype(np.float64), np.zeros(x.shape)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp(large): 0
            return np.round(255 / (1 + np.exp(-4 * (x - centre) / width)))
    if function == "LINEAR":
        below, above = x <= centre - 0.5 - (width - 1) / 2, x > centre - 0.5 + (width - 1) / 2
        ramp = lambda v: ((v - (centre - 0.5)) / (width - 1) + 0.5) * 255  # noqa: E731
    else:
        below, above = x <= centre - width / 2, x > centre + width / 2
        ramp = lambda v: ((v - centre) / width + 0.5) * 255  # noqa: E731
    between = ~below & ~above
    y[above] = 255
    y[between] = ramp(x[between])
    return np.round(y)


def stretched_by_hand(values: np.ndarray) -> np.ndarray:
    """From the 0.05th to the 99.95th percentile of `values`, onto 0..255, in float64."""
    low, high = np.percentile(values.astype(np.float64), (0.05, 99.95))
    return np.round((np.clip(values, low, high) - low) * (255 / (high - low)))


def decode(data: bytes, size: int = 24):
    from selfsup.data.decode import decode_noting
    return decode_noting(data, size)


def ct_slices(rng: np.random.Generator, frames: int = 1) -> tuple[np.ndarray, float, float]:
    """12-bit stored CT samples (frames, 24, 24) uint16 and a Rescale Slope and Intercept."""
    slope, intercept = rng.choice([1.0, 0.5, 2.5]), rng.choice([-1024.0, -1000.0, 0.0])
    stored = rng.integers(0, 4096, size=(frames, 24, 24)).astype(np.uint16)
    return stored, float(slope), float(intercept)


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("seed", range(3))
def test_the_first_window_is_applied_to_the_modality_values_as_the_standard_defines_it(seed, function, syntax):
    """A CT's samples, through Rescale Slope/Intercept to Hounsfield units, then its first window
    (a lung window, say, where a bone window follows) onto 0..255."""
    pytest.importorskip("pydicom")
    from pydicom.pixels import apply_windowing
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng)
    stored = stored[0]
    hu = stored * slope + intercept
    centre = float(rng.uniform(hu.min(), hu.max()))
    width = float(rng.choice([1.0, rng.uniform(1, 200), rng.uniform(200, 3000)]))
    if function != "LINEAR":
        width = max(width, 0.5)
    data = dicom_bytes(stored, bits_stored=12, syntax=syntax, RescaleSlope=slope, RescaleIntercept=intercept,
                       WindowCenter=[round(centre, 2), 300], WindowWidth=[round(width, 2), 1500],
                       VOILUTFunction=function)
    (pixels, gray, side), notes = decode(data)
    expected = window_by_hand(hu, round(centre, 2), round(width, 2), function)
    assert gray and side == 24 and notes == []
    assert (pixels == expected[..., None]).all()
    # pydicom's windowing maps onto the range of the stored bits, rescaled: brought back to 0..255
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data))
    y_min, y_max = intercept, 4095 * slope + intercept
    with np.errstate(over="ignore"):
        theirs = (apply_windowing(hu, ds) - y_min) * (255 / (y_max - y_min))
    assert np.abs(pixels[..., 0] - theirs).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("seed", range(3))
def test_without_a_window_the_modality_values_are_stretched_between_percentiles(seed, syntax):
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng)
    data = dicom_bytes(stored[0], bits_stored=12, syntax=syntax, RescaleSlope=slope, RescaleIntercept=intercept)
    (pixels, gray, _), _ = decode(data)
    assert gray and np.abs(pixels[..., 0] - stretched_by_hand(stored[0] * slope + intercept)).max() == 0
    plain = rng.integers(100, 900, size=(24, 24)).astype(np.uint16)  # no Modality LUT: the samples
    (pixels, _, _), _ = decode(dicom_bytes(plain, bits_stored=10, syntax=syntax))
    assert (pixels[..., 0] == stretched_by_hand(plain)).all()
    eight = rng.integers(40, 120, size=(24, 24)).astype(np.uint8)  # 8-bit, as an 8-bit gray PNG: as it is
    (pixels, _, _), _ = decode(dicom_bytes(eight, syntax=syntax))
    assert (pixels == eight[..., None]).all()


@pytest.mark.parametrize("descriptor", [[16, 0], [16, 0, 8, 1]])
def test_a_voi_lut_with_a_damaged_descriptor_is_left_for_the_stretch(descriptor):
    """A LUT Descriptor holds three values; a file whose descriptor does not is still shown, as a
    file without a LUT is, not skipped."""
    stored = np.random.default_rng(3).integers(100, 900, size=(24, 24)).astype(np.uint16)
    lut = item(LUTDescriptor=descriptor)
    lut.add_new(0x00283006, "US", list(range(16)))  # LUT Data
    (pixels, gray, _), _ = decode(dicom_bytes(stored, bits_stored=10, VOILUTSequence=[lut]))
    assert gray and (pixels[..., 0] == stretched_by_hand(stored)).all()


def voi_lut_by_hand(x: np.ndarray, first: int, entries: np.ndarray, bits: int) -> np.ndarray:
    """PS3.3 C.11.2.1.1 value by value: an input at or below the first value mapped gives the
    first entry, at or above first + N - 1 the last, between them entry (input - first); a
    fraction (a rescale of 0.5) taken down to its integer; the output range 0..2^bits-1 onto 0..255."""
    out, last = np.empty(x.shape), first + len(entries) - 1
    for at, value in np.ndenumerate(x.astype(np.float64)):
        k = math.floor(value)
        y = entries[0] if k <= first else entries[-1] if k >= last else entries[k - first]
        out[at] = round(float(y) * 255 / (2 ** bits - 1))
    return out


VOI_SAMPLES = ["unsigned", "rescaled", "signed", "16-bit", "signed, positive output"]


@pytest.mark.parametrize("encoding", ["US", "OW", "implicit"])
@pytest.mark.parametrize("samples", VOI_SAMPLES)
@pytest.mark.parametrize("seed", range(3))
def test_without_a_window_the_first_voi_lut_maps_the_modality_values(seed, samples, encoding):
    """A VOI LUT Sequence (an X-ray's, a mammogram's): its first LUT maps the Modality LUT's output,
    from its first value mapped (signed where that output may be negative, whether written as US or
    SS) onward; its output range 0..2^bits-1 is shown as 0..255. A window, where the file also holds
    one, is shown instead."""
    pydicom = pytest.importorskip("pydicom")
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng)
    stored, bits_stored, signed = stored[0], 12, samples.startswith("signed")
    if signed:
        stored = stored.astype(np.int16) - 2048
    if samples == "16-bit":
        stored, bits_stored = rng.integers(30000, 65536, size=stored.shape).astype(np.uint16), 16
    slope, intercept = {"unsigned": (1.0, 0.0), "16-bit": (1.0, 0.0), "signed, positive output": (1.0, 40000.0)}.get(
        samples, (slope, intercept))
    x = stored * slope + intercept
    lowest = (-2048 if signed else 0) * slope + intercept  # of the Modality LUT's output, over all stored values
    span = int(x.max() - x.min())
    first = int(rng.integers(x.min() - span // 10, x.min() + span // 3))
    first = first if lowest < 0 else max(first, 0)  # the input is never negative: nor is the first value mapped
    count = int(rng.integers(span // 3, span))
    if samples == "16-bit" and seed == 0 and encoding != "US":  # a full table: 2^16 entries, counted as 0 (as OW:
        # as US, its 128 KiB would not fit an explicit VR element's 16-bit length)
        first, count = 0, 1 << 16
    bits = (8, 12, 16)[(seed + VOI_SAMPLES.index(samples)) % 3]  # each case meets each depth
    entries = rng.integers(0, 2 ** bits, size=count)  # any shape: a LUT may fall as well as rise
    lut = pydicom.dataset.Dataset()
    written = (first + 2 ** 15) % 2 ** 16 - 2 ** 15 if signed else first % 2 ** 16  # pydicom writes SS where signed
    lut.LUTDescriptor = [count % 2 ** 16, written, bits]
    if encoding == "US":
        lut.add_new(0x00283006, "US", [int(e) for e in entries])
    elif encoding == "OW" and bits == 8:  # 8-bit entries packed two a word, as 8 bits allocated store them
        lut.add_new(0x00283006, "OW", entries.astype(np.uint8).tobytes() + b"\0" * (count % 2))
    else:
        lut.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    elements = dict(bits_stored=bits_stored, preamble=encoding != "implicit", RescaleSlope=slope,
                    RescaleIntercept=intercept, VOILUTSequence=[lut])
    expected = voi_lut_by_hand(x, first, entries, bits)
    (pixels, gray, _), notes = decode(dicom_bytes(stored, **elements))
    assert gray and notes == [] and (pixels[..., 0] == expected).all()
    (pixels, _, _), _ = decode(dicom_bytes(stored, "MONOCHROME1", **elements))
    assert (pixels[..., 0] == 255 - expected).all()
    (pixels, _, _), _ = decode(dicom_bytes(stored, **elements, WindowCenter=0, WindowWidth=0))  # no window: the LUT
    assert (pixels[..., 0] == expected).all()
    (pixels, _, _), _ = decode(dicom_bytes(stored, **elements, WindowCenter=100, WindowWidth=400))
    assert (pixels[..., 0] == window_by_hand(x, 100, 400, "LINEAR")).all()


def modality_lut_by_hand(stored: np.ndarray, first: int, entries: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.1.1.1 value by value: a stored value at or below the first value mapped gives the
    first entry, at or above first + N - 1 the last, between them entry (value - first)."""
    out, last = np.empty(stored.shape, np.int64), first + len(entries) - 1
    for at, k in np.ndenumerate(stored.astype(np.int64)):
        out[at] = entries[0] if k <= first else entries[-1] if k >= last else entries[k - first]
    return out


def modality_lut(entries: np.ndarray, first: int, bits: int, layout: str):
    """A Modality LUT Sequence item of `entries`: as US numbers, as OW 16-bit words, or (8-bit
    entries) packed two a word, the first in the low byte, as 8 bits allocated store them."""
    pydicom = pytest.importorskip("pydicom")
    lut = pydicom.dataset.Dataset()
    lut.LUTDescriptor = [len(entries) % 2 ** 16, first, bits]
    lut.ModalityLUTType = "US"  # unspecified units
    if layout == "US":
        lut.add_new(0x00283006, "US", [int(e) for e in entries])
    elif layout == "packed":
        lut.add_new(0x00283006, "OW", entries.astype(np.uint8).tobytes() + b"\0" * (len(entries) % 2))
    else:
        lut.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    return lut


MODALITY_TABLES = ["8-bit US", "8-bit packed", "8-bit words", "16-bit US", "16-bit words"]


@pytest.mark.parametrize("table", MODALITY_TABLES)
@pytest.mark.parametrize("samples", ["unsigned", "signed"])
@pytest.mark.parametrize("seed", range(3))
def test_a_modality_lut_sequence_maps_the_stored_values_and_wins_over_a_rescale(seed, samples, table):
    """A Modality LUT Sequence (a non-linear Modality LUT, PS3.3 C.11.1): the stored values from its
    first value mapped (SS where the samples are signed) onward through its entries, those below
    and past them clamped to its ends; its output is shown as any modality's values are (8-bit
    entries as they are, deeper ones stretched; through a window or a VOI LUT where the file holds
    one). A Rescale Slope and Intercept beside it, which the standard forbids, is not applied."""
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 4096, size=(24, 24)).astype(np.uint16)
    if samples == "signed":
        stored = stored.astype(np.int16) - 2048
    low, span = int(stored.min()), int(np.ptp(stored))
    first = int(rng.integers(low + span // 10, low + span // 4)) or 1  # some values below it
    count = int(rng.integers(span // 3, span // 2))  # and some past its end
    bits = 8 if table.startswith("8") else 16
    entries = rng.integers(0, 2 ** bits, size=count | (table == "8-bit packed"))  # packed: an odd count, padded
    lut = modality_lut(entries, first, bits, table.split()[1])
    y = modality_lut_by_hand(stored, first, entries)
    assert (y == entries[0]).any() and (y == entries[-1]).any()
    shown = y if bits == 8 else stretched_by_hand(y)
    for rescale in ({}, dict(RescaleSlope=2.5, RescaleIntercept=-1024)):
        (pixels, gray, _), notes = decode(dicom_bytes(stored, bits_stored=12, ModalityLUTSequence=[lut], **rescale))
        assert gray and notes == [] and (pixels[..., 0] == shown).all()
    centre, width = float(np.median(y)), float(np.ptp(y)) / 3
    (pixels, _, _), _ = decode(dicom_bytes(stored, bits_stored=12, ModalityLUTSequence=[lut], WindowCenter=centre,
                                           WindowWidth=width))
    assert (pixels[..., 0] == window_by_hand(y, centre, width, "LINEAR")).all()
    voi_first = int(np.median(y))  # the VOI LUT's input: the Modality LUT's output, unsigned (US)
    written = voi_first - 2 ** 16 if samples == "signed" and voi_first >= 2 ** 15 else voi_first  # pydicom writes
    voi = item(LUTDescriptor=[300, written, 12])  # SS where the samples are signed: the same 16 bits
    voi_entries = rng.integers(0, 4096, size=300)
    voi.add_new(0x00283006, "OW", voi_entries.astype("<u2").tobytes())
    (pixels, _, _), _ = decode(dicom_bytes(stored, bits_stored=12, ModalityLUTSequence=[lut], VOILUTSequence=[voi]))
    assert (pixels[..., 0] == voi_lut_by_hand(y, voi_first, voi_entries, 12)).all()


@pytest.mark.parametrize("descriptor", [[16, 0], [16, 0, 8, 1], [16, 0, 0]])
def test_a_modality_lut_with_a_damaged_descriptor_is_left_for_the_rescale(descriptor):
    """A file whose Modality LUT Sequence cannot be read is shown as one without it: through its
    rescale, else its samples stretched; not skipped."""
    stored = np.random.default_rng(4).integers(100, 900, size=(24, 24)).astype(np.uint16)
    lut = item(LUTDescriptor=descriptor)
    lut.add_new(0x00283006, "US", list(range(16)))  # LUT Data
    (pixels, gray, _), _ = decode(dicom_bytes(stored, bits_stored=10, ModalityLUTSequence=[lut]))
    assert gray and (pixels[..., 0] == stretched_by_hand(stored)).all()
    data = dicom_bytes(stored, bits_stored=10, ModalityLUTSequence=[lut], RescaleSlope=1, RescaleIntercept=-500,
                       WindowCenter=0, WindowWidth=300)
    (pixels, _, _), _ = decode(data)
    assert (pixels[..., 0] == window_by_hand(stored - 500.0, 0, 300, "LINEAR")).all()


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("seed", range(3))
def test_signed_samples_keep_their_sign(seed, syntax):
    """Pixel Representation 1, 12 bits stored in 16: -2048..2047, read as such, not as 0..65535."""
    rng = np.random.default_rng(seed)
    signed = rng.integers(-2048, 2048, size=(24, 24)).astype(np.int16)
    (pixels, _, _), _ = decode(dicom_bytes(signed, bits_stored=12, syntax=syntax))
    assert (pixels[..., 0] == stretched_by_hand(signed)).all()
    centre, width = float(rng.integers(-500, 500)), float(rng.integers(50, 1000))
    data = dicom_bytes(signed, bits_stored=12, syntax=syntax, RescaleSlope=1, RescaleIntercept=-24,
                       WindowCenter=centre, WindowWidth=width)
    (pixels, _, _), _ = decode(data)
    assert (pixels[..., 0] == window_by_hand(signed - 24.0, centre, width, "LINEAR")).all()


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("seed", range(3))
def test_monochrome1_is_inverted_so_that_0_is_black(seed, syntax):
    """An X-ray in MONOCHROME1 (low values white) shows as the same picture in MONOCHROME2 does."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 4096, size=(24, 24)).astype(np.uint16)
    (pixels, gray, _), _ = decode(dicom_bytes(samples, "MONOCHROME1", bits_stored=12, syntax=syntax))
    assert gray and (pixels[..., 0] == 255 - stretched_by_hand(samples)).all()
    centre, width = float(rng.integers(1000, 3000)), float(rng.integers(100, 2000))
    data = dicom_bytes(samples, "MONOCHROME1", bits_stored=12, syntax=syntax, WindowCenter=centre, WindowWidth=width)
    (pixels, _, _), _ = decode(data)
    assert (pixels[..., 0] == 255 - window_by_hand(samples, centre, width, "LINEAR")).all()


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("seed", range(3))
def test_of_a_multi_frame_file_the_first_frame_is_used_and_noted(seed, syntax):
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng, frames=3)
    data = dicom_bytes(stored, bits_stored=12, syntax=syntax, RescaleSlope=slope, RescaleIntercept=intercept,
                       WindowCenter=40, WindowWidth=400)
    (pixels, gray, _), notes = decode(data)
    from selfsup.data.dicom import FIRST_FRAME
    assert notes == [FIRST_FRAME] and gray
    assert (pixels[..., 0] == window_by_hand(stored[0] * slope + intercept, 40, 400, "LINEAR")).all()


def item(**elements):
    """A sequence item (a pydicom Dataset) holding `elements`."""
    from pydicom.dataset import Dataset
    entry = Dataset()
    for keyword, value in elements.items():
        setattr(entry, keyword, value)
    return entry


@pytest.mark.parametrize("where", ["shared", "per-frame", "both", "split"])
@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID"])
@pytest.mark.parametrize("seed", range(3))
def test_an_enhanced_multi_frame_file_shows_its_first_frame_through_that_frames_rescale_and_window(
        seed, function, where):
    """An Enhanced CT keeps its rescale and window in functional groups (PS3.3 C.7.6.16): those
    shared by all frames, or each frame's own, which win; the first frame's are the ones used."""
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng, frames=3)
    centre, width = float(rng.integers(-200, 800)), float(rng.integers(50, 2000))

    def groups(slope=None, intercept=None, centre=None, width=None):  # an item of a functional groups sequence
        rescale = item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")
        window = item(WindowCenter=centre, WindowWidth=width, VOILUTFunction=function)
        return item(**({"PixelValueTransformationSequence": [rescale]} if slope is not None else {}),
                    **({"FrameVOILUTSequence": [window]} if centre is not None else {}))

    decoy = groups(3.0, 500.0, -900.0, 10.0)  # another frame's, or overridden: never applied
    shared, first = {"shared": (groups(slope, intercept, centre, width), groups()),
                     "per-frame": (groups(), groups(slope, intercept, centre, width)),
                     "both": (decoy, groups(slope, intercept, centre, width)),
                     "split": (groups(slope, intercept), groups(centre=centre, width=width))}[where]
    data = dicom_bytes(stored, bits_stored=12, SharedFunctionalGroupsSequence=[shared],
                       PerFrameFunctionalGroupsSequence=[first, decoy, decoy])
    (pixels, gray, _), notes = decode(data)
    from selfsup.data.dicom import FIRST_FRAME
    assert notes == [FIRST_FRAME] and gray
    assert (pixels[..., 0] == window_by_hand(stored[0] * slope + intercept, centre, width, function)).all()


@pytest.mark.parametrize("syntax", syntaxes())
@pytest.mark.parametrize("seed", range(3))
def test_colour_dicoms_are_rgb_8_bit_as_they_are_and_deeper_stretched_jointly(seed, syntax):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(24, 24, 3)).astype(np.uint8)
    (pixels, gray, _), notes = decode(dicom_bytes(rgb, "RGB", syntax=syntax))
    assert not gray and notes == [] and (pixels == rgb).all()
    deep = rng.integers(0, 4096, size=(24, 24, 3)).astype(np.uint16)  # e.g. a 12-bit microscope slide
    (pixels, _, _), _ = decode(dicom_bytes(deep, "RGB", bits_stored=12, syntax=syntax))
    assert (pixels == stretched_by_hand(deep)).all()  # one range for the three channels
    from pydicom.pixels import convert_color_space  # an ultrasound's YCbCr: given as RGB
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    (pixels, gray, _), _ = decode(dicom_bytes(ybr, "YBR_FULL", syntax=syntax))
    assert not gray and np.abs(pixels.astype(int) - rgb).max() <= 2


def palette_by_hand(index: np.ndarray, first: int, entries: np.ndarray, bits: int) -> np.ndarray:
    """PS3.3 C.7.6.3.1.5 value by value: an index at or below the first value mapped gives the
    first entry, at or above first + N - 1 the last, between them entry (index - first); the
    entries' range 0..2^bits-1 onto 0..255."""
    out, last = np.empty(index.shape), first + len(entries) - 1
    for at, k in np.ndenumerate(index.astype(np.int64)):
        y = entries[0] if k <= first else entries[-1] if k >= last else entries[k - first]
        out[at] = round(float(y) * 255 / (2 ** bits - 1))
    return out


def palette_elements(rng: np.random.Generator, first: int, count: int, bits: int, layout: str) -> tuple[dict, list]:
    """The red, green and blue Palette Color Lookup Table Descriptors and Data of random tables of
    `count` `bits`-bit entries, as data set elements, and the tables; 8-bit entries packed a byte
    each (`layout` "packed") or in 16-bit words, the high byte 0 ("words"), as PS3.3 allows both."""
    elements, tables = {}, []
    for colour in ("Red", "Green", "Blue"):
        entries = rng.integers(0, 2 ** bits, size=count)
        data = (entries.astype(np.uint8).tobytes() + b"\0" * (count % 2) if layout == "packed" else
                entries.astype("<u2").tobytes())
        elements[f"{colour}PaletteColorLookupTableDescriptor"] = [count % 2 ** 16, first, bits]
        elements[f"{colour}PaletteColorLookupTableData"] = data
        tables.append(entries)
    return elements, tables


@pytest.mark.parametrize("table", ["8-bit packed", "8-bit words", "16-bit"])
@pytest.mark.parametrize("indices", ["8-bit", "12-bit", "signed"])
@pytest.mark.parametrize("seed", range(3))
def test_palette_colour_maps_each_index_through_the_red_green_and_blue_tables(seed, indices, table):
    """PALETTE COLOR (an ultrasound's or a nuclear medicine image's): each stored value is an index
    into three tables; from the first value mapped onward, clamped to the tables' ends; 16-bit
    entries onto 0..255. The tables' lengths need not match the indices' range."""
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(seed)
    top = {"8-bit": 255, "12-bit": 4095, "signed": 2047}[indices]
    index = rng.integers(-2048 if indices == "signed" else 0, top + 1, size=(24, 24))
    index = index.astype({"8-bit": np.uint8, "12-bit": np.uint16, "signed": np.int16}[indices])
    low = int(index.min())
    first = int(rng.integers(low, low + (top - low) // 4)) if seed else (low if indices == "signed" else 0)
    count = int(rng.integers(16, top - first + 64))  # some indices past the end
    count = 1 << 16 if (seed, indices) == (0, "12-bit") else count  # a full table: 2^16 entries, counted as 0
    bits = 16 if table == "16-bit" else 8
    elements, tables = palette_elements(rng, first, count, bits, "packed" if table == "8-bit packed" else "words")
    data = dicom_bytes(index, "PALETTE COLOR", bits_stored=12 if indices != "8-bit" else 8, **elements)
    (pixels, gray, _), notes = decode(data)
    expected = np.stack([palette_by_hand(index, first, entries, bits) for entries in tables], axis=-1)
    assert notes == [] and not gray and pixels.shape == (24, 24, 3)
    assert (pixels == expected).all()


SEGMENTED_RED = [0, 3, 100, 5000, 20000,  # @0 discrete: three entries
                 1, 4, 0,  # @5 linear: from 20000 (the entry before) down to 0 in 4 entries
                 1, 3, 65535,  # @8 linear: up to 65535 in 3
                 1, 4, 0,  # @11 linear: down to 0 in 4, from 65535 now
                 1, 3, 65535,  # @14 linear: up again
                 0, 2, 7, 9]  # @17 discrete
# Expanded by hand, C.7.9.2: a linear segment's k-th entry is y0 + (y1 - y0) k / n, rounded (halves up)
EXPANDED_RED = [100, 5000, 20000, 15000, 10000, 5000, 0, 21845, 43690, 65535,
                49151, 32768, 16384, 0, 21845, 43690, 65535, 7, 9]  # 65535 - 16383.75 k, then 0 up to 65535
SEGMENTED_BLUE = [0, 1, 0, 1, 8, 65535, 0, 1, 0, 1, 8, 65535, 0, 1, 1234]
EXPANDED_BLUE = [0, 8192, 16384, 24576, 32768, 40959, 49151, 57343, 65535,  # 8191.875 k
                 0, 8192, 16384, 24576, 32768, 40959, 49151, 57343, 65535, 1234]


def segmented_palette(red: list[int], green: list[int], blue: list[int], count: int = 19, first: int = 3,
                      bits: int = 16) -> dict:
    """Palette Color Lookup Table Descriptors and Segmented Palette Color Lookup Table Data of 16-bit words."""
    elements = {}
    for colour, words in zip(("Red", "Green", "Blue"), (red, green, blue)):
        elements[f"{colour}PaletteColorLookupTableDescriptor"] = [count, first, bits]
        elements[f"Segmented{colour}PaletteColorLookupTableData"] = np.array(words, "<u2").tobytes()
    return elements


@pytest.mark.parametrize("syntax", [EXPLICIT, BIG_ENDIAN])
@pytest.mark.parametrize("indices", ["8-bit", "12-bit"])
def test_a_segmented_palette_is_expanded_into_its_tables(indices, syntax):
    """Segmented palettes (PS3.3 C.7.9.2, some PET and ultrasound files): discrete and linear
    segments (up and down, from the entry before), expanded into 16-bit tables checked against
    their expansion by hand, then read as any palette is."""
    pytest.importorskip("pydicom")
    index = np.random.default_rng(6).integers(0, 30, size=(24, 24))  # some below the first value mapped, 3,
    index = index.astype(np.uint8 if indices == "8-bit" else np.uint16)  # some past its 19 entries
    green = [0, 19, *EXPANDED_RED[::-1]]  # one discrete segment
    data = dicom_bytes(index, "PALETTE COLOR", bits_stored=8 if indices == "8-bit" else 12, syntax=syntax,
                       **segmented_palette(SEGMENTED_RED, green, SEGMENTED_BLUE))
    (pixels, gray, _), notes = decode(data)
    tables = EXPANDED_RED, EXPANDED_RED[::-1], EXPANDED_BLUE
    expected = np.stack([palette_by_hand(index, 3, np.array(table), 16) for table in tables], axis=-1)
    assert notes == [] and not gray and (pixels == expected).all()


@pytest.mark.parametrize("fault", ["8-bit", "indirect", "linear first", "too few", "too many", "unknown opcode",
                                   "cut short"])
def test_a_segmented_palette_not_read_is_skipped_and_counted(tmp_path, capsys, fault):
    """Segmented data of 8-bit entries (how its segments sit in the OW words is not settled: readers
    disagree), with an indirect segment (its offset is taken in bytes by some readers, in words by
    others) or whose segments do not make the table the descriptor says is not read: such a file is
    skipped, and the warning says why."""
    pytest.importorskip("pydicom")
    from selfsup.data.dicom import SEGMENTED_PALETTE
    index = np.random.default_rng(0).integers(0, 20, size=(24, 24)).astype(np.uint8)
    red, count, bits = list(SEGMENTED_RED), 19, 16
    if fault == "8-bit":
        bits = 8
    elif fault == "indirect":
        red = red[:11] + [2, 2, 10, 0] + red[17:]  # the 2 segments at byte 10 (word 5) again: the same 19
    elif fault == "linear first":
        red = [1, 2, 7] + red
    elif fault == "unknown opcode":
        red[17] = 3
    elif fault == "cut short":
        red = red[:-1]
        count -= 1
    count += {"too few": 1, "too many": -1}.get(fault, 0)
    palette = segmented_palette(red, red, red, count=count, bits=bits)
    data = dicom_bytes(index, "PALETTE COLOR", **palette)
    assert decode(data) == (None, [SEGMENTED_PALETTE])
    scans(tmp_path / "scans", count=1)
    (tmp_path / "scans" / "pet.dcm").write_bytes(data)
    cache = load_cache(open_source(tmp_path / "scans"), 24, show_progress=False)
    assert cache.names == ["slice0.dcm"] and cache.skipped == ["pet.dcm"]
    assert ("1 of them are DICOM files coloured by a segmented palette (e.g. 'pet.dcm') that selfsup does not "
            "read (of 8-bit entries, with indirect segments, or whose segments do not make its table): convert them to "
            "RGB to use them"
            ) in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(3))
def test_a_big_endian_file_shows_as_the_same_samples_little_endian_do(seed):
    """Explicit VR Big Endian (retired, still in old archives): 16-bit samples, signed or not, and
    the OW words of a VOI LUT, a Modality LUT or a palette decode to the display their little-endian
    file has."""
    pydicom = pytest.importorskip("pydicom")
    rng = np.random.default_rng(seed)
    stored, slope, intercept = ct_slices(rng)
    stored, hu = stored[0], stored[0] * slope + intercept
    signed = stored.astype(np.int16) - 2048
    first, bits = int(rng.integers(0, 1000)), 16
    entries = rng.integers(0, 2 ** bits, size=int(rng.integers(500, 4000)))
    lut = pydicom.dataset.Dataset()
    lut.LUTDescriptor = [len(entries), first, bits]
    lut.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    palette, tables = palette_elements(rng, first, len(entries), bits, "words")
    packed, packed_tables = palette_elements(rng, first, len(entries) | 1, 8, "packed")  # an odd count: padded
    rescale = dict(RescaleSlope=slope, RescaleIntercept=intercept)
    cases = [  # ((12-bit samples, photometric interpretation, elements), the display by hand)
        ((stored, "MONOCHROME2", dict(rescale, WindowCenter=40, WindowWidth=400)),
         window_by_hand(hu, 40, 400, "LINEAR")),
        ((stored, "MONOCHROME2", rescale), stretched_by_hand(hu)),
        ((signed, "MONOCHROME2", {}), stretched_by_hand(signed)),
        ((stored, "MONOCHROME2", dict(VOILUTSequence=[lut])), voi_lut_by_hand(stored, first, entries, bits)),
        ((stored, "PALETTE COLOR", palette),
         np.stack([palette_by_hand(stored, first, table, bits) for table in tables], axis=-1)),
        ((stored, "PALETTE COLOR", packed),  # 8-bit entries two a word: the word's bytes swapped in the file
         np.stack([palette_by_hand(stored, first, table, 8) for table in packed_tables], axis=-1)),
        ((stored, "MONOCHROME2", dict(ModalityLUTSequence=[modality_lut(entries, first, bits, "words")])),
         stretched_by_hand(modality_lut_by_hand(stored, first, entries))),
        ((stored, "MONOCHROME2", dict(ModalityLUTSequence=[modality_lut(packed_tables[0], first, 8, "packed")])),
         modality_lut_by_hand(stored, first, packed_tables[0]))]
    for (samples, photometric, elements), expected in cases:
        big, little = (dicom_bytes(samples, photometric, 12, syntax, **elements) for syntax in (BIG_ENDIAN, EXPLICIT))
        assert pydicom.dcmread(io.BytesIO(big)).original_encoding == (False, False)  # explicit VR, big endian
        (pixels, _, _), notes = decode(big)
        assert notes == [] and (pixels == decode(little)[0][0]).all()
        assert (pixels == (expected if expected.ndim == 3 else expected[..., None])).all()


def test_dicoms_are_known_by_content_with_or_without_a_preamble_and_damaged_ones_are_skipped():
    samples = np.random.default_rng(0).integers(0, 4096, size=(24, 24)).astype(np.uint16)
    full = dicom_bytes(samples, bits_stored=12, WindowCenter=2000, WindowWidth=1000)
    bare = dicom_bytes(samples, bits_stored=12, WindowCenter=2000, WindowWidth=1000, preamble=False)
    assert bare[:2] == b"\x08\x00" and b"DICM" not in bare[:200]
    assert (decode(bare)[0][0] == decode(full)[0][0]).all()
    assert decode(full[:len(full) - 100]) == (None, [])  # cut short: damaged, as any image
    assert decode(full[:400]) == (None, [])  # no pixel data
    assert decode(b"\x08\x00\x05\x00" + b"\xff" * 200) == (None, [])  # no data set behind its first bytes
    assert decode(b"\0" * 128 + b"DICM" + b"\xff" * 60) == (None, [])


def without_preamble(data: bytes, meta: bool) -> bytes:
    """The Part 10 file `data` as older software wrote it: without its preamble and "DICM", its file
    meta then its data set (`meta`), or its data set alone in explicit VR little endian."""
    pydicom = pytest.importorskip("pydicom")
    if meta:
        return data[128 + 4:]
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None  # as read, it would be written again
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def test_dicoms_without_a_preamble_are_read_and_files_named_so_that_are_not_are_skipped_saying_why(tmp_path, capsys):
    """Files without the preamble and "DICM" (PS3.10 7.1), as older software wrote them: a data set
    from the first byte, in implicit VR little endian, explicit VR little or big endian, or behind
    its file meta. Named .dcm, or without a suffix, each shows as its Part 10 file does (without
    pydicom, each is counted as a DICOM file to install it for). A file named .dcm that is neither
    DICOM nor an image is skipped and the warning says so; one that only starts as a data set does
    is skipped as damaged; a file without a suffix that is not DICOM is not taken."""
    from selfsup.data.dicom import DICOM_READER
    rng = np.random.default_rng(5)
    stored, slope, intercept = ct_slices(rng)
    elements = dict(bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=40, WindowWidth=400)
    full = dicom_bytes(stored[0], **elements)
    implicit, big = (dicom_bytes(stored[0], syntax=syntax, preamble=False, **elements) for syntax in (EXPLICIT,
                                                                                                      BIG_ENDIAN))
    files = {"implicit.dcm": implicit, "big.dcm": big, "explicit.dcm": without_preamble(full, meta=False),
             "meta.dcm": without_preamble(full, meta=True), "series/IM0001": big, "series/IM0002": implicit}
    assert [data[:2] for data in files.values()] == [b"\x08\x00", b"\x00\x08", b"\x08\x00", b"\x02\x00",
                                                     b"\x00\x08", b"\x08\x00"]
    expected = window_by_hand(stored[0] * slope + intercept, 40, 400, "LINEAR")
    for name, data in files.items():
        (pixels, gray, _), notes = decode(data)
        assert gray and notes == [] and (pixels[..., 0] == expected).all(), name
        with without_pydicom():
            assert decode(data) == (None, [DICOM_READER]), name
    folder = tmp_path / "scans"
    (folder / "series").mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "report.dcm").write_text("Findings: none. " * 20)
    (folder / "noise.dcm").write_bytes(rng.bytes(600))
    (folder / "damaged.dcm").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\xff" * 200)  # a data set's start
    (folder / "series" / "index").write_bytes(b"\x00\x08\x00\x10" + bytes(300))  # a tag, big endian, and no VR
    (folder / "series" / "README").write_text("scans from the CT room")
    source = open_source(folder)
    assert source.names == sorted([*files, "report.dcm", "noise.dcm", "damaged.dcm"])
    cache = load_cache(source, 24, tmp_path / "cache", show_progress=False)
    assert cache.names == sorted(files) and cache.skipped == ["damaged.dcm", "noise.dcm", "report.dcm"]
    assert all((cache.images[k, ..., 0] == cache.images[0, ..., 0]).all() for k in range(len(cache)))
    err = capsys.readouterr().err
    assert ("skipped 3 of 9 files in" in err and "that are not readable images (e.g. 'damaged.dcm'); 2 of them are "
            "named as DICOM files but are not (e.g. 'noise.dcm'): neither 'DICM' at byte 128 nor a data set at their "
            "start; going on with 6") in err


def test_the_gigapixel_bound_is_checked_before_a_frame_is_decoded(monkeypatch):
    pytest.importorskip("pydicom")
    import pydicom.pixels

    from selfsup.data import decode as decode_module
    data = dicom_bytes(np.zeros((40, 40), np.uint16))
    decoded = []
    real = pydicom.pixels.pixel_array
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: decoded.append(1) or real(*a, **k))
    monkeypatch.setattr(decode_module, "LARGEST_IMAGE_PIXELS", 39 * 39)
    assert decode(data) == (None, []) and decoded == []
    monkeypatch.setattr(decode_module, "LARGEST_IMAGE_PIXELS", 40 * 40)
    assert decode(data)[0] is not None and decoded == [1]


@contextlib.contextmanager
def without_pydicom():
    """As on a machine without `selfsup[dicom]`: pydicom cannot be imported."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in sys.modules if n == "pydicom" or n.startswith("pydicom.")]:
            patch.setitem(sys.modules, name, None)
        yield


def scans(folder: Path, count: int = 3, seed: int = 0) -> Path:
    """`count` CT slices with a window, as .dcm files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        stored, slope, intercept = ct_slices(rng)
        (folder / f"slice{k}.dcm").write_bytes(dicom_bytes(
            stored[0], bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=40,
            WindowWidth=400))
    return folder


def test_without_pydicom_dicoms_are_skipped_saying_what_to_install_and_decoded_once_it_is(tmp_path, capsys):
    pytest.importorskip("pydicom")
    scans(tmp_path / "mixed", count=2)
    (tmp_path / "mixed" / "photo.png").write_bytes(png_bytes())
    with without_pydicom():
        cache = load_cache(open_source(tmp_path / "mixed"), 24, show_progress=False)
    assert cache.names == ["photo.png"] and cache.skipped == ["slice0.dcm", "slice1.dcm"]
    err = capsys.readouterr().err
    assert ("skipped 2 of 3 files" in err and "2 of them are DICOM files (e.g. 'slice0.dcm'): pip install "
            "'selfsup[dicom]' (pydicom) to read them" in err)
    cache = load_cache(open_source(tmp_path / "mixed"), 24, show_progress=False)  # installed since
    assert cache.names == ["photo.png", "slice0.dcm", "slice1.dcm"] and cache.skipped == []
    assert "was built without (pydicom, which read DICOM files it skipped); decoding the images again" in \
        capsys.readouterr().err
    load_cache(open_source(tmp_path / "mixed"), 24, show_progress=False)
    assert "decoding the images again" not in capsys.readouterr().err  # once
    scans(tmp_path / "only", count=2)
    with without_pydicom(), pytest.raises(UserError, match=r"^none of the 2 image files in '.*only' could be decoded; "
                                                          r"2 of them are DICOM files: pip install 'selfsup\[dicom\]'"):
        load_cache(open_source(tmp_path / "only"), 24, show_progress=False)


def test_embedding_a_folder_of_dicoms_without_pydicom_says_what_to_install(tmp_path):
    """Embedding streams without a cache (selfsup embed, curate, cluster): when nothing decodes, it
    says what would make the files decode, as a cache's build does."""
    import selfsup
    from selfsup.encoder import load_encoder
    scans(tmp_path / "only", count=2)
    encoder = load_encoder("random:resnet18-half", 16)
    with without_pydicom(), pytest.raises(UserError, match=r"^none of the 2 files in '.*only' could be decoded as "
                                                          r"images; 2 of them are DICOM files: pip install "
                                                          r"'selfsup\[dicom\]'"):
        selfsup.embed_images(encoder, tmp_path / "only", tmp_path / "e.npy", device="cpu", show_progress=False,
                             cache_dir=tmp_path / "cache")
    (tmp_path / "only" / "slice0.dcm").write_bytes(b"not an image")
    (tmp_path / "only" / "slice1.dcm").write_bytes(b"nor this")
    with pytest.raises(UserError, match=r"could be decoded as images; 2 of them are named as DICOM files but are not: "
                                        r"neither 'DICM' at byte 128 nor a data set at their start$"):
        selfsup.embed_images(encoder, tmp_path / "only", tmp_path / "e.npy", device="cpu", show_progress=False,
                             cache_dir=tmp_path / "cache")


def test_dicom_files_are_known_by_content_and_counted_without_pydicom(tmp_path, capsys):
    """Runs where pydicom is not installed: the files need not be written by it to be known."""
    (tmp_path / "scans").mkdir()
    for k in range(2):
        (tmp_path / "scans" / f"s{k}.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)))
    (tmp_path / "scans" / "photo.png").write_bytes(png_bytes())
    with without_pydicom():
        assert len(load_cache(open_source(tmp_path / "scans"), 24, show_progress=False)) == 1
    assert "2 of them are DICOM files (e.g. 's0.dcm'): pip install 'selfsup[dicom]'" in capsys.readouterr().err


def png_bytes() -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encapsulated(syntax: str) -> bytes:
    """A DICOM file whose pixel data claims to be compressed as `syntax` (not decodable: no decoder is asked)."""
    pydicom = pytest.importorskip("pydicom")
    data = dicom_bytes(np.zeros((24, 24), np.uint16))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not decoded \xff\xd9\x00"])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_compression_no_installed_package_decodes_is_skipped_naming_it_and_what_to_install(
        tmp_path, capsys, monkeypatch):
    pytest.importorskip("pydicom")
    from pydicom.pixels.decoders.base import Decoder
    available = Decoder.is_available
    monkeypatch.setattr(Decoder, "is_available", property(lambda d: d.UID != JPEG_LS and available.fget(d)))
    scans(tmp_path / "scans", count=1)
    (tmp_path / "scans" / "ls1.dcm").write_bytes(encapsulated(JPEG_LS))  # as on a machine without a JPEG-LS decoder
    (tmp_path / "scans" / "ls2.dcm").write_bytes(encapsulated(JPEG_LS))
    (tmp_path / "scans" / "video.dcm").write_bytes(encapsulated(MPEG2))  # a syntax pydicom has no decoder for
    cache = load_cache(open_source(tmp_path / "scans"), 24, show_progress=False)
    assert cache.names == ["slice0.dcm"]
    err = capsys.readouterr().err
    assert ("2 of them are DICOM files compressed as JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) "
            "(e.g. 'ls1.dcm'), which no installed package decodes: pip install pylibjpeg pylibjpeg-libjpeg "
            "(or python-gdcm) to read them") in err
    assert ("1 of them are DICOM files compressed as MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100) "
            "(e.g. 'video.dcm'), which no installed package decodes: no package that pydicom uses decodes it") in err
    from selfsup.data import cache as cache_module
    monkeypatch.setattr(cache_module, "dicom_readers", lambda: ["jpeg_ls", "pydicom"])  # a decoder installed since
    load_cache(open_source(tmp_path / "scans"), 24, show_progress=False)
    assert "was built without (jpeg_ls, which read DICOM files it skipped)" in capsys.readouterr().err
    load_cache(open_source(tmp_path / "scans"), 24, show_progress=False)  # still skipped, and not again
    assert "decoding the images again" not in capsys.readouterr().err


@pytest.mark.parametrize("names, keyed", [(["a/1.dcm", "b/2.png"], True), (["series/IM0001"], True),
                                          (["a/1.png", "b/2.jpg"], False)])
def test_the_embeddings_key_names_the_dicom_readers_where_the_pool_may_hold_dicoms(monkeypatch, tmp_path, names,
                                                                                   keyed):
    """Embeddings made without pydicom skipped the DICOM files: not reused once it is installed.
    A pool of JPEGs is not embedded again for it (hours at a million images)."""
    from selfsup.curate import embedding
    from selfsup.data import decode as decode_module
    encoder = SimpleNamespace(key="k", description="d", image_size=16)
    source = SimpleNamespace(path=tmp_path / "scans", fingerprint="f", names=names)
    monkeypatch.setattr(decode_module, "dicom_readers", lambda: [])
    before = embedding.embedding_dir(tmp_path, encoder, source)
    monkeypatch.setattr(decode_module, "dicom_readers", lambda: ["pydicom"])
    assert (embedding.embedding_dir(tmp_path, encoder, source) != before) == keyed


def test_suffix_of_is_the_suffix_pathlib_gives():
    """The keys of a pool look at every name (a million): suffix_of skips building paths, and must
    say what PurePosixPath(name).suffix says of any name a listing gives (no empty or '.' parts)."""
    from pathlib import PurePosixPath
    from selfsup.data.sources import suffix_of
    rng = np.random.default_rng(0)
    parts = ["a", "IM0001", "..", ".hidden", "x.JPG", "1.2.840.10008.5", "tar.gz", "dir.d", "b.", "dcm", ".x.y"]
    names = ["/".join(rng.choice(parts, size=int(rng.integers(1, 4)))) for _ in range(2000)]
    names += ["x.dcm", "d/.dcm", "d.v2/IM1", "scan.DICOM", "a/b/c.tif", "trailing.", "a..b"]
    assert [suffix_of(n) for n in names] == [PurePosixPath(n).suffix for n in names]


@pytest.mark.parametrize("names, keyed", [(["a/1.dcm", "b/2.png"], True), (["series/IM0001"], True),
                                          (["a/1.png", "b/2.jpg"], False)])
def test_a_new_dicom_display_decodes_again_only_the_pools_that_may_hold_dicoms(monkeypatch, tmp_path, names, keyed):
    """When a DICOM file's display changes (DICOM_DISPLAY), caches and embeddings of pools that may
    hold DICOM files are made again; a pool of JPEGs keeps its cache and its embeddings."""
    from selfsup.curate import embedding
    from selfsup.data import cache as cache_module, decode as decode_module
    encoder = SimpleNamespace(key="k", description="d", image_size=16)
    source = SimpleNamespace(path=tmp_path / "scans", fingerprint="f", names=names, split=None)
    before = embedding.embedding_dir(tmp_path, encoder, source), cache_module._cache_key(source, 16)
    monkeypatch.setattr(decode_module, "DICOM_DISPLAY", decode_module.DICOM_DISPLAY + 1)
    after = embedding.embedding_dir(tmp_path, encoder, source), cache_module._cache_key(source, 16)
    assert [a != b for a, b in zip(after, before)] == [keyed, keyed]


def test_bands_do_not_apply_to_dicoms_and_say_so(tmp_path, capsys):
    pytest.importorskip("tifffile")
    cache = load_cache(open_source(scans(tmp_path / "scans")), 24, show_progress=False, bands=(1, 2, 3))
    assert len(cache) == 3
    assert "none of the 3 files in" in capsys.readouterr().err


def test_a_folder_of_scans_is_cached_and_pretrained_on_with_its_multi_frame_files_counted(tmp_path, capsys):
    scans(tmp_path / "scans" / "ct", count=6)
    stored = np.random.default_rng(9).integers(0, 4096, size=(3, 24, 24)).astype(np.uint16)
    (tmp_path / "scans" / "xray").mkdir()
    for k in range(6):
        (tmp_path / "scans" / "xray" / f"cine{k}.DICOM").write_bytes(
            dicom_bytes(stored, "MONOCHROME1", bits_stored=12))
    cache = open_images(tmp_path / "scans", 16, show_progress=False)
    assert len(cache) == 12 and cache.grayscale == 12 and cache.classes == ["ct", "xray"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and ("6 of 12 files in" in err and "are multi-frame DICOM files (e.g. "
                                           "'xray/cine0.DICOM'" in err and "only the first frame is used" in err)
    from selfsup.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["pretrain", "--method", "simclr", "--data", str(tmp_path / "scans"),
                     "--out", str(tmp_path / "run"), "--backbone", "resnet18", "--no-small-stem", "--epochs", "1", "--batch-size", "4",
                     "--image-size", "16", "--device", "cpu", "--no-progress", "--json"])
    assert code == 0 and Path(json.loads(out.getvalue())["checkpoint"]).is_file()


def test_dicom_files_without_a_suffix_are_found_by_their_mark(tmp_path):
    """Scanners and PACS exports name files IM0001 or by UID (1.2.840...): found by the "DICM" at
    byte 128, and nothing else without a suffix (a README, DICOMDIR, a hidden file) is taken."""
    folder = tmp_path / "export"
    (folder / "series1").mkdir(parents=True)
    stored = np.random.default_rng(0).integers(0, 4096, size=(20, 20)).astype(np.uint16)
    for name in ("IM0001", "IM0002", "1.2.840.113619.2.55.3.7"):
        (folder / "series1" / name).write_bytes(dicom_bytes(stored, bits_stored=12))
    (folder / "DICOMDIR").write_bytes(dicom_bytes(stored, bits_stored=12))  # an index: no picture to take
    (folder / "README").write_text("scans from the CT room")
    (folder / ".DS_Store").write_bytes(b"\0" * 200)
    (folder / "series1" / "notes.2").write_text("x" * 200)
    source = open_source(folder)
    assert source.names == ["series1/1.2.840.113619.2.55.3.7", "series1/IM0001", "series1/IM0002"]
    cache = load_cache(source, 16, tmp_path / "cache", show_progress=False)
    assert len(cache) == 3 and cache.skipped == []
    from selfsup.data.sources import open_file_or_source
    assert open_file_or_source(folder / "series1" / "IM0001").names == ["IM0001"]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_dicom_files_without_a_suffix_in_a_tar_are_found_by_their_mark_in_the_one_listing_pass(
        tmp_path, monkeypatch, suffix):
    """In a tar as in a folder: the first bytes of each member without a suffix are looked at while
    the archive is listed (no second pass), and the same files give the same names and pixels."""
    import tarfile

    import selfsup.data.sources as sources_module
    from selfsup.data.decode import dicom_display_key

    folder = tmp_path / "export"
    (folder / "series1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("IM0001", "1.2.840.113619.2.55.3.7", "slice.dcm"):
        stored = rng.integers(0, 4096, size=(20, 20)).astype(np.uint16)
        (folder / "series1" / name).write_bytes(dicom_bytes(stored, bits_stored=12))
    (folder / "series1" / "IM0002").write_bytes(without_preamble(dicom_bytes(stored, bits_stored=12), meta=False))
    (folder / "DICOMDIR").write_bytes(dicom_bytes(stored, bits_stored=12))  # an index: no picture to take
    (folder / ".IM0003").write_bytes(dicom_bytes(stored, bits_stored=12))  # hidden
    (folder / "README").write_text("scans from the CT room " * 20)
    (folder / "photo.png").write_bytes(png_bytes())
    tar = tmp_path / f"export{suffix}"
    with tarfile.open(tar, "w:gz" if suffix == ".tar.gz" else "w") as archive:
        archive.add(folder, arcname="export")
    opened = []
    open_tar = sources_module._open_tar
    monkeypatch.setattr(sources_module, "_open_tar", lambda path: opened.append(path) or open_tar(path))
    from_tar = open_source(tar)
    assert len(opened) == 1  # listed, the DICOM marks looked at, in one pass
    from_folder = open_source(folder)
    assert from_tar.names == from_folder.names == [
        "photo.png", "series1/1.2.840.113619.2.55.3.7", "series1/IM0001", "series1/IM0002", "series1/slice.dcm"]
    assert dicom_display_key(from_tar.names) == dicom_display_key(from_folder.names) != ""
    cache = load_cache(from_tar, 16, tmp_path / "cache-tar", show_progress=False)
    direct = load_cache(from_folder, 16, tmp_path / "cache-folder", show_progress=False)
    assert cache.names == direct.names == from_folder.names and cache.skipped == direct.skipped == []
    np.testing.assert_array_equal(np.asarray(cache.images), np.asarray(direct.images))
    assert len(opened) == 2  # and read in one more


def test_links_without_a_suffix_in_a_tar_are_images_where_what_they_read_is_dicom_as_in_a_folder(tmp_path):
    """A link's own name has no suffix: in a folder it is an image where the file it reads is DICOM
    by content, whatever that file's name (.dcm, hidden); a tar, listed in one pass, looks into the
    members such a link may read, before or after it in the archive, and lists the same names."""
    import os
    import tarfile

    series = tmp_path / "series1"
    series.mkdir()
    stored = np.random.default_rng(0).integers(0, 4096, size=(20, 20)).astype(np.uint16)
    (series / "slice.dcm").write_bytes(dicom_bytes(stored, bits_stored=12))
    (series / "bad.dcm").write_text("not a scan " * 20)  # named as DICOM: listed, and skipped when decoded
    (series / ".IM0003").write_bytes(dicom_bytes(stored, bits_stored=12))  # hidden, but a link to it is not
    (series / "IM0001").symlink_to("slice.dcm")  # archived before the member it reads
    (series / "IM0002").symlink_to("bad.dcm")
    (series / "IM0004").symlink_to(".IM0003")
    os.link(series / "slice.dcm", series / "zz0001")  # a hard link, archived after slice.dcm
    tar = tmp_path / "series1.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        archive.add(series, arcname="series1")
    with tarfile.open(tar) as archive:  # the layout meant: links before and after their targets
        kinds = {member.name.rpartition("/")[2]: member.type for member in archive.getmembers()}
    assert kinds["IM0001"] == tarfile.SYMTYPE and kinds["zz0001"] == tarfile.LNKTYPE
    from_tar, from_folder = open_source(tar), open_source(series)
    assert from_tar.names == from_folder.names == ["IM0001", "IM0004", "bad.dcm", "slice.dcm", "zz0001"]
    cache = load_cache(from_tar, 16, tmp_path / "cache-tar", show_progress=False)
    direct = load_cache(from_folder, 16, tmp_path / "cache-folder", show_progress=False)
    assert cache.skipped == direct.skipped == ["bad.dcm"]
    assert sorted(cache.names) == direct.names  # a tar's cache: in archive order, a link at what it reads
    for name in direct.names:
        np.testing.assert_array_equal(cache.images[cache.names.index(name)], direct.images[direct.names.index(name)])


def test_an_image_that_starts_as_a_bare_data_set_is_still_read_by_pillow():
    """A TGA with an 8-byte ID field starts 08 00 ..: a bare DICOM data set by its first bytes,
    which pydicom cannot read; it is an image all the same."""
    from PIL import Image

    from selfsup.data.decode import decode_image
    from selfsup.data.dicom import is_dicom

    pixels = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TGA", id_section=b"12345678")
    assert is_dicom(buffer.getvalue())
    out, gray, side = decode_image(buffer.getvalue(), 20)
    np.testing.assert_array_equal(out, pixels)
    assert not gray and side == 20


def test_a_pipe_without_a_suffix_is_not_opened_to_look_for_a_dicom_mark(tmp_path):
    import os
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    os.mkfifo(folder / "pipe")  # opening it to read would wait for a writer for ever
    assert open_source(tmp_path).names == ["series/IM0001"]


def test_without_pydicom_an_image_that_starts_as_a_bare_data_set_is_still_read(monkeypatch):
    from PIL import Image

    from selfsup.data.decode import decode_noting

    monkeypatch.setitem(sys.modules, "pydicom", None)
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (10, 20, 30)).save(buffer, format="TGA", id_section=b"12345678")
    (out, _, _), notes = decode_noting(buffer.getvalue(), 12)
    assert notes == [] and tuple(out[0, 0]) == (10, 20, 30)
