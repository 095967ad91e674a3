"""Seconds to draw the image grids of `selfsup cluster`, `search`, `select`, `curate` and `report`,
on synthetic images (no encoder, no embedding): the picture functions alone, with the rows and
columns each command draws (cluster: one row per cluster up to CLUSTERS_DRAWN, `--shown` images).

    python bench/picture_speed.py [--sides 32 224] [--clusters 20 100] [--out FOLDER]

Each image is a PNG file's bytes of `side` x `side` pixels, read from a source as a folder's
would be, so a time includes decoding them (at 64 pixels) as the commands do. `--out` keeps the
pictures, to look at."""
from __future__ import annotations

import argparse
import inspect
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.curate.pictures import draw_rows
from selfsup.explore import CLUSTERS_DRAWN, QUERIES_DRAWN
from selfsup.report.figures import neighbour_grid
from selfsup.selection import DRAWN_PER_ROW, ROWS_DRAWN


# draw_rows marks the first image of a row (the query, the kept image) since it draws with Pillow:
# asked only where it can, so that the script also times the matplotlib version before it.
MARKED = {"first_marked": True} if "first_marked" in inspect.signature(draw_rows).parameters else {}


class Synthetic:
    """An image source of `count` PNGs: a colour ramp with a square whose place tells them apart."""

    def __init__(self, count: int, side: int):
        rng = np.random.default_rng(side)
        self.names = [f"class_{i % 10}/image_{i:05d}.png" for i in range(count)]
        self.files = {}
        for i, name in enumerate(self.names):
            pixels = np.zeros((side, side, 3), np.uint8)
            pixels[..., 0] = np.linspace(0, 255, side)[None, :]
            pixels[..., 1:] = rng.integers(0, 256, 2, dtype=np.uint8)
            x, y = (i * 7) % (side // 2), (i * 3) % (side // 2)
            pixels[y:y + side // 2, x:x + side // 2] = 255 - pixels[y, x]
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            self.files[name] = buffer.getvalue()

    def read(self, names):
        for name in names:
            yield name, self.files[name]


def timed(draw) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    draw()
    return time.perf_counter() - wall, time.process_time() - cpu


def cases(source: Synthetic, clusters: list[int], shown: int):
    """(label, draw(out folder)) for each command's pictures, with the rows the command draws."""
    names = iter(source.names * 100)
    def rows(count, cols, labels):
        return [[(source, next(names), labels(r, c)) for c in range(cols)] for r in range(count)]
    for k in clusters:
        cluster_rows = rows(min(k, CLUSTERS_DRAWN), shown,
                            lambda r, c: f"cluster {r} (1,234)" if c == 0 else "cos 0.87")
        yield (f"cluster --clusters {k} --shown {shown}: clusters.png",
               lambda out, rows_=cluster_rows: draw_rows(rows_, out / "clusters.png", "clusters: the images nearest"))
    search_rows = rows(QUERIES_DRAWN, 9, lambda r, c: "query" if c == 0 else "cos 0.91")
    yield "search --k 8: neighbours.png", lambda out: draw_rows(search_rows, out / "neighbours.png", "queries",
                                                                 **MARKED)
    select_rows = rows(ROWS_DRAWN, DRAWN_PER_ROW, lambda r, c: f"#{r * DRAWN_PER_ROW + c + 1}")
    yield "select --budget 64: to_label.png", lambda out: draw_rows(select_rows, out / "to_label.png", "to label")
    duplicate_rows = rows(8, 9, lambda r, c: "kept" if c == 0 else "cos 0.962")
    yield "curate: duplicates.png", lambda out: draw_rows(duplicate_rows, out / "duplicates.png", "near-duplicates",
                                                          **MARKED)
    retrieved_rows = [[cell[:2] for cell in row] for row in rows(6, 9, lambda r, c: "")]
    yield "curate: retrieved.png", lambda out: draw_rows(retrieved_rows, out / "retrieved.png", "retrieved",
                                                         **MARKED)


def report_case(side: int):
    """The report's neighbour grid: 6 queries x 8 neighbours of (side, side, 3) images, as it draws them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    neighbours = rng.integers(0, 64, (6, 8))
    return lambda: neighbour_grid(images[:6], labels[:6], images, neighbours, labels, [f"class {c}" for c in range(10)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--clusters", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--shown", type=int, default=8)
    parser.add_argument("--out", type=Path, help="keep the pictures here (one folder per side)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            out = (args.out or Path(tmp)) / f"side{side}"
            out.mkdir(parents=True, exist_ok=True)
            source = Synthetic(400, side)
            for label, draw in cases(source, args.clusters, args.shown):
                wall, cpu = timed(lambda: draw(out))
                print(f"{side:>3} px  {label:<48} {wall:6.2f} s wall  {cpu:6.2f} s CPU", flush=True)
            wall, cpu = timed(report_case(side))
            print(f"{side:>3} px  {'report: nearest-neighbour grid (6 x 8)':<48} {wall:6.2f} s wall  {cpu:6.2f} s CPU",
                  flush=True)


if __name__ == "__main__":
    main()
