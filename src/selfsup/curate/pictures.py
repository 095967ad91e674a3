"""Picture grids for checking a curation by eye: one row per group or seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.cache import decode_image
from ..viz import pyplot, save_figure


def draw_rows(rows: list[list[tuple]], out: Path, title: str, size: int = 64) -> Path:
    """A PNG with one row per list of (source, name) or (source, name, label); each image decoded at
    `size` pixels, titled with its file name and label."""
    rows = [r for r in rows if r] or [[]]
    pixels = _decode_all(rows, size)
    cols = max(1, max(len(r) for r in rows))
    height = 1.6 * len(rows) + 0.4  # inches: the rows (each image under its two-line title), and the title strip
    fig, axes = pyplot().subplots(len(rows), cols, figsize=(1.3 * cols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (source, name, *label) in enumerate(row):
            axes[r, c].imshow(pixels.get((id(source), name), np.zeros((size, size, 3), np.uint8)))
            axes[r, c].set_title("\n".join([_short(name), *label]), fontsize=6)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # the rows below the title, however many
    return save_figure(fig, out, dpi=100)


def _decode_all(rows: list[list[tuple]], size: int) -> dict:
    """{(id(source), name): pixels}, reading each source once (one pass over a tar)."""
    wanted: dict[int, tuple] = {}
    for row in rows:
        for source, name, *_ in row:
            wanted.setdefault(id(source), (source, set()))[1].add(name)
    pixels = {}
    for key, (source, names) in wanted.items():
        for name, data in source.read(sorted(names)):
            decoded = decode_image(data, size)
            if decoded is not None:
                pixels[(key, name)] = decoded[0]
    return pixels


def _short(name: str, width: int = 18) -> str:
    """The file and its folder (`airplane/0011.jpg` and `automobile/0011.jpg` differ), cut from
    the left to fit a picture's width."""
    shown = "/".join(Path(name).parts[-2:])
    return shown if len(shown) <= width else "…" + shown[-(width - 1):]
