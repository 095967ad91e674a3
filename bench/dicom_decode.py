"""Decoding CT-style DICOM files into the cache: how fast each encoding decodes, in one process.

A synthetic 12-bit CT slice (--side pixels square: a disc of tissue in air, with noise, stored as
signed 16-bit samples with a rescale to Hounsfield units and a soft-tissue window) is written as
DICOM, uncompressed and RLE Lossless, and for comparison as a 16-bit gray PNG and an 8-bit gray
PNG of the same picture; each is decoded --images times by `selfsup.data.decode.decode_image` at the
cache's working size (--size). Prints one JSON line per encoding: images/s and milliseconds per image.

    python bench/dicom_decode.py [--side 512] [--size 256] [--images 200]
"""
from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from selfsup.data.decode import decode_image

RLE = "1.2.840.10008.1.2.5"


def ct_slice(side: int) -> np.ndarray:
    """Stored samples of a CT slice: air (-1000 HU) around a disc of soft tissue (40 HU) holding a
    bone ring (700 HU), with noise, as int16 with the rescale intercept -1024."""
    rng = np.random.default_rng(0)
    y, x = (np.mgrid[0:side, 0:side] - side / 2) / (side / 2)
    radius = np.hypot(x, y)
    hu = np.where(radius < 0.8, 40.0, -1000.0) + np.where((radius > 0.6) & (radius < 0.65), 660.0, 0.0)
    return (hu + rng.normal(0, 15, hu.shape) + 1024).round().astype(np.int16)


def dicom_bytes(samples: np.ndarray, syntax: str | None) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.set_pixel_data(samples, "MONOCHROME2", 12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400  # soft tissue
    if syntax:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def encodings(side: int) -> dict[str, bytes]:
    samples = ct_slice(side)
    windowed = (np.clip((samples.astype(np.float64) - 1024 - 40) / 400 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    return {"png, 8-bit gray, windowed beforehand (Pillow)": png_bytes(windowed),
            "png, 16-bit gray (Pillow, stretched)": png_bytes(samples.astype(np.uint16)),
            "dicom, uncompressed (pydicom, windowed)": dicom_bytes(samples, None),
            "dicom, RLE Lossless (pydicom, windowed)": dicom_bytes(samples, RLE)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--size", type=int, default=256, help="the cache's working size")
    parser.add_argument("--images", type=int, default=200, help="decodes per encoding")
    args = parser.parse_args()
    for name, data in encodings(args.side).items():
        assert decode_image(data, args.size) is not None, name
        start = time.perf_counter()
        for _ in range(args.images):
            decode_image(data, args.size)
        seconds = time.perf_counter() - start
        print(json.dumps({"encoding": name, "side": args.side, "size": args.size, "bytes": len(data),
                          "images_per_s": round(args.images / seconds, 1),
                          "ms_per_image": round(1000 * seconds / args.images, 2)}), flush=True)


if __name__ == "__main__":
    main()
