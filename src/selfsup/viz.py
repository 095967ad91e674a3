"""Pictures of a run: training curves from metrics.jsonl, and grids of images."""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

from .outputs import atomic_path

TITLE_HEIGHT = 16  # pixels of the band above a grid that holds its column titles


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed. A letter its font
    lacks (DejaVu Sans has Latin, Greek and Cyrillic, not CJK) is drawn as a box without a
    `UserWarning: Glyph ... missing from font(s)` line for each: a class or file name is data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return plt


@functools.lru_cache(maxsize=None)
def text_font(size: int = 11):
    """The font for text that PIL draws into pictures: DejaVu Sans, the TrueType font matplotlib
    ships, so that 'Ödem' shows as itself (PIL's default font draws letters outside ASCII as
    boxes; CJK is a box in DejaVu Sans too); PIL's default where it cannot be found."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager
        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=False)
        return ImageFont.truetype(path, size)
    except (ImportError, ValueError, OSError):
        return ImageFont.load_default()


def fitted(draw, text: str, font, width: float) -> str:
    """`text` cut at its end to fit `width` pixels when drawn in `font`."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def save_figure(fig, out: Path, dpi: int, fmt: str = "png") -> Path:
    """Write `fig` to `out` atomically (a figure may be redrawn while a run goes on) and close it,
    also when writing fails: pyplot keeps every open figure alive until it is closed."""
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)  # the format is not read from the temporary name's suffix
    finally:
        pyplot().close(fig)
    return out


def evenly_spaced(items, count: int = 8):
    """`count` items spread evenly from the first to the last (all of them when there are no more):
    a fixed sample that crosses a dataset stored in name order, hence class by class, rather
    than `count` images of its first class."""
    import numpy as np

    items = np.asarray(items)
    if len(items) <= count:
        return items
    return items[np.linspace(0, len(items) - 1, count).round().astype(np.int64)]


def plot_training_curves(metrics: list[dict], out: str | Path) -> Path | None:
    """A PNG with one panel per logged quantity (loss, learning rate, collapse monitor, kNN),
    written atomically (it is redrawn while a run goes on)."""
    if not metrics:
        return None
    plt = pyplot()
    panels = [k for k in ("loss", "lr", "std_ratio", "effective_rank", "knn_top1", "images_per_s")
              if any(k in m for m in metrics)]
    panels += sorted({k for m in metrics for k in m} - set(panels) - {"epoch", "step", "weight_decay", "epoch_seconds"})
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        points = [(m["epoch"], m[key]) for m in metrics if key in m and isinstance(m[key], (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, Path(out), dpi=90)


def save_image_grid(rows: list, out: str | Path, min_side: int = 96, titles: list[str] | None = None) -> Path:
    """A PNG of images in rows: each row a (B, 3, H, W) tensor with values in [0, 1], 2-pixel white
    gaps between images; small images are enlarged (nearest neighbour, whole factors) to at least
    `min_side` pixels so that 32-pixel images can be seen. `titles`, one per column, are written in
    a band of TITLE_HEIGHT pixels above. Written atomically (it is redrawn while a run goes on)."""
    import numpy as np
    from PIL import Image

    import torch

    grid = torch.stack([row.detach().float().cpu().clamp(0, 1) for row in rows])  # (R, B, 3, H, W)
    r, b, _, h, w = grid.shape
    zoom = max(1, -(-min_side // max(h, w)))
    grid = grid.repeat_interleave(zoom, dim=3).repeat_interleave(zoom, dim=4)
    grid = torch.nn.functional.pad(grid, (0, 2, 0, 2), value=1.0)  # gap right of and below each image
    grid = grid.permute(0, 3, 1, 4, 2).reshape(r * (h * zoom + 2), b * (w * zoom + 2), 3)[:-2, :-2]
    picture = Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))
    if titles:
        picture = _with_titles(picture, titles, w * zoom + 2)
    out = Path(out)
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG")
    return out


def _with_titles(picture, titles: list[str], column_width: int):
    """`picture` below a white band with each title centred over its column."""
    from PIL import Image, ImageDraw

    framed = Image.new("RGB", (picture.width, picture.height + TITLE_HEIGHT), "white")
    framed.paste(picture, (0, TITLE_HEIGHT))
    draw, font = ImageDraw.Draw(framed), text_font(11)
    for c, title in enumerate(titles):
        x = c * column_width + (column_width - 2 - draw.textlength(title, font=font)) / 2
        draw.text((max(0, x), 2), title, fill="black", font=font)
    return framed
