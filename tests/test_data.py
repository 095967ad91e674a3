"""Data: discovery in folders and tars, the uint8 cache, corrupt files, batch order."""
import io
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import BatchStream, decode_image, epoch_order, load_cache, open_source, open_splits
from selfsup.errors import UserError

from conftest import CLASSES, SAMPLE, jpeg_bytes, make_tar, shape_image, write_dataset


def test_folder_is_searched_recursively_and_non_images_are_ignored(labelled_folder):
    (labelled_folder / "circle" / "notes.txt").write_text("not an image")
    (labelled_folder / "circle" / "deeper").mkdir()
    Image.fromarray(shape_image("circle", np.random.default_rng(0))).save(labelled_folder / "circle/deeper/x.webp")
    (labelled_folder / ".hidden").mkdir()
    Image.fromarray(shape_image("circle", np.random.default_rng(0))).save(labelled_folder / ".hidden/y.png")
    source = open_source(labelled_folder)
    assert len(source.names) == 3 * 12 + 1
    assert source.classes == CLASSES
    assert "circle/deeper/x.webp" in source.names
    assert source.labels.count(0) == 13


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")])
def test_tars_give_the_same_images_as_the_folder(labelled_folder, tmp_path, mode, suffix):
    tar = make_tar(labelled_folder, tmp_path / f"data{suffix}", mode, prefix="top/")
    from_tar = load_cache(open_source(tar), 16, show_progress=False)
    from_folder = load_cache(open_source(labelled_folder), 16, show_progress=False)
    assert sorted(from_tar.names) == from_folder.names
    order = [from_tar.names.index(n) for n in from_folder.names]
    np.testing.assert_array_equal(from_tar.images[order], from_folder.images)
    np.testing.assert_array_equal(from_tar.labels[order], from_folder.labels)


def test_dataset_roots_with_splits_give_train_unless_asked(split_folder, tmp_path):
    train = open_source(split_folder)
    assert train.split == "train" and len(train.names) == 48 and train.classes == CLASSES
    assert open_source(split_folder, split="test").names[0].startswith("circle/")
    assert set(open_splits(split_folder)) == {"train", "test"}
    assert len(open_source(split_folder, whole=True).names) == 48 + 18
    tar = make_tar(split_folder, tmp_path / "ds.tar")
    assert len(open_source(tar, split="test").names) == 18


def test_shipped_sample_has_train_and_test_splits():
    splits = open_splits(SAMPLE)
    assert len(splits["train"].names) == 5000 and len(splits["test"].names) == 1000
    assert len(splits["train"].classes) == 10


def test_decode_resizes_shorter_side_and_centre_crops():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # a white band in the middle third horizontally
    out, gray, _ = decode_image(jpeg_bytes(img, 95), 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert gray  # black and white, though stored as RGB
    assert out[:, 5:15].mean() > 240  # the centre crop keeps the middle of the wide image
    img[:, 30:50, 1:] = 60  # the middle of the band red: a colour image
    assert not decode_image(jpeg_bytes(img, 95), 20)[1]
    out, gray, _ = decode_image(png_bytes(Image.fromarray(np.full((10, 10), 7, np.uint8))), 10)
    assert gray and (out == 7).all()


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def stretched(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """By hand, in float64: `values` from the 0.05th to the 99.95th percentile of those of the
    pixels `where` is true (all when None) onto 0..255."""
    considered = values if where is None else values[where]
    low, high = np.percentile(considered[np.isfinite(considered)], (0.05, 99.95))
    return np.round((np.clip(values, low, high) - low) * (255 / (high - low)))


@pytest.mark.parametrize("seed", range(3))
def test_images_deeper_than_8_bits_are_stretched_between_percentiles_of_their_values(seed, tmp_path):
    rng = np.random.default_rng(seed)
    low, high = sorted(rng.integers(0, 65536, size=2))  # 12-bit data, or any range of a 16-bit one
    deep = rng.integers(low, high + 1, size=(12, 12)).astype(np.uint16)
    out, gray, _ = decode_image(png_bytes(Image.fromarray(deep)), 12)
    assert gray and (out == stretched(deep.astype(np.float64))[..., None]).all()
    floats = (rng.normal(size=(12, 12)) * 1e3).astype(np.float32)  # a float TIFF, e.g. a microscope's
    Image.fromarray(floats).save(tmp_path / "f.tif")
    out, _, _ = decode_image((tmp_path / "f.tif").read_bytes(), 12)
    assert np.abs(out[..., 0].astype(int) - stretched(floats.astype(np.float64))).max() <= 1
    assert out.min() == 0 and out.max() == 255
    floats[0, :3] = (np.inf, -np.inf, np.nan)  # a sensor's saturated and missing pixels
    Image.fromarray(floats).save(tmp_path / "g.tif")
    out, _, _ = decode_image((tmp_path / "g.tif").read_bytes(), 12)
    assert np.abs(out[1:, :, 0].astype(int) - stretched(floats.astype(np.float64))[1:]).max() <= 1
    assert out[0, :3, 0].tolist() == [255, 0, 0]  # +inf at the top, -inf and NaN at the bottom
    flat = decode_image(png_bytes(Image.fromarray(np.full((12, 12), 4000, np.uint16))), 12)[0]
    assert (flat == 0).all()  # no range to stretch: black, not a division by zero


def test_a_hot_pixel_does_not_leave_a_deep_image_black_nor_are_sparse_bright_cells_all_saturated():
    rng = np.random.default_rng(0)
    field = rng.normal(300, 20, size=(100, 100))
    field[40:43, 40:43] = np.linspace(500, 600, 9).reshape(3, 3)  # dim 12-bit cells over 0.09 %
    field[5, 5] = 4095  # one hot pixel, saturated
    out = decode_image(png_bytes(Image.fromarray(field.round().astype(np.uint16))), 100)[0][..., 0]
    assert np.median(out) > 40  # min-to-max: about 5 of 255
    assert out[5, 5] == 255 and (out[40:43, 40:43] < 255).sum() >= 4  # the cells' dimmer half keeps its shades
    sparse = np.zeros((100, 100), np.uint16)
    sparse[50, 50:52] = 3000  # a signal on 0.02 % of an even field: the range from minimum to maximum
    assert decode_image(png_bytes(Image.fromarray(sparse)), 100)[0][50, 50, 0] == 255


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of (H, W, C) samples (Pillow writes none with more than one channel)."""
    height, width, channels = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 16, {2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def tiff16(samples: np.ndarray, photometric: int = 2, extra: tuple = (), deflate: bool = False,
           order: str = "<") -> bytes:
    """A one-strip 16-bit TIFF of (H, W, C) samples: RGB (photometric 2) or minisblack (1), with
    `extra` samples (0: unspecified), deflated (which Pillow decodes with libtiff) or not."""
    height, width, channels = samples.shape
    data = samples.astype(order + "u2").tobytes()
    data = zlib.compress(data) if deflate else data
    tags = {256: [width], 257: [height], 258: [16] * channels, 259: [8 if deflate else 1],
            262: [photometric], 273: [0], 277: [channels], 278: [height], 279: [len(data)], 284: [1],
            **({338: list(extra)} if extra else {})}
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    values = b"".join(struct.pack(f"{order}{len(v)}H", *v) for v in tags.values() if len(v) > 2)
    tags[273] = [ifd_end + len(values)]  # the strip follows the values that do not fit an entry
    entries, offset = b"", ifd_end
    for tag, v in sorted(tags.items()):
        kind = 4 if tag in (256, 257, 273, 278, 279) else 3
        if len(v) > 2:
            entries += struct.pack(f"{order}HHII", tag, 3, len(v), offset)
            offset += 2 * len(v)
        else:
            entries += struct.pack(f"{order}HHI", tag, kind, len(v))
            entries += struct.pack(f"{order}I" if kind == 4 else f"{order}{len(v)}H", *v).ljust(4, b"\0")
    magic = b"II*\0" if order == "<" else b"MM\0*"
    return (magic + struct.pack(f"{order}IH", 8, len(tags)) + entries + b"\0" * 4
            + values + data)


def field_tile(rng, height: int = 16, width: int = 16, bands: int = 3) -> np.ndarray:
    """12-bit samples of a satellite tile: a green field above, brown soil below."""
    tile = np.where(np.arange(height)[:, None, None] < height // 2, [600, 1800, 600, 3600][:bands],
                    [2200, 1600, 1000, 1200][:bands])
    return (tile * np.broadcast_to(1, (height, width, 1)) + rng.integers(0, 200, (height, width, bands)))


@pytest.mark.parametrize("kind", ["png", "tiff", "tiff with an extra band", "deflated tiff", "big-endian tiff"])
def test_16_bit_colour_images_are_decoded_in_full_and_stretched_jointly(kind):
    """Pillow opens 16-bit RGB as 8-bit RGB, keeping each sample's top byte: 12-bit data came out
    with values up to 15 (nearly black). All 16 bits are read, and the three channels stretched
    together, so that a field's colour keeps its balance."""
    tile = field_tile(np.random.default_rng(1), bands=4 if "extra" in kind else 3)
    data = {"png": lambda: png16(tile), "tiff": lambda: tiff16(tile),
            "tiff with an extra band": lambda: tiff16(tile, extra=(0,)),
            "deflated tiff": lambda: tiff16(tile, deflate=True),
            "big-endian tiff": lambda: tiff16(tile, order=">")}[kind]()
    out, gray, side = decode_image(data, 16)
    assert not gray and side == 16
    np.testing.assert_array_equal(out, stretched(tile[..., :3].astype(np.float64)))
    gray_tile = np.repeat(tile[..., :1], 3, axis=2)
    assert decode_image(png16(gray_tile), 16)[1]  # gray stays gray: one stretch for all channels


def test_what_lies_under_transparent_pixels_does_not_set_a_16_bit_stretch():
    """The percentiles were taken over every pixel: the same visible product came out bright or
    black by the colour hidden under its transparent half."""
    tile = field_tile(np.random.default_rng(2), bands=3)
    alpha = np.zeros(tile.shape[:2] + (1,), np.uint16)
    alpha[:, :8] = 65535  # the left half is seen, the right half transparent
    outs = []
    for hidden in (0, 65535):
        pixels = tile.copy()
        pixels[:, 8:] = hidden
        outs.append(decode_image(png16(np.concatenate([pixels, alpha], axis=2)), 16)[0])
    assert (outs[0][:, :8] == outs[1][:, :8]).all()
    np.testing.assert_array_equal(outs[0][:, :8], stretched(tile[:, :8].astype(np.float64)))


def test_a_fully_transparent_16_bit_image_is_white_not_skipped():
    """Nothing is seen, so nothing sets the stretch: no percentile of no pixels (an IndexError,
    which skipped the file as undecodable), but the background everywhere."""
    from selfsup.data.stretch import stretch_integers
    hidden = np.concatenate([field_tile(np.random.default_rng(2)), np.zeros((16, 16, 1), np.int64)], axis=2)
    decoded = decode_image(png16(hidden), 16)
    assert decoded is not None and (decoded[0] == 255).all() and decoded[1]
    assert (stretch_integers(np.full((2, 2, 3), 5, np.uint16), np.zeros((2, 2), bool)) == 0).all()


def test_16_bit_samples_pillow_reads_in_part_are_stretched_and_counted_in_a_warning(tmp_path, capsys):
    from selfsup.data.decode import TOP_BYTE, decode_noting
    gray_alpha = np.stack([field_tile(np.random.default_rng(2))[..., 0], np.full((16, 16), 65535)], axis=2)
    (decoded, notes) = decode_noting(png16(gray_alpha), 16)  # gray with alpha: top bytes only
    top = (gray_alpha[..., 0] >> 8).astype(np.float64)
    assert notes == [TOP_BYTE] and (decoded[0][..., 0] == stretched(top)).all() and decoded[0].max() == 255
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "a.png").write_bytes(png16(gray_alpha))
    (tmp_path / "tiles" / "b.png").write_bytes(png16(field_tile(np.random.default_rng(3))))
    load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "1 of 2 files" in err and "the top 8 bits only (e.g. 'a.png'" in err


def test_transparent_pixels_are_composited_over_white_whatever_colour_lies_under_them():
    rng = np.random.default_rng(0)
    product = np.zeros((16, 16, 4), np.uint8)
    product[4:12, 4:12] = [200, 30, 30, 255]
    product[6, 6, 3] = 128  # a half-transparent edge
    noisy = product.copy()
    noisy[..., :3] = np.where(product[..., 3:] == 0, rng.integers(0, 256, (16, 16, 3)), product[..., :3])
    buffer = io.BytesIO()
    Image.fromarray(noisy, "RGBA").save(buffer, format="WEBP", lossless=True)
    outs = [decode_image(png_bytes(Image.fromarray(product, "RGBA")), 16)[0],
            decode_image(png_bytes(Image.fromarray(noisy, "RGBA")), 16)[0], decode_image(buffer.getvalue(), 16)[0]]
    for out in outs:
        assert (out[0, 0] == 255).all() and (out[8, 8] == [200, 30, 30]).all()
        assert np.abs(out[6, 6].astype(int) - [228, 143, 143]).max() <= 1  # half red, half white
    palette = Image.fromarray(product[..., :3]).quantize(4)
    hidden = palette.getpixel((0, 0))
    colours = palette.getpalette()
    colours[hidden * 3: hidden * 3 + 3] = [255, 0, 255]  # a magenta under the transparent index
    palette.putpalette(colours)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=hidden)
    out = decode_image(buffer.getvalue(), 16)[0]
    assert (out[0, 0] == 255).all() and (out[8, 8] == [200, 30, 30]).all()
    gray_alpha = Image.fromarray(np.stack([np.full((16, 16), 90, np.uint8), product[..., 3]], axis=2), "LA")
    out, gray, _ = decode_image(png_bytes(gray_alpha), 16)
    assert gray and (out[0, 0] == 255).all() and (out[8, 8] == 90).all()


def test_multi_page_tiffs_use_their_first_page_and_are_counted_in_a_warning(tmp_path, capsys):
    (tmp_path / "stacks").mkdir()
    pages = [Image.fromarray(np.full((16, 16), 40 * k, np.uint8)) for k in range(1, 4)]
    pages[0].save(tmp_path / "stacks" / "z.tif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "stacks" / "one.tif")
    cache = load_cache(open_source(tmp_path / "stacks"), 16, show_progress=False)
    assert len(cache) == 2 and (cache.images[cache.names.index("z.tif")] == 40).all()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "1 of 2 files" in err and "multi-page TIFFs (e.g. 'z.tif')" in err


@contextmanager
def without_tiff_readers():
    """As on a machine without `selfsup[tiff]`: tifffile and imagecodecs cannot be imported."""
    import sys
    with pytest.MonkeyPatch.context() as patch:
        for name in ("tifffile", "imagecodecs"):
            patch.setitem(sys.modules, name, None)
        yield


def test_tiffs_pillow_cannot_decode_are_told_apart_from_damaged_files_without_tifffile(tmp_path, capsys):
    pytest.importorskip("tifffile")  # the second half reads them
    pytest.importorskip("imagecodecs")
    (tmp_path / "tiles").mkdir()
    gdal = tiff16(field_tile(np.random.default_rng(4), bands=4), photometric=1, extra=(0, 0, 0))
    (tmp_path / "tiles" / "gdal.tif").write_bytes(gdal)  # 4 bands of 16 bits, minisblack: GDAL's default
    (tmp_path / "tiles" / "cut.tif").write_bytes(gdal[:20])
    (tmp_path / "tiles" / "good.tif").write_bytes(tiff16(field_tile(np.random.default_rng(5))))
    with without_tiff_readers():
        cache = load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    assert cache.names == ["good.tif"] and sorted(cache.skipped) == ["cut.tif", "gdal.tif"]
    err = capsys.readouterr().err
    assert "skipped 2 of 3 files" in err and "1 of them are valid TIFFs in a layout Pillow cannot decode" in err
    assert "'gdal.tif'" in err and "pip install 'selfsup[tiff]'" in err
    # Installed since: the cache that skipped them is decoded again, and reads them.
    cache = load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    assert cache.names == ["gdal.tif", "good.tif"] and cache.skipped == ["cut.tif"]
    err = capsys.readouterr().err
    assert ("was built without (imagecodecs and tifffile, which read TIFFs it skipped or read in part); decoding "
            "the images again") in err
    load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    assert "decoding the images again" not in capsys.readouterr().err  # once


def tifffile_bytes(array: np.ndarray, **options) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("layout", ["gdal, 4 bands", "planar, 5 bands", "channel pages", "z-stack of channels",
                                    "float, 6 bands", "one band of int32", "lzw, 4 bands"])
def test_tiffs_pillow_cannot_decode_are_read_by_tifffile_from_their_first_three_bands(layout, seed):
    """A GDAL tile (bands as samples of a pixel), a planar one (a plane per band), a microscope's
    stack (a page per channel, and per z-slice): the first three bands of the first plane, as red,
    green and blue, stretched together, as by hand from the array."""
    pytest.importorskip("tifffile")
    rng = np.random.default_rng(seed)
    tile = field_tile(rng, 16, 20, bands=4).astype(np.uint16)
    bands = np.concatenate([tile, rng.integers(0, 4096, (16, 20, 2))], axis=2).astype(np.uint16)  # 6 bands
    data, first = {
        "gdal, 4 bands": lambda: (tiff16(tile, photometric=1, extra=(0, 0, 0)), tile),
        "planar, 5 bands": lambda: (tifffile_bytes(np.moveaxis(bands[..., :5], 2, 0), photometric="minisblack",
                                                   planarconfig="separate"), bands),
        "channel pages": lambda: (tifffile_bytes(np.moveaxis(bands[..., :4], 2, 0), imagej=True,
                                                 metadata={"axes": "CYX"}), bands),
        "z-stack of channels": lambda: (tifffile_bytes(np.stack([np.moveaxis(bands[..., :4], 2, 0),
                                                                 np.moveaxis(bands[..., 2:], 2, 0)]),
                                                       imagej=True, metadata={"axes": "ZCYX"}), bands),
        "float, 6 bands": lambda: (tifffile_bytes((bands / 7.0).astype(np.float32), photometric="minisblack",
                                                  planarconfig="contig"), bands / 7.0),
        "one band of int32": lambda: (tifffile_bytes(bands[..., :1].astype(np.int32) - 2000),
                                      bands[..., :1].astype(np.int64) - 2000),
        "lzw, 4 bands": lambda: (tifffile_bytes(tile, photometric="minisblack", planarconfig="contig",
                                                compression="lzw"), tile),
    }[layout]()
    from selfsup.data.decode import decode_noting
    from selfsup.data.tiff import FIRST_BANDS, FIRST_PAGE
    (out, gray, side), notes = decode_noting(data, 16)
    expected = stretched(np.asarray(first, np.float64)[..., :3])
    expected = np.repeat(expected, 3, axis=2) if expected.shape[2] == 1 else expected
    np.testing.assert_array_equal(out, expected[:, 2:18])  # the centre square of 16 x 20
    assert side == 16 and gray == (layout == "one band of int32")
    assert notes == ([] if layout == "one band of int32" else [FIRST_BANDS]) + ([FIRST_PAGE] if "z-stack" in layout else [])


NODATA_LAYOUTS = {  # dtype, bands, the GDAL_NODATA text, options: read by Pillow unless tifffile is named
    "16-bit gray": (np.uint16, 1, "65535", {}),
    "int16 elevation": (np.int16, 1, "-32768", {}),
    "float elevation": (np.float32, 1, "-9999", {}),
    "8-bit RGB": (np.uint8, 3, "255", {"photometric": "rgb"}),
    "16-bit RGB": (np.uint16, 3, "0", {"photometric": "rgb"}),
    "16-bit, 4 bands (tifffile)": (np.uint16, 4, "0", {"photometric": "minisblack", "planarconfig": "contig"}),
    "float, 5 planes (tifffile)": (np.float32, 5, "-3.4028234663852886e+38", {"photometric": "minisblack",
                                                                             "planarconfig": "separate"}),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("layout", NODATA_LAYOUTS)
def test_gdal_nodata_pixels_are_black_and_left_out_of_the_stretch(layout, seed):
    """A tile's corner beyond the scene's edge holds GDAL_NODATA (-9999 in a DEM, 65535 or 0 in
    16-bit bands): counted in the percentiles, it would leave the scene one flat shade. By hand, in
    float64: the scene's pixels stretched between its own percentiles, the rest black."""
    pytest.importorskip("tifffile")
    dtype, bands, nodata, options = NODATA_LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    height, width = 18, 24
    low = {np.uint8: 1, np.uint16: 1, np.int16: -400, np.float32: -50.0}[dtype]
    scene = rng.uniform(low, low + rng.uniform(100, 4000 if dtype != np.uint8 else 250), (height, width, bands))
    scene = scene.astype(dtype) if dtype == np.float32 else scene.round().astype(dtype)
    rows, columns = np.indices((height, width))
    inside = rows + columns >= rng.integers(4, 14)  # the scene's edge crosses the tile's corner
    samples = np.where(inside[..., None], scene, np.array(float(nodata)).astype(dtype))
    array = samples[..., 0] if bands == 1 else np.moveaxis(samples, 2, 0) if "planes" in layout else samples
    data = tifffile_bytes(array, extratags=[(42113, "s", 0, nodata, True)], **options)
    if "tifffile" not in layout:  # the path this layout is meant to take
        Image.open(io.BytesIO(data)).load()
    out, _, _ = decode_image(data, height)
    first = samples[..., :3] if bands >= 3 else samples[..., :1]
    expected = first.astype(np.float64) if dtype == np.uint8 else stretched(first.astype(np.float64), inside)
    expected = np.where(inside[..., None], expected, 0)
    expected = np.repeat(expected, 3, axis=2) if expected.shape[2] == 1 else expected
    left = (width - height) // 2
    np.testing.assert_allclose(out, expected[:, left:left + height], atol=1 if dtype == np.float32 else 0)
    assert out.max() == 255 or dtype == np.uint8  # the scene spans the whole range


def test_a_gdal_nodata_value_no_pixel_holds_or_no_sample_can_hold_changes_nothing():
    pytest.importorskip("tifffile")
    samples = np.random.default_rng(0).integers(100, 3000, (12, 12)).astype(np.uint16)
    plain = decode_image(tifffile_bytes(samples), 12)[0]
    for nodata in ("7", "-1", "70000", "0.5", "nan", "none"):
        tagged = tifffile_bytes(samples, extratags=[(42113, "s", 0, nodata, True)])
        np.testing.assert_array_equal(decode_image(tagged, 12)[0], plain)


def test_tiffs_read_by_their_first_bands_are_counted_in_one_warning(tmp_path, capsys):
    pytest.importorskip("tifffile")
    (tmp_path / "tiles").mkdir()
    for k in range(3):
        tile = field_tile(np.random.default_rng(k), bands=4)
        (tmp_path / "tiles" / f"t{k}.tif").write_bytes(tiff16(tile, photometric=1, extra=(0, 0, 0)))
    (tmp_path / "tiles" / "rgb.tif").write_bytes(tiff16(field_tile(np.random.default_rng(9))))
    (tmp_path / "tiles" / "damaged.tif").write_bytes(tiff16(field_tile(np.random.default_rng(9)))[:-300])
    cache = load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    assert cache.names == ["rgb.tif", "t0.tif", "t1.tif", "t2.tif"] and cache.skipped == ["damaged.tif"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 2 and "skipped 1 of 5 files" in err
    assert ("3 of 5 files in" in err and "are TIFFs with two or more than three bands (e.g. 't0.tif'), of which "
            "bands 1, 2 and 3 were read as red, green and blue" in err)


@pytest.mark.parametrize("seed", range(3))
def test_the_bands_asked_for_are_read_as_red_green_blue_or_gray_in_every_layout(seed):
    """--bands 4,3,2 of a tile of six bands, whether stored as samples of a pixel, as a plane per
    band or as a page per channel: those bands, in that order, stretched together (by hand from
    the array); one band as gray; a band the file does not hold: the file is skipped."""
    pytest.importorskip("tifffile")
    from selfsup.data.decode import decode_noting
    from selfsup.data.tiff import FEW_BANDS
    rng = np.random.default_rng(seed)
    six = rng.integers(0, 4096, (16, 20, 6)).astype(np.uint16)
    layouts = [tifffile_bytes(six, photometric="minisblack", planarconfig="contig"),
               tifffile_bytes(np.moveaxis(six, 2, 0), photometric="minisblack", planarconfig="separate"),
               tifffile_bytes(np.moveaxis(six, 2, 0), imagej=True, metadata={"axes": "CYX"})]
    for data in layouts:
        (out, gray, side), notes = decode_noting(data, 16, (4, 3, 2))
        np.testing.assert_array_equal(out, stretched(six[..., [3, 2, 1]].astype(np.float64))[:, 2:18])
        assert notes == [] and not gray and side == 16
        (out, gray, _), notes = decode_noting(data, 16, (5,))
        np.testing.assert_array_equal(out, np.repeat(stretched(six[..., 4:5].astype(np.float64)), 3, axis=2)[:, 2:18])
        assert gray and notes == []
        assert decode_noting(data, 16, (7, 2, 1)) == (None, [FEW_BANDS])
    # A TIFF Pillow reads is read as asked too (8 bits as they are); other formats as they are.
    rgb = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="TIFF")
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), 16, (3, 2, 1))[0], rgb[..., ::-1])
    np.testing.assert_array_equal(decode_image(png_bytes(Image.fromarray(rgb)), 16, (3, 2, 1))[0], rgb)


def test_bands_read_a_jpeg_tiff_as_rgb_a_palette_by_its_colours_and_skip_cmyk_saying_why(tmp_path, capsys):
    """These were all skipped without a word: tifffile gives JPEG's YCbCr as RGB, and a palette's
    indices, whose colours are in the file's table."""
    pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")
    from selfsup.data.decode import decode_noting
    from selfsup.data.tiff import TIFF_COLOUR
    y, x = np.mgrid[0:32, 0:32]
    gradient = np.stack([x * 8, y * 8, 255 - x * 8], axis=-1).astype(np.uint8)
    jpeg = tifffile_bytes(gradient, photometric="rgb", compression="jpeg")
    by_pillow = decode_image(jpeg, 32)[0]
    np.testing.assert_array_equal(decode_image(jpeg, 32, (3, 2, 1))[0], by_pillow[..., ::-1])
    indices = np.random.default_rng(0).integers(0, 4, (32, 32)).astype(np.uint8)
    table = np.zeros((3, 256), np.uint16)
    table[:, :4] = [[0, 65535, 0, 65535], [0, 0, 65535, 65535], [65535, 0, 0, 65535]]
    palette = tifffile_bytes(indices, photometric="palette", colormap=table)
    np.testing.assert_array_equal(decode_image(palette, 32, (1, 2, 3))[0], np.moveaxis(table[:, indices] >> 8, 0, -1))
    cmyk = tifffile_bytes(np.zeros((32, 32, 4), np.uint8), photometric="separated")
    assert decode_noting(cmyk, 32, (1, 2, 3)) == (None, [TIFF_COLOUR])
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "cmyk.tif").write_bytes(cmyk)
    (tmp_path / "tiles" / "jpeg.tif").write_bytes(jpeg)
    load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False, bands=(3, 2, 1))
    assert ("1 of them are TIFFs in CMYK, Lab or another colour space whose bands `bands` cannot choose from "
            "(e.g. 'cmyk.tif')") in capsys.readouterr().err


def test_the_gigapixel_bound_is_checked_before_a_plane_is_read(monkeypatch):
    """A 33,000-pixel tile was read whole (GBs) before being refused for its size."""
    tifffile = pytest.importorskip("tifffile")
    import selfsup.data.decode as decode
    read = []
    real = tifffile.TiffPageSeries.asarray
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: read.append(1) or real(*a, **k))
    four = tifffile_bytes(np.zeros((40, 40, 4), np.uint16), photometric="minisblack", planarconfig="contig")
    assert decode.decode_image(four, 16) is not None and read == [1]
    monkeypatch.setattr(decode, "LARGEST_IMAGE_PIXELS", 39 * 39)
    assert decode.decode_image(four, 16) is None and read == [1]


def test_a_channel_stack_cached_before_tifffile_is_decoded_again_in_colour(tmp_path):
    """Read without tifffile, a microscope's stack gave its first page, gray; the cache kept it so."""
    pytest.importorskip("tifffile")
    (tmp_path / "stacks").mkdir()
    channels = np.stack([np.full((16, 16), v, np.uint8) for v in (200, 120, 10)])
    (tmp_path / "stacks" / "cells.tif").write_bytes(tifffile_bytes(channels, imagej=True, metadata={"axes": "CYX"}))
    with without_tiff_readers():
        gray = load_cache(open_source(tmp_path / "stacks"), 16, show_progress=False)
    assert (gray.images[0] == 200).all()
    assert (load_cache(open_source(tmp_path / "stacks"), 16, show_progress=False).images[0] == [200, 120, 10]).all()


def test_when_no_tiff_decodes_the_error_says_what_would_read_them(tmp_path):
    pytest.importorskip("tifffile")
    (tmp_path / "tiles").mkdir()
    for k in range(2):
        tile = field_tile(np.random.default_rng(k), bands=4)
        (tmp_path / "tiles" / f"t{k}.tif").write_bytes(tiff16(tile, photometric=1, extra=(0, 0, 0)))
    with pytest.raises(UserError, match=r"^none of the 2 image files in '.*tiles' could be decoded; 2 of them are "
                                        r"TIFFs with fewer bands than `bands` asks for: choose others$"):
        load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False, bands=(9, 1, 1))
    with without_tiff_readers(), pytest.raises(UserError, match=r"could be decoded; 2 of them are TIFFs in a layout "
                                                                r"Pillow cannot decode: pip install 'selfsup\[tiff\]'"):
        load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)


def test_bands_given_for_images_none_of_which_is_a_tiff_are_said_to_do_nothing(labelled_folder, capsys):
    pytest.importorskip("tifffile")
    load_cache(open_source(labelled_folder), 16, show_progress=False, bands=(3, 2, 1))
    err = capsys.readouterr().err
    assert "warning: none of the 36 files in" in err
    assert "is a TIFF: the bands chosen (bands=) apply to TIFFs alone, and these are read as they are" in err


def test_a_cache_of_chosen_bands_is_its_own_and_counts_tiffs_without_them(tmp_path, capsys):
    pytest.importorskip("tifffile")
    (tmp_path / "tiles").mkdir()
    six = np.random.default_rng(0).integers(0, 4096, (16, 16, 6)).astype(np.uint16)
    (tmp_path / "tiles" / "six.tif").write_bytes(tifffile_bytes(six, photometric="minisblack", planarconfig="contig"))
    (tmp_path / "tiles" / "rgb.tif").write_bytes(tiff16(field_tile(np.random.default_rng(1))))
    first = load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False)
    chosen = load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False, bands=(6, 5, 4))
    assert first.names == ["rgb.tif", "six.tif"] and chosen.names == ["six.tif"]
    assert Path(first.images.filename).parent != Path(chosen.images.filename).parent
    np.testing.assert_array_equal(chosen.images[0], stretched(six[..., [5, 4, 3]].astype(np.float64)))
    err = capsys.readouterr().err
    assert ("skipped 1 of 2 files" in err and "1 of them are TIFFs with fewer bands than asked for (e.g. 'rgb.tif')"
            in err)
    with without_tiff_readers(), pytest.raises(UserError, match=r"^choosing TIFF bands \(6,5,4\) needs tifffile: "
                                                                r"pip install 'selfsup\[tiff\]'$"):
        load_cache(open_source(tmp_path / "tiles"), 16, show_progress=False, bands=(6, 5, 4))


def test_gif_and_jfif_files_are_images(tmp_path):
    (tmp_path / "mixed").mkdir()
    frames = [Image.fromarray(np.full((16, 16, 3), value, np.uint8)) for value in (0, 200)]
    frames[0].save(tmp_path / "mixed" / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "mixed" / "photo.jfif").write_bytes(jpeg_bytes(np.full((16, 16, 3), 120, np.uint8)))
    cache = load_cache(open_source(tmp_path / "mixed"), 16, show_progress=False)
    assert cache.names == ["anim.gif", "photo.jfif"] and not cache.skipped
    assert (cache.images[0] == 0).all() and np.abs(cache.images[1].astype(int) - 120).max() <= 2


def test_the_cache_knows_how_large_the_images_were_and_training_warns_of_a_large_enlargement(tmp_path, capsys):
    from selfsup.config import resolve
    from selfsup.train import Trainer
    rng = np.random.default_rng(0)
    (tmp_path / "small").mkdir()
    for i, (h, w) in enumerate([(20, 30), (24, 24), (40, 22), (21, 50), (23, 23)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "small" / f"{i}.png")
    assert decode_image(png_bytes(Image.fromarray(np.zeros((20, 30, 3), np.uint8))), 16)[2] == 20
    cache = load_cache(open_source(tmp_path / "small"), 16, show_progress=False)
    assert cache.median_side == 22  # the shorter sides 20, 24, 22, 21, 23
    capsys.readouterr()
    user = {"data": {"path": str(tmp_path / "small"), "image_size": 48}, "out": str(tmp_path / "run"),
            "backbone": {"name": "resnet18-half"}, "train": {"batch_size": 4, "progress": False}}
    Trainer(resolve(user), None, show_progress=False)
    err = capsys.readouterr().err
    assert "the images are mostly 22 px on their shorter side, enlarged 2x to image_size=48" in err
    assert "pass image_size=22" in err
    Trainer(resolve({**user, "data": {**user["data"], "image_size": 32}}), None, show_progress=False)
    assert "enlarged" not in capsys.readouterr().err  # less than twice: no warning


def test_images_beyond_pillows_bomb_guard_decode_up_to_a_gigapixel(monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS (179 megapixels by default: a
    14,000-pixel satellite tile); selfsup's own limit, a gigapixel, applies instead, and Pillow's
    setting is left as it was."""
    from PIL import Image as PILImage
    from selfsup.data import decode
    buffer = io.BytesIO()
    PILImage.new("RGB", (120, 100), (200, 30, 30)).save(buffer, format="PNG")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # as if 12,000 pixels were a bomb
    pixels, _, side = decode_image(buffer.getvalue(), 16)
    assert side == 100 and (pixels[..., 0] == 200).all() and PILImage.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(decode, "LARGEST_IMAGE_PIXELS", 10_000)  # beyond selfsup's own limit: skipped
    assert decode_image(buffer.getvalue(), 16) is None and PILImage.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("file_format", ["PNG", "TIFF"])
def test_exif_orientation_is_applied_as_image_viewers_do(file_format):
    """Pillow's TIFF loader turns the pixels upright itself (and drops the tag): turned twice once."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    for orientation, upright in [(1, pixels), (3, pixels[::-1, ::-1]), (6, np.rot90(pixels, -1)),
                                 (8, np.rot90(pixels, 1)), (2, pixels[:, ::-1]), (4, pixels[::-1]),
                                 (5, np.rot90(pixels, 1)[::-1]), (7, np.rot90(pixels, -1)[::-1])]:
        img = Image.fromarray(pixels)
        exif = img.getexif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        img.save(buffer, format=file_format, exif=exif)  # lossless, so the pixels compare exactly
        out, _, _ = decode_image(buffer.getvalue(), 16)
        assert (out == upright).all(), orientation


def test_corrupt_and_truncated_images_are_skipped_and_counted(labelled_folder, capsys):
    good = jpeg_bytes(shape_image("square", np.random.default_rng(1)))
    (labelled_folder / "square" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (labelled_folder / "square" / "garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    (labelled_folder / "square" / "empty.png").write_bytes(b"")
    cache = load_cache(open_source(labelled_folder), 16, show_progress=False)
    assert len(cache) == 36 and len(cache.skipped) == 3
    assert "square/truncated.jpg" in cache.skipped
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 3 of 39 files" in err


def test_all_files_corrupt_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="could be decoded"):
        load_cache(open_source(tmp_path / "bad"), 16, show_progress=False)
    assert "warning" not in capsys.readouterr().err  # the error alone: no 'going on with 0' before it


def test_a_tar_with_a_damaged_header_is_refused_not_cut_short(labelled_folder, tmp_path):
    import tarfile
    tar = make_tar(labelled_folder, tmp_path / "data.tar", "w")
    with tarfile.open(tar) as t:
        tenth = t.getmembers()[10].offset  # where the 11th member's header block starts
    data = bytearray(tar.read_bytes())
    data[tenth:tenth + 512] = np.random.default_rng(0).integers(1, 256, 512, dtype=np.uint8).tobytes()
    tar.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"damaged tar archive \(its listing stops after 10 files"):
        open_source(tar)


def test_links_back_to_a_listed_folder_are_not_followed_again(labelled_folder):
    (labelled_folder / "circle" / "back").symlink_to(labelled_folder, target_is_directory=True)
    assert len(open_source(labelled_folder).names) == 3 * 12


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images found"):
        open_source(tmp_path / "empty")
    (tmp_path / "file.dat").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        open_source(tmp_path / "file.dat")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(UserError, match="tar"):
        open_source(tmp_path / "broken.tar.gz")


def test_cache_is_reused_and_rebuilt_when_the_source_changes(labelled_folder, tmp_path):
    cache_dir = tmp_path / "c"
    first = load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    assert len(list(cache_dir.iterdir())) == 1
    again = load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    assert again.names == first.names and len(list(cache_dir.iterdir())) == 1
    write_dataset(labelled_folder, per_class=13, seed=5)  # adds one file per class, rewrites others
    changed = load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    assert len(changed) == 39 and len(list(cache_dir.iterdir())) == 2
    assert isinstance(changed.images, np.memmap)


def test_a_split_read_as_its_own_folder_shares_the_cache_of_the_dataset_split(split_folder, tmp_path):
    """`pretrain --data D/train` then `eval --data D` (or the other way round): the same images,
    decoded once; a change to test/ does not make train/ decode again, a change to train/ does."""
    cache_dir = tmp_path / "c"
    as_split, as_folder = open_source(split_folder), open_source(split_folder / "train")
    assert as_split.split == "train" and as_folder.split is None
    assert as_split.fingerprint == as_folder.fingerprint and as_split.names == as_folder.names
    first = load_cache(as_split, 16, cache_dir, show_progress=False)
    again = load_cache(as_folder, 16, cache_dir, show_progress=False)
    assert [c.name.split("-16px-")[0] for c in cache_dir.iterdir()] == ["ds-train"]  # named after both folders
    assert np.array_equal(first.images, again.images)
    assert open_splits(split_folder)["test"].fingerprint == open_source(split_folder / "test").fingerprint
    assert open_splits(split_folder)["test"].fingerprint != as_split.fingerprint
    write_dataset(split_folder / "test", per_class=7, seed=3)
    assert open_source(split_folder).fingerprint == as_split.fingerprint
    write_dataset(split_folder / "train", per_class=17, seed=4)
    assert open_source(split_folder).fingerprint == open_source(split_folder / "train").fingerprint != \
        as_split.fingerprint


def test_unwritable_cache_dir_is_a_clear_error(labelled_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the image cache"):
        load_cache(open_source(labelled_folder), 16, blocker / "sub", show_progress=False)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(100, 3, 7), epoch_order(100, 3, 7))
    assert not torch.equal(epoch_order(100, 3, 7), epoch_order(100, 3, 8))
    assert sorted(epoch_order(100, 3, 7).tolist()) == list(range(100))


def test_batches_cover_the_data_and_ranks_are_disjoint():
    images = np.arange(50 * 2 * 2 * 3, dtype=np.uint8).reshape(50, 2, 2, 3) % 251
    indices = np.arange(3, 50)  # 47 images, some held out
    seen, per_step = [], {}
    for rank in range(2):
        stream = BatchStream(images, indices, batch_size=10, device=torch.device("cpu"), seed=0, rank=rank, world=2)
        assert len(stream) == 4  # 47 images -> 4 full global batches of 10, 5 per process
        for step, batch in enumerate(stream.epoch(0)):
            assert batch.dtype == torch.uint8 and batch.shape == (5, 2, 2, 3)
            seen.extend(batch[:, 0, 0, 0].tolist())
            per_step.setdefault(step, []).extend(batch[:, 0, 0, 0].tolist())
    assert len(seen) == len(set(seen)) == 40
    # The global batch of each step is the same with one process or two.
    single = BatchStream(images, indices, batch_size=10, device=torch.device("cpu"), seed=0)
    for step, batch in enumerate(single.epoch(0)):
        assert sorted(batch[:, 0, 0, 0].tolist()) == sorted(per_step[step])
    with pytest.raises(UserError, match="divisible by the number of processes"):
        BatchStream(images, indices, batch_size=9, device=torch.device("cpu"), seed=0, world=2)
    single = BatchStream(images, indices, batch_size=5, device=torch.device("cpu"), seed=0)
    resumed = list(single.epoch(1, start=3))
    assert all(torch.equal(a, b) for a, b in zip(resumed, list(single.epoch(1))[3:]))


@pytest.mark.parametrize("world", [1, 2])
def test_images_held_on_the_device_give_the_same_batches_as_the_memory_map(world):
    # On a GPU a small cache is held in device memory and indexed there ("auto"): the batches,
    # of every rank, from any resume point, must be those of the host path.
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 3, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).integers(0, 40, (30, 2))  # samples of two rows, as video methods
    from selfsup.data.loader import SampleBatch
    for sample_rows in (None, rows):
        indices = np.arange(30) if sample_rows is not None else np.arange(2, 40)
        for rank in range(world):
            streams = [BatchStream(images, indices, batch_size=6, device=torch.device("cpu"), seed=3, rank=rank,
                                   world=world, keep_on_device=mode, rows=sample_rows) for mode in ("always", "never")]
            assert streams[0].on_device and not streams[1].on_device
            for start in (0, 2):
                held, mapped = (list(s.epoch(1, start=start)) for s in streams)
                assert len(held) == len(mapped) == len(streams[0]) - start
                for a, b in zip(held, mapped):
                    a, b = (x.images if isinstance(x, SampleBatch) else x for x in (a, b))
                    assert torch.equal(a, b)


def test_a_text_file_listing_images_is_a_source(labelled_folder, tmp_path):
    absolute = sorted(str(p) for p in labelled_folder.rglob("*.png"))[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("# curated\n" + "\n".join(absolute) + "\n\n")
    source = open_source(listing)
    assert source.names == absolute and source.labels is None
    cache = load_cache(source, 16, show_progress=False)
    direct = load_cache(open_source(labelled_folder), 16, show_progress=False)
    np.testing.assert_array_equal(cache.images[0], direct.images[0])
    relative = labelled_folder / "rel.txt"
    relative.write_text("circle/000.png\nsquare/001.png\n")
    assert len(load_cache(open_source(relative), 16, show_progress=False)) == 2
    listing.write_text(str(tmp_path / "gone.png") + "\n")
    with pytest.raises(UserError, match="lists .*gone.png.*does not exist"):
        open_source(listing)


class Stopped(Exception):
    """What a run's stop handler raises (RunStopped, before training)."""


def _raise_stopped(number, frame):
    raise Stopped(number)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_decoding_workers_are_forked_is_not_lost(name):
    """Python drops an exception raised in a fork handler (KeyboardInterrupt from Ctrl-C, or a run's
    stop request from SIGTERM); decode_stream notes a signal that comes while its pool starts and
    delivers it again after, so it reaches the caller (the workers stop)."""
    import signal

    from selfsup.data.workers import decode_stream
    number = getattr(signal, name)
    handler, raised = (signal.default_int_handler, KeyboardInterrupt) if name == "SIGINT" else (_raise_stopped, Stopped)
    armed = {"once": True}

    def signal_at_fork():
        if armed["once"]:
            armed["once"] = False
            os.kill(os.getpid(), number)
    os.register_at_fork(after_in_parent=signal_at_fork)
    items = [(f"{i}.png", png_bytes(Image.new("RGB", (8, 8), (i, i, i)))) for i in range(8)]
    before = signal.signal(number, handler)  # Python's own, or a run's, whatever ran before
    try:
        with pytest.raises(raised):
            list(decode_stream(items, 8, workers=2))
        assert signal.getsignal(number) is handler  # its own handler given back
    finally:
        armed["once"] = False
        signal.signal(number, before)


LATE_WORKERS = """
import io, os, signal, time
from PIL import Image
from selfsup.data import workers

work = workers._decode_worker
def late_worker(tasks, results, parent_ends):  # slow to start: stopped before they have their own handlers
    time.sleep(1.0)
    work(tasks, results, parent_ends)
workers._decode_worker = late_worker

class Stopped(Exception):
    pass
def stop(number, frame):
    raise Stopped
armed = {"once": True}
def signal_at_fork():
    if armed["once"]:
        armed["once"] = False
        os.kill(os.getpid(), signal.SIGTERM)
os.register_at_fork(after_in_parent=signal_at_fork)
signal.signal(signal.SIGTERM, stop)
buffer = io.BytesIO()
Image.new("RGB", (8, 8)).save(buffer, format="PNG")
try:
    list(workers.decode_stream([(f"{i}.png", buffer.getvalue()) for i in range(8)], 8, workers=2))
except Stopped:
    print("stopped")
"""


def test_workers_stopped_before_they_have_their_own_handlers_end():
    """The workers are forked with the handler that notes a signal for the parent; Pool.terminate's
    SIGTERM landing before a worker put in its own was noted there and lost, and terminate waited
    for the worker for ever (seen once in a full test run, 18 minutes). They are now killed."""
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.run([sys.executable, "-c", LATE_WORKERS], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0 and proc.stdout.strip() == "stopped", proc.stderr


GROUP_STOPPED = """
import io, signal, sys
from PIL import Image
from selfsup.data.workers import decode_stream

class Stopped(Exception):
    pass
def stop(number, frame):
    raise Stopped
if sys.argv[1] != "SIGINT":  # a run's stop request: its handler raises
    signal.signal(getattr(signal, sys.argv[1]), stop)
buffer = io.BytesIO()
Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="PNG")
try:
    for i, _ in enumerate(decode_stream(iter([(f"{i}.png", buffer.getvalue()) for i in range(50000)]), 32,
                                        workers=2)):
        if i == 200:
            print("decoding", flush=True)
except (Stopped, KeyboardInterrupt):
    print("stopped", flush=True)
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_stop_signal_to_the_whole_process_group_while_decoding_stops_the_parent_and_its_workers(name):
    """Ctrl-C and a scheduler's stop (scancel, a preemption) reach every process of the group. A
    worker the signal ended in the middle of a queue operation left its lock taken, and the
    parent's Pool.terminate waited for ever (a review saw 2 of 3 such SIGTERMs and 3 of 7 SIGINTs
    hang; so did Pool's task thread, writing a chunk no stopped worker would read). The workers
    now have no lock or thread in common with the parent, which kills them."""
    import signal
    import subprocess
    import sys
    import time

    src = Path(__file__).resolve().parents[1] / "src"
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", GROUP_STOPPED, name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(src)},
                                # Ctrl-C as in a terminal: a suite started in the background
                                # ignores SIGINT, and so would this child (see test_cli.py).
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert proc.stdout.readline().strip() == "decoding"
            time.sleep(rng.uniform(0.0, 0.3))
            os.killpg(proc.pid, getattr(signal, name))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 0 and out.strip() == "stopped", err


ORPHANED = """
import io, os, sys
from PIL import Image
from selfsup.data.workers import decode_stream
buffer = io.BytesIO()
Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="PNG")
for i, _ in enumerate(decode_stream(iter([(f"{i}.png", buffer.getvalue()) for i in range(50000)]), 32, workers=3)):
    if i == 200:
        print(os.getpid(), flush=True)
"""


def test_decoding_workers_end_when_their_parent_is_killed():
    """kill -9 of a run (an out-of-memory kill, a scheduler's): its workers see their task pipes
    close and end, rather than wait for ever (a fork copies the parent's ends of the pipes: each
    worker held its own, and those of the workers forked before it, open)."""
    import signal
    import subprocess
    import sys
    import time

    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.Popen([sys.executable, "-c", ORPHANED], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(src)})
    try:
        parent = int(proc.stdout.readline())
        workers = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        assert len(workers) == 3
        os.kill(parent, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                  for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                       for pid in workers)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Files that cannot be used, and caches that others share, lose or find damaged


def test_unusable_files_and_folders_are_left_out_and_said(labelled_folder, tmp_path, capsys, monkeypatch):
    """A name that is not UTF-8, a dangling link, a loop of links, a folder that cannot be read,
    macOS's __MACOSX folder: left out, in one warning; the rest is the dataset."""
    circle = labelled_folder / "circle"
    with open(os.path.join(os.fsencode(circle), b"latin1-\xe9.png"), "wb") as f:
        f.write((circle / "000.png").read_bytes())
    (circle / "dangling.png").symlink_to(circle / "nowhere.png")
    (circle / "loop-a.png").symlink_to(circle / "loop-b.png")
    (circle / "loop-b.png").symlink_to(circle / "loop-a.png")
    (labelled_folder / "__MACOSX" / "circle").mkdir(parents=True)
    (labelled_folder / "__MACOSX" / "circle" / "000.png").write_bytes((circle / "000.png").read_bytes())
    locked = labelled_folder / "square" / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes((circle / "000.png").read_bytes())
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (root reads any)
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    source = open_source(labelled_folder)
    assert len(source.names) == 36 and source.classes == CLASSES
    err = capsys.readouterr().err
    assert err.count("warning: left out 5 files or folders under") == 1 and "fix the permissions" in err
    cache = load_cache(source, 16, tmp_path / "c", show_progress=False)
    assert len(cache) == 36

    tar = make_tar(labelled_folder, tmp_path / "data.tar", mode="w")  # the odd name travels into the tar
    with __import__("tarfile").open(tar, "a") as archive:  # and a hidden folder, as folders skip
        archive.add(circle / "000.png", arcname="circle/.thumbs/000.png")
    names = open_source(tar).names
    assert len(names) == 36 and not any("MACOSX" in n or ".thumbs" in n for n in names)
    assert "its name is not valid UTF-8" in capsys.readouterr().err


def test_links_in_a_tar_are_followed_or_said_as_in_the_folder(labelled_folder, tmp_path, capsys):
    """A tar of a folder keeps its links as link members: the valid ones (a symbolic link before
    its target in the archive, a hard link) give their target's image, as the folder does; a
    dangling link, a loop of links and a pipe are counted in the same warning."""
    import tarfile
    circle = labelled_folder / "circle"
    (circle / "000-soft.png").symlink_to("005.png")  # archived before 005.png
    os.link(circle / "001.png", circle / "hard.png")
    (circle / "dangling.png").symlink_to("nowhere.png")
    (circle / "loop-a.png").symlink_to("loop-b.png")
    (circle / "loop-b.png").symlink_to("loop-a.png")
    os.mkfifo(circle / "pipe.png")
    folder = open_source(labelled_folder)
    folder_warning = capsys.readouterr().err
    with tarfile.open(tmp_path / "data.tar", "w") as archive:
        archive.add(labelled_folder, arcname="labelled")
    tar = open_source(tmp_path / "data.tar")
    assert tar.names == folder.names and len(tar.names) == 38
    assert "left out 4 files or folders" in folder_warning
    assert "warning: left out 4 files or folders under" in capsys.readouterr().err
    assert dict(tar.read()) == dict(folder.read())
    assert sorted(load_cache(tar, 16, tmp_path / "c", show_progress=False).names) == folder.names  # archive order


def test_a_file_made_readable_changes_the_fingerprint(labelled_folder):
    before = open_source(labelled_folder).fingerprint
    picture = labelled_folder / "circle" / "000.png"
    picture.chmod(0o000)  # a file skipped as unreadable must not stay skipped once it is readable
    try:
        assert open_source(labelled_folder).fingerprint != before
    finally:
        picture.chmod(0o644)
    assert open_source(labelled_folder).fingerprint == before


def test_a_cache_is_readable_by_whoever_may_read_its_folder(labelled_folder, tmp_path):
    previous = os.umask(0o022)
    try:
        load_cache(open_source(labelled_folder), 16, tmp_path / "c", show_progress=False)
    finally:
        os.umask(previous)
    (built,) = (tmp_path / "c").iterdir()
    assert built.stat().st_mode & 0o777 == 0o755  # mkdtemp's 0700 locked other users out


@pytest.mark.parametrize("damage", ["short pixels", "index not json", "no pixels"])
def test_a_damaged_cache_is_decoded_again(labelled_folder, tmp_path, capsys, damage):
    cache_dir = tmp_path / "c"
    first = load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    expected = np.array(first.images)
    (built,) = cache_dir.iterdir()
    if damage == "short pixels":
        with open(built / "images.u8", "r+b") as f:
            f.truncate(1000)
    elif damage == "index not json":
        (built / "index.json").write_text('{"names": [')
    else:
        (built / "images.u8").unlink()
    again = load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    assert np.array_equal(np.array(again.images), expected) and again.names == first.names
    assert "is damaged" in capsys.readouterr().err and [p.name for p in cache_dir.iterdir()] == [built.name]


def test_a_build_killed_on_this_machine_is_cleared_by_the_next(labelled_folder, tmp_path, capsys):
    import subprocess
    import sys
    from selfsup.cli import main
    from selfsup.data.cache import _builder, _staging_prefix
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    abandoned = cache_dir / f"{_staging_prefix()}{_builder(gone)}-abc"  # killed a moment ago: removed at once
    building = cache_dir / f"{_staging_prefix()}{_builder(os.getpid())}-def"  # a live process's build
    elsewhere = cache_dir / f".building-another_host-{_builder(gone)}-ghi"  # a PID of another machine
    namespace = cache_dir / f"{_staging_prefix()}{gone}.00000000-jkl"  # another PID namespace, same host name
    older = cache_dir / f"{_staging_prefix()}{gone}-mno"  # named before PID tables were, written a moment ago
    quiet = cache_dir / f"{_staging_prefix()}{gone}.00000000-pqr"  # another namespace's, quiet for an hour
    long_ago = __import__("time").time() - 3600
    for folder in (abandoned, building, elsewhere, namespace, older, quiet):
        folder.mkdir()
        (folder / "images.u8").write_bytes(b"\0" * 100)
        if folder in (building, elsewhere, quiet):
            os.utime(folder / "images.u8", (long_ago, long_ago))
            os.utime(folder, (long_ago, long_ago))
    load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    assert not abandoned.exists() and not quiet.exists()
    assert building.exists() and elsewhere.exists() and namespace.exists() and older.exists()
    assert main(["cache", "--cache-dir", str(cache_dir)]) == 0  # the disk they hold is said, not hidden
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "and 4 unfinished builds, 400 B (.building-*: 4 under way, or killed on another machine, which removes it "
        "when it builds next)")
    abandoned.mkdir()
    (abandoned / "images.u8").write_bytes(b"\0" * 100)
    for listing in (["--json"], []):  # a listing says what is dead and how to remove it, and removes nothing
        assert main(["cache", "--cache-dir", str(cache_dir), *listing]) == 0
        assert abandoned.exists()
    builds = __import__("json").loads(capsys.readouterr().out.splitlines()[0])["unfinished_builds"]
    assert [b["path"] for b in builds if b["dead"]] == [str(abandoned)] and len(builds) == 5
    assert capsys.readouterr().out == ""
    main(["cache", "--cache-dir", str(cache_dir)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"and 5 unfinished builds, 500 B (.building-*: 1 dead build, 100 B, killed on this machine: selfsup cache "
        f"--cache-dir {cache_dir} --remove-dead-builds removes them, as does the next build here; 4 under way, or "
        f"killed on another machine, which removes it when it builds next)")
    assert main(["cache", "--cache-dir", str(cache_dir), "--remove-dead-builds"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 dead build (killed on this machine): 100 B freed" in out and "dead" not in out.splitlines()[-1]
    assert not abandoned.exists() and building.exists() and elsewhere.exists() and namespace.exists()


def test_a_full_disk_while_building_the_cache_names_the_cache_folder(labelled_folder, tmp_path, monkeypatch):
    import errno
    from selfsup.data import cache

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")  # was: "[Errno 28] No space left on device"
    monkeypatch.setattr(cache, "publish", full_disk)  # the index written last, after the pixels
    with pytest.raises(UserError) as error:
        load_cache(open_source(labelled_folder), 16, tmp_path / "c", show_progress=False)
    assert str(error.value) == (f"cannot write the image cache in {str(tmp_path / 'c')!r} (No space left on device); "
                                f"free space there or set cache_dir= or $SELFSUP_CACHE to a writable folder")
    assert list((tmp_path / "c").iterdir()) == []  # nor the half-built cache


def test_caches_are_listed_and_those_unused_for_days_removed(labelled_folder, split_folder, tmp_path, capsys):
    import json
    import time
    from selfsup.cli import main
    from selfsup.data.cache import list_caches
    cache_dir = tmp_path / "c"
    load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)
    load_cache(open_source(split_folder), 16, cache_dir, show_progress=False)
    (cache_dir / "notes").mkdir()  # not a cache: never touched
    old, recent = sorted(list_caches(cache_dir), key=lambda e: e.images)  # 36 and 48 images
    for entry in (old, recent):  # what the evaluations derive from a cache, named after it
        (cache_dir / "features").mkdir(exist_ok=True)
        (cache_dir / "subsets").mkdir(exist_ok=True)
        (cache_dir / "features" / f"{entry.path.name}-0123.npy").write_bytes(b"x")
        (cache_dir / "subsets" / f"{entry.path.name}-all-val0.1-seed0.json").write_text("{}")
    long_ago = time.time() - 40 * 86400
    os.utime(old.path / "index.json", (long_ago, long_ago))
    assert [e.path for e in list_caches(cache_dir)] == [recent.path, old.path]  # most recently used first
    assert old.bytes >= 36 * 16 * 16 * 3
    assert main(["cache", "--cache-dir", str(cache_dir), "--remove-unused-days", "30", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in listed["removed"]] == [str(old.path)] and not old.path.exists()
    assert [c["path"] for c in listed["caches"]] == [str(recent.path)] and (cache_dir / "notes").is_dir()
    assert [p.name for p in (cache_dir / "features").iterdir()] == [f"{recent.path.name}-0123.npy"]
    assert [p.name for p in (cache_dir / "subsets").iterdir()] == [f"{recent.path.name}-all-val0.1-seed0.json"]
    load_cache(open_source(labelled_folder), 16, cache_dir, show_progress=False)  # decoded again, marked used
    assert main(["cache", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(" used ") == 2 and out.strip().splitlines()[-1].startswith("2 caches, ")
    assert main(["cache", "--cache-dir", str(cache_dir), "--remove-unused-days", "-1"]) == 2
    assert "--remove-unused-days must be 0 or more" in capsys.readouterr().err
    assert main(["cache", "--cache-dir", str(cache_dir / "none")]) == 0
    assert capsys.readouterr().out.startswith("no cache folder at ")
    (cache_dir / "a-file").write_text("")
    assert main(["cache", "--cache-dir", str(cache_dir / "a-file")]) == 2
    assert "is a file; --cache-dir takes the folder" in capsys.readouterr().err
    (cache_dir / "link").symlink_to(recent.path)  # a link to a cache: neither counted twice nor a way to remove it
    listed = list_caches(cache_dir)
    assert len(listed) == 2 and all(e.path.name != "link" for e in listed)


def test_a_run_checkpointing_marks_its_cache_used(labelled_folder, tmp_path):
    import time
    from selfsup.data.cache import mark_used
    cache = load_cache(open_source(labelled_folder), 16, tmp_path / "c", show_progress=False)
    index = Path(cache.images.filename).parent / "index.json"
    long_ago = time.time() - 40 * 86400
    os.utime(index, (long_ago, long_ago))
    mark_used(cache)
    assert time.time() - index.stat().st_mtime < 60


def test_a_cache_still_damaged_after_decoding_again_is_one_line(labelled_folder, tmp_path, monkeypatch):
    from selfsup.data import cache as cache_module
    load_cache(open_source(labelled_folder), 16, tmp_path / "c", show_progress=False)
    (built,) = (tmp_path / "c").iterdir()
    with open(built / "images.u8", "r+b") as f:
        f.truncate(10)
    real_build = cache_module._build

    def short_build(source, size, target, workers, show_progress, bands):  # a disk that fills up again
        real_build(source, size, target, workers, show_progress, bands)
        with open(target / "images.u8", "r+b") as f:
            f.truncate(10)

    monkeypatch.setattr(cache_module, "_build", short_build)
    with pytest.raises(UserError, match="was decoded again and is still damaged"):
        load_cache(open_source(labelled_folder), 16, tmp_path / "c", show_progress=False)


def test_devices_and_pipes_among_the_images_are_left_out(labelled_folder, tmp_path, capsys):
    """A link to /dev/zero would be read until memory runs out, a FIFO waited on for ever."""
    (labelled_folder / "circle" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(labelled_folder / "square" / "pipe.png")
    source = open_source(labelled_folder)
    assert len(source.names) == 36 and "circle/zero.png" not in source.names
    assert "left out 2 files or folders" in capsys.readouterr().err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{labelled_folder / 'circle' / '000.png'}\n{labelled_folder / 'circle' / 'zero.png'}\n")
    with pytest.raises(UserError, match="zero.png', which is not a regular file"):
        open_source(listing)


def test_a_list_of_absolute_or_up_paths_has_no_class_folders(labelled_folder, tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text(f"../labelled/circle/000.png\n{labelled_folder / 'square' / '001.png'}\n"
                                              f"../labelled/stripes/002.png\n")
    source = open_source(tmp_path / "lists" / "l.txt")
    assert source.classes == [] and source.labels is None
    assert "absolute or ../ paths" in source.why_no_classes()


def test_a_list_that_names_an_image_twice_uses_it_once(labelled_folder, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{labelled_folder / 'circle' / '000.png'}\n{labelled_folder / 'circle' / '001.png'}\n"
                       f"{labelled_folder / 'circle' / '000.png'}\n")
    assert len(open_source(listing).names) == 2
    assert "lists 1 image more than once; each is used once" in capsys.readouterr().err


def test_removing_unused_caches_also_removes_old_half_written_features(tmp_path):
    """A write killed midway leaves its temporary file; features run to gigabytes."""
    import time
    from selfsup.data.cache import remove_unused_caches
    (tmp_path / "features").mkdir()
    old, new = tmp_path / "features" / ".x-1.npy.123.ab.tmp", tmp_path / "features" / ".y-2.npy.456.cd.tmp"
    old.write_bytes(b"0" * 10)
    new.write_bytes(b"0" * 10)
    a_month_ago = time.time() - 31 * 86400
    os.utime(old, (a_month_ago, a_month_ago))
    remove_unused_caches(tmp_path, 30)
    assert not old.exists() and new.exists()  # a recent one may be a write going on now


def test_removing_unused_caches_passes_over_a_left_file_another_process_removes_first(tmp_path, monkeypatch):
    """Two `selfsup cache --remove-unused-days` at once, or a write renaming its file: the file
    listed is gone when it is looked at. Nothing is left to do about it, and nothing is said."""
    from pathlib import Path

    from selfsup.data.cache import remove_unused_caches
    (tmp_path / "features").mkdir()
    gone = tmp_path / "features" / ".x-1.npy.123.ab.tmp"
    gone.write_bytes(b"0")
    listed = Path.glob

    def glob_then_removed(self, pattern):
        found = list(listed(self, pattern))
        for path in found:
            path.unlink()  # by another process, between the listing and the look
        return iter(found)

    monkeypatch.setattr(Path, "glob", glob_then_removed)
    assert remove_unused_caches(tmp_path, 30) == []


@pytest.mark.parametrize("seed", range(3))
def test_a_tiff_whose_0_is_white_is_turned_over_at_any_depth_and_its_nodata_compared_as_stored(seed):
    """Pillow turns an 8-bit MINISWHITE TIFF over and leaves a 16-bit one as stored: both come out
    with 0 as white. GDAL's nodata names a stored value, not a shown one."""
    pytest.importorskip("tifffile")
    rng = np.random.default_rng(seed)
    deep = rng.integers(100, 4000, (12, 12)).astype(np.uint16)
    data = tifffile_bytes(deep, photometric="miniswhite")
    Image.open(io.BytesIO(data)).load()  # read by Pillow
    np.testing.assert_array_equal(decode_image(data, 12)[0][..., 0], 255 - stretched(deep.astype(np.float64)))
    shallow = rng.integers(1, 256, (12, 12)).astype(np.uint8)
    shallow[:3] = 0  # beyond the scene's edge, stored as 0: shown white by MINISWHITE, black as nodata
    out = decode_image(tifffile_bytes(shallow, photometric="miniswhite",
                                      extratags=[(42113, "s", 0, "0", True)]), 12)[0][..., 0]
    assert (out[:3] == 0).all() and (out[3:] == 255 - shallow[3:]).all()


def test_big_endian_16_bit_samples_are_stretched_from_a_histogram_as_little_endian_ones(monkeypatch):
    """An "MM" TIFF gives Pillow's I;16B: no float64 copy of a big scan for it either."""
    from selfsup.data import stretch as stretch_module
    samples = np.random.default_rng(0).integers(0, 4096, (8, 8)).astype(np.uint16)
    calls, original = [], stretch_module.stretch_integers
    monkeypatch.setattr(stretch_module, "stretch_integers", lambda values, where=None: calls.append(values.dtype)
                        or original(values, where))
    assert (stretch_module.to_uint8(samples.astype(">u2")) == stretch_module.to_uint8(samples)).all()
    assert calls == [np.dtype(">u2"), np.dtype("<u2")]


def test_a_split_of_a_dotted_dataset_folder_keeps_the_split_in_its_cache_name(tmp_path):
    from selfsup.data.cache import _cache_key
    write_dataset(tmp_path / "imagenet.v2" / "train", per_class=2)
    write_dataset(tmp_path / "imagenet.v2" / "test", per_class=2)
    names = {split: _cache_key(open_splits(tmp_path / "imagenet.v2")[split], 32).split("-32px-")[0]
             for split in ("train", "test")}
    assert names == {"train": "imagenet-train", "test": "imagenet-test"}


def test_a_file_archived_twice_in_a_tar_is_one_image_its_last_copy(tmp_path, capsys):
    """`tar -r` appends a changed file under its old name: tar extracts the last copy. It was
    listed, read, trained on and embedded once per copy (two rows of one name)."""
    import tarfile

    def png(colour) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(out, "PNG")
        return out.getvalue()

    members = [("a/x.png", png("red")), ("a/y.png", png("blue")), ("b/z.png", png("green")),
               ("a/x.png", png("white")), ("b/z.png", png("black")), ("b/z.png", png("yellow"))]
    with tarfile.open(tmp_path / "appended.tar", "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    source = open_source(tmp_path / "appended.tar", whole=True)
    assert source.names == ["a/x.png", "a/y.png", "b/z.png"]
    assert capsys.readouterr().err.count("archived more than once") == 1
    last = {name: data for name, data in members}  # a dict keeps each name's last value
    assert dict(source.read()) == last and len(list(source.read())) == 3
    assert list(source.read(["b/z.png"])) == [("b/z.png", last["b/z.png"])]
    cache = load_cache(source, 16, tmp_path / "c", show_progress=False)
    pixel = {name: tuple(cache.images[row][0, 0]) for row, name in enumerate(cache.names)}
    assert pixel == {"a/x.png": (255, 255, 255), "a/y.png": (0, 0, 255), "b/z.png": (255, 255, 0)}
