"""Interaction records (image before, action, outcome) → the uint8 cache plus per-row arrays.

Layout (what `selfsup synth interaction` writes; see synth/interaction.py for the columns):
`ROOT/images/...png` and `ROOT/interactions.csv` with one row per image. Images in class folders
(`SHAPE-MATERIAL/`) give labels, used only to monitor and evaluate.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .cache import ImageCache, open_images

KINDS = ("grasp", "push", "poke")


@dataclass
class InteractionCache(ImageCache):
    kind: np.ndarray  # (N,) int64 index into KINDS
    angle: np.ndarray  # (N,) float32 radians: grasp angle, push or poke direction
    success: np.ndarray  # (N,) float32 grasp outcome 0/1 (NaN for other kinds)
    displacement: np.ndarray  # (N, 2) float32 the object's displacement, window widths


def open_interactions(path: str | Path, size: int, cache_dir=None, workers: int = 0, show_progress: bool = True,
                      **_) -> InteractionCache:
    root = Path(path).expanduser()
    table = root / "interactions.csv"
    if not table.is_file() or not (root / "images").is_dir():
        raise UserError(f"{str(root)!r} holds no interactions.csv and images/; "
                        f"`selfsup synth interaction --out {root}` writes such a folder")
    with open(table, newline="") as f:
        records = {r["image"]: r for r in csv.DictReader(f)}
    cache = open_images(root / "images", size, cache_dir=cache_dir, workers=workers, show_progress=show_progress)
    missing = [n for n in cache.names if n not in records]
    if missing:
        raise UserError(f"{missing[0]!r} has no row in {table}; write one row per image")
    try:
        rows = [records[n] for n in cache.names]
        kind = np.asarray([KINDS.index(r["kind"]) for r in rows], dtype=np.int64)
        success = np.asarray([float(r["success"]) if r["success"] != "" else np.nan for r in rows], dtype=np.float32)
        angle = np.asarray([float(r["angle"]) for r in rows], dtype=np.float32)
        displacement = np.asarray([(float(r["dx"]), float(r["dy"])) for r in rows], dtype=np.float32)
    except (KeyError, ValueError) as e:
        raise UserError(f"{table} has a bad row ({e}); columns: image,kind,angle,success,dx,dy,... "
                        f"with kind one of {', '.join(KINDS)}") from None
    fields = {k: getattr(cache, k) for k in ImageCache.__dataclass_fields__}
    return InteractionCache(**fields, kind=kind, angle=angle, success=success, displacement=displacement)
