"""Decoding JPEGs into the cache: selfsup's Pillow process pool against torchvision.io's batched
decoder, on the CPU and (when there is one) on the GPU with nvJPEG, at several image sizes.

For each source size, --images synthetic photographs-like JPEGs (smooth colour fields with
edges and noise, quality 90) are decoded and brought to the cache's working resolution
(--size, shorter side resized then centre-cropped, as `selfsup.data.decode.fit_square` does).
Prints one JSON line per (source size, decoder): images/s, and the mean absolute difference in
grey levels from the Pillow result (decoders and resamplers differ slightly; a large value
would mean a wrong result, not a slower one).

    python bench/decode.py                              # CPU decoders; GPU too when CUDA is there
    python bench/decode.py --sizes 256 512 1024 --images 256 --workers 16
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from selfsup.data.workers import decode_stream


def synthetic_jpegs(count: int, side: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        y, x = np.mgrid[0:side, 0:side] / side
        a, b, c = rng.uniform(0.5, 4, 3)
        field = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * x * y + a)], axis=-1)
        edge = (x + rng.uniform(-0.5, 0.5) * y > rng.uniform(0.3, 0.7))[..., None]
        pixels = 127 + 100 * field * np.where(edge, 1.0, -0.6) + rng.normal(0, 8, (side, side, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def fit_square_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (size, size, 3) uint8: shorter side to `size` (bicubic, antialiased),
    centre crop; the tensor counterpart of `fit_square`."""
    _, height, width = image.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True,
                            align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[:, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def decode_torchvision(jpegs: list[bytes], size: int, device: str, batch: int = 64) -> list[np.ndarray]:
    out = []
    for i in range(0, len(jpegs), batch):
        data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs[i:i + batch]]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        out.extend(fit_square_tensor(img, size) for img in images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return [img.cpu().numpy() for img in out]


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024], help="source image sides")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=224, help="the cache's working resolution")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Pillow processes")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the Pillow pool gets the cores; torchvision's CPU decoder one each
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for side in args.sizes:
        jpegs = synthetic_jpegs(args.images, side)
        size = min(args.size, side)
        items = [(str(i), j) for i, j in enumerate(jpegs)]
        seconds, pil = timed(lambda: [d[0] for _, d in decode_stream(items, size, args.workers, parallel=True)])
        row = {"source_side": side, "size": size, "images": args.images, "megapixels": round(side * side / 1e6, 3)}
        print(json.dumps({**row, "decoder": f"pillow, {args.workers} processes",
                          "images_per_s": round(args.images / seconds, 1)}), flush=True)
        for device in devices:
            if device == "cuda":
                decode_torchvision(jpegs[:8], size, device)  # warm-up: nvJPEG handles, kernels
            seconds, ours = timed(lambda: decode_torchvision(jpegs, size, device))
            difference = float(np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                                        for a, b in zip(ours, pil)]))
            name = "torchvision.io, 1 CPU thread" if device == "cpu" else "torchvision.io, nvJPEG on the GPU"
            print(json.dumps({**row, "decoder": name, "images_per_s": round(args.images / seconds, 1),
                              "mean_abs_diff_from_pillow": round(difference, 2)}), flush=True)


if __name__ == "__main__":
    main()
