"""Picture grids for checking a curation by eye: one row per group or seed."""
from __future__ import annotations

from pathlib import Path

from ..data.decode import decode_image
from ..viz import MARK, Cell, GridLayout, picture_grid, save_png, short_name

# Each image decoded at 64 pixels is drawn at 128 (each pixel repeated), below its two lines at 10 px
# (matplotlib drew it at about 113 px below lines of 8); cells are 148 px wide, 14.8 times the font
# size, as the columns of 1.3 inches were for names at 6 points.
CELL = GridLayout(side=128, lines=2, above=True, frame=3, room=14, gap=4, band=26, font_px=10)
TITLE_WIDTH = CELL.width  # pixels a file name may take: its cell's width


def draw_rows(rows: list[list[tuple]], out: Path, title: str, size: int = 64, bands=None,
              first_marked: bool = False) -> Path:
    """A PNG with one row per list of (source, name) or (source, name, label); each image decoded at
    `size` pixels (of TIFFs, `bands`, as the encoder saw them), titled with its file name
    (shortened from the middle, see `viz.short_name`) and label; `first_marked`: the first image of each
    row (a query, a seed, a group's kept image) framed in MARK."""
    rows = [r for r in rows if r] or [[]]
    pixels = _decode_all(rows, size, bands)
    cells = [[Cell(pixels.get((id(source), name)), (short_name(name, TITLE_WIDTH, CELL.font_px), *label),
                   MARK if first_marked and c == 0 else None)
              for c, (source, name, *label) in enumerate(row)] for row in rows]
    return save_png(picture_grid(cells, CELL, title), out)


def _decode_all(rows: list[list[tuple]], size: int, bands) -> dict:
    """{(id(source), name): pixels}, reading each source once (one pass over a tar)."""
    wanted: dict[int, tuple] = {}
    for row in rows:
        for source, name, *_ in row:
            wanted.setdefault(id(source), (source, set()))[1].add(name)
    pixels = {}
    for key, (source, names) in wanted.items():
        for name, data in source.read(sorted(names)):
            decoded = decode_image(data, size, bands)
            if decoded is not None:
                pixels[(key, name)] = decoded[0]
    return pixels
