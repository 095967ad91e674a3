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


COLUMNS = ("image", "kind", "angle", "success", "dx", "dy")  # the ones read; others are kept for people


def open_interactions(path: str | Path, size: int, cache_dir=None, workers: int = 0, show_progress: bool = True,
                      **_) -> InteractionCache:
    root = Path(path).expanduser()
    table = root / "interactions.csv"
    if not table.is_file() or not (root / "images").is_dir():
        raise UserError(f"{str(root)!r} holds no interactions.csv and images/; "
                        f"`selfsup synth interaction --out NEW_FOLDER` writes such a folder")
    records = read_interactions(table)
    cache = open_images(root / "images", size, cache_dir=cache_dir, workers=workers, show_progress=show_progress)
    missing = [n for n in cache.names if n not in records]
    if missing:
        raise UserError(f"{missing[0]!r} has no row in {table}; write one row per image")
    rows = [records[n] for n in cache.names]
    fields = {k: getattr(cache, k) for k in ImageCache.__dataclass_fields__}
    return InteractionCache(**fields, kind=np.asarray([r[0] for r in rows], dtype=np.int64),
                            angle=np.asarray([r[1] for r in rows], dtype=np.float32),
                            success=np.asarray([r[2] for r in rows], dtype=np.float32),
                            displacement=np.asarray([r[3] for r in rows], dtype=np.float32))


def read_interactions(table: Path) -> dict[str, tuple[int, float, float, tuple[float, float]]]:
    """image name -> (kind index, angle, success (NaN but for grasps), (dx, dy)); a UserError that
    names the line for anything else. (utf-8-sig: spreadsheets save a byte-order mark.)"""
    how = f"columns {','.join(COLUMNS)}, kind one of {', '.join(KINDS)}, success 0 or 1 for grasps"
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise UserError(f"{table} has no column {', '.join(map(repr, absent))} (its header: "
                            f"{','.join(reader.fieldnames or [])}); it needs {how}")
        records = {}
        for row in reader:
            line = reader.line_num
            header = len(reader.fieldnames)
            cells = header + len(row[None]) if None in row else sum(v is not None for v in row.values())
            if cells != header:
                raise UserError(f"{table}, line {line}: {cells} cells where the header has {header}; write one "
                                f"cell per column")
            try:
                kind = KINDS.index(row["kind"])
                angle, dx, dy = float(row["angle"]), float(row["dx"]), float(row["dy"])
                success = float(row["success"]) if row["success"] != "" else np.nan
            except ValueError:
                raise UserError(f"{table}, line {line}: cannot read {row!r}; it needs {how}") from None
            outcome_ok = success in (0, 1) or (np.isnan(success) and kind != KINDS.index("grasp"))
            if not all(np.isfinite(v) for v in (angle, dx, dy)) or not outcome_ok:  # a grasp without one: no label
                raise UserError(f"{table}, line {line}: angle, dx and dy must be finite numbers and success 0 or "
                                f"1 for a grasp, 0, 1 or empty otherwise (got kind {row['kind']}, angle {row['angle']}, dx {row['dx']}, dy {row['dy']}, "
                                f"success {row['success']!r})")
            records[row["image"]] = (kind, angle, success, (dx, dy))
    return records
