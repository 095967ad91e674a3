"""Decoding satellite-style tiles into the cache: how fast each TIFF layout decodes, in one process.

Synthetic 12-bit tiles (--side pixels square, a smooth field with noise) are written in the layouts
a practitioner meets, and each is decoded --images times by `selfsup.data.decode.decode_image` at the
cache's working size (--size): an 8-bit RGB PNG (the baseline), a 16-bit RGB TIFF (Pillow, all 16
bits read), and 4-band 16-bit tiles that Pillow cannot decode and tifffile reads (GDAL's pixel-
interleaved layout, uncompressed and LZW; one plane per band; and the same with --bands 4,3,2).
Prints one JSON line per layout: images/s and milliseconds per image.

    python bench/tiff_decode.py [--side 512] [--size 256] [--images 200]
"""
from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import tifffile
from PIL import Image

from selfsup.data.decode import decode_image


def tile(rng: np.random.Generator, side: int, bands: int) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] / side
    field = np.stack([np.sin((b + 1) * x + y) for b in range(bands)], axis=-1)
    return (2000 + 1500 * field + rng.normal(0, 60, (side, side, bands))).clip(0, 4095).astype(np.uint16)


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def layouts(side: int) -> dict[str, tuple[bytes, tuple[int, ...] | None]]:
    rng = np.random.default_rng(0)
    four = tile(rng, side, 4)
    return {
        "png, 8-bit RGB (Pillow)": (png_bytes((four[..., :3] >> 4).astype(np.uint8)), None),
        "tiff, 16-bit RGB (Pillow)": (tiff_bytes(four[..., :3], photometric="rgb"), None),
        "tiff, 16-bit 4 bands, GDAL's layout (tifffile)": (
            tiff_bytes(four, photometric="minisblack", planarconfig="contig"), None),
        "tiff, 16-bit 4 bands, LZW (tifffile)": (
            tiff_bytes(four, photometric="minisblack", planarconfig="contig", compression="lzw"), None),
        "tiff, 16-bit 4 bands, a plane per band (tifffile)": (
            tiff_bytes(np.moveaxis(four, 2, 0), photometric="minisblack", planarconfig="separate"), None),
        "tiff, 16-bit 4 bands, --bands 4,3,2 (tifffile)": (
            tiff_bytes(four, photometric="minisblack", planarconfig="contig"), (4, 3, 2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--size", type=int, default=256, help="the cache's working size")
    parser.add_argument("--images", type=int, default=200, help="decodes per layout")
    args = parser.parse_args()
    for name, (data, bands) in layouts(args.side).items():
        assert decode_image(data, args.size, bands) is not None, name
        start = time.perf_counter()
        for _ in range(args.images):
            decode_image(data, args.size, bands)
        seconds = time.perf_counter() - start
        print(json.dumps({"layout": name, "side": args.side, "size": args.size, "bytes": len(data),
                          "images_per_s": round(args.images / seconds, 1),
                          "ms_per_image": round(1000 * seconds / args.images, 2)}), flush=True)


if __name__ == "__main__":
    main()
