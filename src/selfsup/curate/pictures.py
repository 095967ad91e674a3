"""Picture grids for checking a curation by eye: one row per group or seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.decode import decode_image
from ..viz import pyplot, save_figure, text_font

COLUMN_INCHES = 1.3  # each image's column in a picture
TITLE_POINTS = 6  # the size of the file names over them
TITLE_WIDTH = COLUMN_INCHES * 72 - 4  # points a file name may take: its column, less a gap to the next


def draw_rows(rows: list[list[tuple]], out: Path, title: str, size: int = 64, bands=None) -> Path:
    """A PNG with one row per list of (source, name) or (source, name, label); each image decoded at
    `size` pixels (of TIFFs, `bands`, as the encoder saw them), titled with its file name
    (shortened from the middle, see `_short`) and label."""
    rows = [r for r in rows if r] or [[]]
    pixels = _decode_all(rows, size, bands)
    cols = max(1, max(len(r) for r in rows))
    height = 1.6 * len(rows) + 0.4  # inches: the rows (each image under its two-line title), and the title strip
    fig, axes = pyplot().subplots(len(rows), cols, figsize=(COLUMN_INCHES * cols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (source, name, *label) in enumerate(row):
            axes[r, c].imshow(pixels.get((id(source), name), np.zeros((size, size, 3), np.uint8)))
            axes[r, c].set_title("\n".join([_short(name), *label]), fontsize=TITLE_POINTS)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # the rows below the title, however many
    return save_figure(fig, out, dpi=100)


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
    """`name` as it fits `width` points written at TITLE_POINTS: whole where it fits, else
    shortened from the middle, keeping its first folder and its file name (`patient_07/…/img_009.png`:
    the class or patient, and which file) and as many of the folders between as fit, those nearest
    the first before the others. Where even that is too wide, the first folder is cut in the middle
    of its letters, and the file name too where it alone nearly fills the width."""
    parts = [p for p in name.split("/") if p] or [name]
    if _points(name) <= width or len(parts) == 1:
        return _cut_middle(name, width)
    folders = len(parts) - 1
    kept = [(i, j) for i in range(1, folders + 1) for j in range(i + 1, folders + 1)  # parts[i:j] left out
            if _points("/".join(parts[:i] + ["…"] + parts[j:])) <= width]
    if not kept:  # the first folder cut in its middle to leave room for the file name, else both
        between = "/…/" if folders > 1 else "/"
        room = width - _points(between + parts[-1])
        if room >= _points(parts[0][:2] + "…"):
            return _cut_middle(parts[0], room) + between + parts[-1]
        return _cut_middle(parts[0] + between + parts[-1], width)
    i, j = max(kept, key=lambda k: (k[0] - k[1], k[0]))  # the fewest folders left out, then the most kept before
    return "/".join(parts[:i] + ["…"] + parts[j:])


def _cut_middle(text: str, width: float) -> str:
    """`text` with characters from its middle replaced by one … until it fits `width` points."""
    if _points(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = (keep + 1) // 2
        cut = text[:head] + "…" + text[len(text) - (keep - head):]
        if _points(cut) <= width:
            return cut
    return "…"


def _points(text: str) -> float:
    """The width in points of `text` written at TITLE_POINTS in the titles' font, DejaVu Sans."""
    return text_font(100).getlength(text) * TITLE_POINTS / 100
