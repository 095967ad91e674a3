"""Training samples made of frames of one clip, and the views of them.

- `order_tuples`: Misra, Zitnick & Hebert 2016's tuples. From a window of high motion, 5 frames
  a < b < c < d < e are drawn; (b, c, d) and its reverse (d, c, b) are positives; (b, a, d) and
  (b, e, d), and their reverses, negatives: the middle frame is out of place. Tuples of 5 work
  the same way with 7 frames. A tuple never crosses clips.
- `motion_pairs` and `kmeans`: Jayaraman & Grauman 2015's frame pairs, each with the ego-motion
  read from the motor signal, grouped into motion classes by k-means.
- `clip_view`: one random crop per sample, shared by all its frames (so the crop itself says
  nothing about their order or motion), resized and normalised on the device.

Samplers work on numpy with a seeded `np.random.Generator` (they run once, before training).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..console import warn
from ..data.video import VideoCache
from ..errors import UserError
from . import ops
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, to_float


def usable_clips(cache: VideoCache, min_frames: int, what: str, need_motion: bool = False) -> list[np.ndarray]:
    """Rows (in frame order) of the clips that can serve `what`: every frame decoded, at least
    `min_frames` frames and, with `need_motion`, a motion CSV. The others are skipped and counted
    in one warning; none left is an error that says why and what to do."""
    kept, skipped = [], {}  # (why, what to do) -> names of the clips skipped for it
    for c, rows in enumerate(cache.clip_rows()):
        if c in cache.incomplete:  # a missing frame shifts the others' gaps and motion rows
            reason = ("with a frame that could not be decoded", "replace the frames that cannot be decoded")
        elif c in cache.gapped:
            reason = ("with missing frame numbers", "restore the missing frames, or number the frames 0, 1, 2, ...")
        elif len(rows) < min_frames:
            reason = (f"with fewer than {min_frames} frames", "give longer clips")
        elif need_motion and np.isnan(cache.motion[rows]).any():
            reason = ("without a motion CSV", "write a CLIP.csv (frame,READING,...) beside each clip")
        else:
            kept.append(rows)
            continue
        skipped.setdefault(reason, []).append(cache.clip_names[c])
    counts = ", ".join(f"{len(names):,} {why} (e.g. {names[0]!r})" for (why, _), names in skipped.items())
    if not kept:
        raise UserError(f"no clip in {cache.source} can be used for {what}: {counts}; "
                        f"{'; '.join(fix for _, fix in skipped)}")
    if skipped:
        warn(f"skipped {len(cache.clip_names) - len(kept):,} of {len(cache.clip_names):,} clips that cannot be "
             f"used for {what}: {counts}")
    return kept


def frame_motion(images: np.ndarray, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(T,) mean absolute pixel change from the previous frame (0 for the first), a cheap
    stand-in for the paper's optical-flow magnitude; read `chunk` frames at a time."""
    change = np.zeros(len(rows))
    for start in range(1, len(rows), chunk):
        x = images[rows[start - 1:start + chunk]].astype(np.float32)  # (chunk + 1, S, S, 3)
        change[start:start + len(x) - 1] = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
    return change


def change_ratio(images: np.ndarray, clips: list[np.ndarray], seed: int, pairs: int = 256) -> float | None:
    """Mean pixel change between consecutive frames over that between frames of different clips,
    at up to `pairs` random places: well below 1 for video, about 1 for folders of unrelated
    photos taken for clips. None with fewer than two clips of two frames."""
    clips = [rows for rows in clips if len(rows) >= 2]
    if len(clips) < 2:
        return None
    rng = np.random.default_rng(seed)
    consecutive, unrelated = [], []
    for _ in range(pairs):
        a, b = rng.choice(len(clips), size=2, replace=False)
        t = rng.integers(1, len(clips[a]))
        frame = images[clips[a][t]].astype(np.float32)
        consecutive.append(np.abs(frame - images[clips[a][t - 1]]).mean())
        unrelated.append(np.abs(frame - images[clips[b][rng.integers(len(clips[b]))]]).mean())
    return float(np.mean(consecutive) / max(np.mean(unrelated), 1e-6))


# ---------------------------------------------------------------------------------------------
# Temporal order (Misra et al. 2016)


def sorted_positions(span: int, count: int, min_gap: int, rng: np.random.Generator) -> np.ndarray:
    """`count` increasing positions in [0, span] with consecutive ones at least `min_gap` apart,
    uniformly among all such sets (draw from a shrunk range, then spread by the gaps)."""
    room = span - (count - 1) * (min_gap - 1)
    picks = np.sort(rng.choice(room + 1, size=count, replace=False))
    return picks + np.arange(count) * (min_gap - 1)


def order_tuple(frames: np.ndarray, positive: bool, reverse: bool, outside: int) -> np.ndarray:
    """From k+2 increasing frames f_0 < ... < f_{k+1}: (f_1, ..., f_k), or, for a negative, the
    same with its middle frame replaced by f_0 (outside=0) or f_{k+1} (outside=1); reversed on
    request. Both orders of an ordered tuple are positives, as in the paper."""
    k = len(frames) - 2
    tuple_ = frames[1:k + 1].copy()
    if not positive:
        tuple_[k // 2] = frames[0] if outside == 0 else frames[k + 1]
    return tuple_[::-1].copy() if reverse else tuple_


def is_ordered(frames: np.ndarray) -> bool:
    """The paper's definition of a positive: strictly increasing or strictly decreasing."""
    steps = np.diff(frames)
    return bool((steps > 0).all() or (steps < 0).all())


def order_tuples(cache: VideoCache, length: int, per_clip: int, max_span: int, min_gap: int,
                 positive_fraction: float, motion_quantile: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, length) of cache rows, labels (n,) 1 for ordered, 0 for middle out of place)."""
    rng = np.random.default_rng(seed)
    need = (length + 2 - 1) * min_gap + 1  # frames a window must span
    clips = usable_clips(cache, need, f"temporal-order tuples of {length} (frame gap {min_gap})")
    windows = []  # (clip, start, span, motion)
    for c, rows in enumerate(clips):
        motion = frame_motion(cache.images, rows)
        span = min(max_span, len(rows) - 1)
        for start in range(0, len(rows) - span):
            windows.append((c, start, span, motion[start + 1:start + span + 1].mean()))
    scores = np.asarray([w[3] for w in windows])
    threshold = np.quantile(scores, motion_quantile)
    moving = {}
    for c, start, span, score in windows:
        if score >= threshold and score > 0:
            moving.setdefault(c, []).append((start, span))
    if not moving:
        raise UserError(f"no clip in {cache.source} has frames that change; temporal order needs motion")
    rows_out, labels = [], []
    for c in sorted(moving):
        for _ in range(per_clip):
            start, span = moving[c][rng.integers(len(moving[c]))]
            frames = start + sorted_positions(span, length + 2, min_gap, rng)
            positive = rng.random() < positive_fraction
            tuple_ = order_tuple(frames, positive, bool(rng.integers(2)), int(rng.integers(2)))
            rows_out.append(clips[c][tuple_])
            labels.append(int(positive))
    return np.asarray(rows_out, dtype=np.int64), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Ego-motion (Jayaraman & Grauman 2015)


@dataclass
class MotionPairs:
    rows: np.ndarray  # (n, 2) cache rows (earlier frame, later frame), same clip
    motion: np.ndarray  # (n, M) summed motor readings from the earlier frame to the later one


def motion_pairs(cache: VideoCache, gap: int) -> MotionPairs:
    """Every pair of frames `gap` apart in a clip with motion signals; the pair's ego-motion is
    the sum of the readings of frames i+1..i+gap (each row is the motion since the previous frame)."""
    if cache.motion is None:
        raise UserError(f"egomotion needs motion signals: a CLIP.csv (frame,READING,...) beside each clip in "
                        f"{cache.source}; `selfsup synth motion` writes clips with them")
    clips = usable_clips(cache, gap + 1, f"frame pairs {gap} apart", need_motion=True)
    pairs, motion = [], []
    for rows in clips:
        readings = cache.motion[rows].astype(np.float64)  # (T, M)
        cumulative = np.cumsum(readings, axis=0)
        for i in range(len(rows) - gap):
            pairs.append((rows[i], rows[i + gap]))
            motion.append(cumulative[i + gap] - cumulative[i])
    return MotionPairs(np.asarray(pairs, dtype=np.int64), np.asarray(motion, dtype=np.float64))


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 8, iterations: int = 100) -> np.ndarray:
    """(n,) cluster of each row of `x` (n, d): Lloyd's algorithm from k-means++ seeds, the best
    of `restarts` by within-cluster squared distance. Clusters are numbered by their first row."""
    n = len(x)
    if n < k:
        raise UserError(f"{n} motion samples cannot make {k} motion classes; lower egomotion.motion_classes")
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):  # k-means++: far points are likelier seeds
            d2 = ((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
            centres.append(x[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(n)])
        centres = np.asarray(centres)
        for _ in range(iterations):
            assign = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            moved = np.asarray([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
            if np.allclose(moved, centres):
                break
            centres = moved
        cost = ((x - centres[assign]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = assign, cost
    _, first = np.unique(best, return_index=True)
    renumber = np.empty(k, dtype=np.int64)
    renumber[best[np.sort(first)]] = np.arange(len(first))
    return renumber[best]


def reading_scale(motion: np.ndarray) -> np.ndarray:
    """(M,) each reading's deviation over all pairs (1 for a constant reading): the readings are
    divided by it, so yaw in degrees and forward speed weigh alike in the clustering."""
    std = motion.std(axis=0)
    return np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------------------------------------
# Views


def clip_view(images: torch.Tensor, size: int, crop_scale: tuple[float, float], flip: bool,
              generator: torch.Generator) -> torch.Tensor:
    """(B, k, S, S, 3) uint8 -> (B, k, 3, size, size) normalised float: one random resized crop
    (and flip, if asked) per sample, the same for all k frames of it."""
    b, k, s = images.shape[:3]
    dev = images.device
    x = to_float(images.flatten(0, 1))  # (B*k, 3, S, S)
    boxes = ops.sample_crop_boxes(b, s, s, crop_scale, (3 / 4, 4 / 3), generator, dev)
    x = ops.crop_and_resize(x, boxes.repeat_interleave(k, dim=0), size)
    if flip:
        x = ops.flip_horizontal(x, ops.bernoulli(b, 0.5, generator, dev).repeat_interleave(k))
    return ops.normalize(x, IMAGENET_MEAN, IMAGENET_STD).view(b, k, 3, size, size)
