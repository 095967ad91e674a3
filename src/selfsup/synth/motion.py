"""Clips of a camera moving over still images, with the motor signal that moved it.

No egocentric video with odometry can be reached here, so any folder of images becomes one: a
virtual camera with a 60-degree field of view looks at each image as at a flat scene, and moves
with one known motion per clip. Motions (rates per frame, before a random speed factor per clip
and a little noise per frame):

    still                     nothing
    pan-left / pan-right      yaw -/+ (the view slides sideways over the scene)
    tilt-up / tilt-down       pitch +/- (the view slides up or down)
    zoom-in / zoom-out        forward +/- (moving toward or away from a flat scene is a zoom)
    roll-left / roll-right    roll -/+ (rotation about the line of sight)

Written to OUT (class folders of the source are kept):

    OUT/[CLASS/]clip-000000/000000.png ...   the frames
    OUT/[CLASS/]clip-000000.csv              frame,yaw,pitch,roll,forward: degrees per frame for
                                             yaw, pitch, roll; relative change of the distance
                                             to the scene per frame (log) for forward. Row t is
                                             the motion from frame t-1 to frame t (row 0: zeros).
    OUT/clips.csv                            clip,motion,source: the known motion of each clip

Everything is a function of the seed and the source (same inputs, same bytes).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..console import progress_bar
from ..data.decode import warn_skipped
from ..data.sources import open_source
from ..errors import UserError
from . import new_output_folder

COLUMNS = ("yaw", "pitch", "roll", "forward")
FIELD_OF_VIEW = 60.0  # degrees across the view
MOTIONS = {  # direction of (yaw, pitch, roll, forward)
    "still": (0, 0, 0, 0), "pan-left": (-1, 0, 0, 0), "pan-right": (1, 0, 0, 0),
    "tilt-up": (0, 1, 0, 0), "tilt-down": (0, -1, 0, 0), "zoom-in": (0, 0, 0, 1), "zoom-out": (0, 0, 0, -1),
    "roll-left": (0, 0, -1, 0), "roll-right": (0, 0, 1, 0),
}
RATES = np.asarray([2.4, 2.4, 4.0, 0.04])  # per frame at speed 1: 4 % of the view, 4 degrees, 4 %


@dataclass
class MotionSettings:
    frames: int = 16  # per clip
    size: int = 32  # side of the square frames, pixels
    view: float = 0.6  # side of the first view, as a fraction of the image's shorter side
    speed: float = 1.0  # scales every rate
    motions: tuple[str, ...] = tuple(MOTIONS)
    clips_per_image: int = 1
    max_images: int = 0  # 0: every image of the source
    seed: int = 0


def motor_readings(motion: str, frames: int, speed: float, rng: np.random.Generator) -> np.ndarray:
    """(frames, 4) readings: the motion's rates times a speed factor in [0.8, 1.2], with 5 %
    noise per frame; row 0 is zero (no motion before the first frame)."""
    direction = np.asarray(MOTIONS[motion], dtype=np.float64)
    factor = speed * rng.uniform(0.8, 1.2)
    noise = 1 + 0.05 * rng.standard_normal((frames, 4))
    readings = direction * RATES * factor * noise
    readings[0] = 0
    return readings


def camera_path(readings: np.ndarray, view: float) -> np.ndarray:
    """(frames, 4) camera states (x, y, side, angle in degrees), in units of the image side, the
    path centred on the image and shrunk if it would leave it."""
    yaw, pitch, roll, forward = readings.T
    side = view * np.exp(-np.cumsum(forward))  # moving forward: the view shrinks
    angle = np.cumsum(roll)
    step = side / FIELD_OF_VIEW  # image units per degree of yaw at the current distance
    x, y = np.cumsum(yaw * step), np.cumsum(-pitch * step)
    reach = side / 2 * (np.abs(np.cos(np.radians(angle))) + np.abs(np.sin(np.radians(angle))))
    width = max((x + reach).max() - (x - reach).min(), (y + reach).max() - (y - reach).min())
    shrink = min(1.0, 0.98 / width)  # keep every view inside the image
    x, y, side, reach = x * shrink, y * shrink, side * shrink, reach * shrink
    x = x + 0.5 - ((x + reach).max() + (x - reach).min()) / 2
    y = y + 0.5 - ((y + reach).max() + (y - reach).min()) / 2
    return np.stack([x, y, side, angle], axis=1)


def render(image: Image.Image, state: np.ndarray, size: int) -> Image.Image:
    """The camera's view of `image` (a square) at `state` = (x, y, side, angle)."""
    x, y, side, angle = state
    n = image.size[0]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    scale = side * n / size  # source pixels per output pixel
    # Output pixel (X, Y) -> source (a X + b Y + c0, d X + e Y + f0): rotate and scale about the centre.
    half = size / 2
    a, b, d, e = scale * c, -scale * s, scale * s, scale * c
    c0 = x * n - a * half - b * half
    f0 = y * n - d * half - e * half
    return image.transform((size, size), Image.AFFINE, (a, b, c0, d, e, f0), resample=Image.BICUBIC)


def _square(data: bytes) -> Image.Image | None:
    """The largest centred square of the image, or None when the bytes are not a decodable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
    except Exception:  # noqa: BLE001 - not an image
        return None
    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return img.crop((left, top, left + side, top + side))


def make_motion_clips(source_path: str | Path, out: str | Path, settings: MotionSettings,
                      show_progress: bool = True) -> dict:
    """Write clips of a camera moving over the images of `source_path` into `out`."""
    unknown = [m for m in settings.motions if m not in MOTIONS]
    if unknown:
        raise UserError(f"unknown motion {unknown[0]!r}; valid: {', '.join(MOTIONS)}")
    if settings.frames < 2:
        raise UserError("--frames must be at least 2")
    source = open_source(source_path)
    out = new_output_folder(out)
    classes = source.classes
    if settings.max_images and settings.max_images < len(source.names):  # spread over the classes
        pick = np.linspace(0, len(source.names) - 1, settings.max_images).round().astype(int)
        source = dataclasses.replace(source, names=[source.names[i] for i in pick])
    rng = np.random.default_rng(settings.seed)
    index, skipped = [], []
    bar = progress_bar(len(source.names) * settings.clips_per_image, "rendering clips", unit="clip",
                       enabled=show_progress)
    for name, data in source.read():
        image = _square(data)
        if image is None:
            skipped.append(name)
            bar.update(settings.clips_per_image)
            continue
        folder = out / name.split("/", 1)[0] if classes else out
        for _ in range(settings.clips_per_image):
            motion = settings.motions[len(index) % len(settings.motions)]
            readings = motor_readings(motion, settings.frames, settings.speed, rng)
            clip = f"clip-{len(index):06d}"
            _write_clip(folder, clip, image, camera_path(readings, settings.view), readings, settings.size)
            index.append((str((folder / clip).relative_to(out)), motion, name))
            bar.update(1)
    bar.close()
    if len(skipped) == len(source.names):
        raise UserError(f"none of the {len(skipped):,} images in {source.describe()!r} could be decoded; "
                        f"give --from a folder (or tar) of images")
    warn_skipped(sorted(skipped), len(source.names), source.describe())
    with open(out / "clips.csv", "w", newline="") as f:
        csv.writer(f).writerows([("clip", "motion", "source"), *index])
    return {"out": str(out), "clips": len(index), "frames": settings.frames, "motions": list(settings.motions)}


def _write_clip(folder: Path, clip: str, image: Image.Image, path: np.ndarray, readings: np.ndarray,
                size: int) -> None:
    (folder / clip).mkdir(parents=True, exist_ok=True)
    for t, state in enumerate(path):
        render(image, state, size).save(folder / clip / f"{t:06d}.png")
    with open(folder / f"{clip}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("frame", *COLUMNS))
        writer.writerows((t, *(f"{v:.6f}" for v in row)) for t, row in enumerate(readings))
