"""Picture grids for checking a curation by eye: one row per group or seed."""
from __future__ import annotations

from pathlib import Path

from ..data.decode import decode_image
from ..viz import MARK, Cell, GridLayout, picture_grid, save_png, text_font

# Each image decoded at 64 pixels is drawn at 128 (each pixel repeated), below its two lines at 10 px
# (matplotlib drew it at about 113 px below lines of 8); cells are 148 px wide, 14.8 times the font
# size, as the columns of 1.3 inches were for names at 6 points.
CELL = GridLayout(side=128, lines=2, above=True, frame=3, room=14, gap=4, band=26, font_px=10)
TITLE_WIDTH = CELL.width  # pixels a file name may take: its cell's width


def draw_rows(rows: list[list[tuple]], out: Path, title: str, size: int = 64, bands=None,
              first_marked: bool = False) -> Path:
    """A PNG with one row per list of (source, name) or (source, name, label); each image decoded at
    `size` pixels (of TIFFs, `bands`, as the encoder saw them), titled with its file name
    (shortened from the middle, see `_short`) and label; `first_marked`: the first image of each
    row (a query, a seed, a group's kept image) framed in MARK."""
    rows = [r for r in rows if r] or [[]]
    pixels = _decode_all(rows, size, bands)
    cells = [[Cell(pixels.get((id(source), name)), (_short(name), *label), MARK if first_marked and c == 0 else None)
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


def _short(name: str, width: float = TITLE_WIDTH) -> str:
    """`name` as it fits `width` pixels written in the cells' font: whole where it fits, else
    shortened from the middle, keeping its first folder and its file name (`patient_07/…/img_009.png`:
    the class or patient, and which file) and as many of the folders between as fit, those nearest
    the first before the others. Where even that is too wide, the first folder is cut in the middle
    of its letters, and the file name too where it alone nearly fills the width."""
    parts = [p for p in name.split("/") if p] or [name]
    if _pixels(name) <= width or len(parts) == 1:
        return _cut_middle(name, width)
    folders = len(parts) - 1
    kept = [(i, j) for i in range(1, folders + 1) for j in range(i + 1, folders + 1)  # parts[i:j] left out
            if _pixels("/".join(parts[:i] + ["…"] + parts[j:])) <= width]
    if not kept:  # the first folder cut in its middle to leave room for the file name, else both
        between = "/…/" if folders > 1 else "/"
        room = width - _pixels(between + parts[-1])
        if room >= _pixels(parts[0][:2] + "…"):
            return _cut_middle(parts[0], room) + between + parts[-1]
        return _cut_middle(parts[0] + between + parts[-1], width)
    i, j = max(kept, key=lambda k: (k[0] - k[1], k[0]))  # the fewest folders left out, then the most kept before
    return "/".join(parts[:i] + ["…"] + parts[j:])


def _cut_middle(text: str, width: float) -> str:
    """`text` with characters from its middle replaced by one … until it fits `width` pixels."""
    if _pixels(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = (keep + 1) // 2
        cut = text[:head] + "…" + text[len(text) - (keep - head):]
        if _pixels(cut) <= width:
            return cut
    return "…"


def _pixels(text: str) -> float:
    """The width in pixels of `text` written in the cells' font, DejaVu Sans at CELL.font_px."""
    return text_font(CELL.font_px).getlength(text)
