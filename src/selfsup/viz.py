"""Pictures of a run: training curves from metrics.jsonl, and grids of images."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def short_name(name: str, width: float, font_px: int) -> str:
    """`name` as it fits `width` pixels written in text_font(font_px): whole where it fits, else
    shortened from the middle, keeping its first folder and its file name (`patient_07/…/img_009.png`:
    the class or patient, and which file) and as many of the folders between as fit, those nearest
    the first before the others. Where even that is too wide, the first folder is cut in the middle
    of its letters, and the file name too where it alone nearly fills the width."""
    parts = [p for p in name.split("/") if p] or [name]
    if _text_width(name, font_px) <= width or len(parts) == 1:
        return _cut_middle(name, width, font_px)
    folders = len(parts) - 1
    kept = [(i, j) for i in range(1, folders + 1) for j in range(i + 1, folders + 1)  # parts[i:j] left out
            if _text_width("/".join(parts[:i] + ["…"] + parts[j:]), font_px) <= width]
    if not kept:  # the first folder cut in its middle to leave room for the file name, else both
        between = "/…/" if folders > 1 else "/"
        room = width - _text_width(between + parts[-1], font_px)
        if room >= _text_width(parts[0][:2] + "…", font_px):
            return _cut_middle(parts[0], room, font_px) + between + parts[-1]
        return _cut_middle(parts[0] + between + parts[-1], width, font_px)
    i, j = max(kept, key=lambda k: (k[0] - k[1], k[0]))  # the fewest folders left out, then the most kept before
    return "/".join(parts[:i] + ["…"] + parts[j:])


def _cut_middle(text: str, width: float, font_px: int) -> str:
    """`text` with characters from its middle replaced by one … until it fits `width` pixels."""
    if _text_width(text, font_px) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = (keep + 1) // 2
        cut = text[:head] + "…" + text[len(text) - (keep - head):]
        if _text_width(cut, font_px) <= width:
            return cut
    return "…"


def _text_width(text: str, font_px: int) -> float:
    """The width in pixels of `text` written in text_font(font_px)."""
    return text_font(font_px).getlength(text)


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
    from matplotlib.ticker import MaxNLocator

    panels = [k for k in ("loss", "lr", "std_ratio", "effective_rank", "knn_top1", "images_per_s")
              if any(k in m for m in metrics)]
    panels += sorted({k for m in metrics for k in m} - set(panels) - {"epoch", "step", "weight_decay", "epoch_seconds"})
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        points = [(m["epoch"], m[key]) for m in metrics if key in m and isinstance(m[key], (int, float))]
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs: no 1.2, 1.4 ticks on a short run
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
            if len(set(xs)) == 1:  # one epoch: the locator alone would tick 0.96, 0.98, ...
                ax.set_xticks(xs[:1])
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
    import torch

    grid = torch.stack([row.detach().float().cpu().clamp(0, 1) for row in rows])  # (R, B, 3, H, W)
    pixels = (grid.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)  # (R, B, H, W, 3)
    side = max(pixels.shape[2:4]) * max(1, -(-min_side // max(pixels.shape[2:4])))
    layout = GridLayout(side=side, band=TITLE_HEIGHT if titles else 0)
    return save_png(picture_grid([[Cell(image) for image in row] for row in pixels], layout,
                                 column_titles=titles or ()), Path(out))


MARK = (0, 0, 0)  # the frame of a marked image in a grid: a query, a seed, a duplicate group's kept image


@dataclass(frozen=True)
class Cell:
    """One image of a grid: (H, W, 3) uint8 pixels (None: a black square, an image that could not
    be read), the lines of text written with it in `ink`, and `mark`, the colour of a frame round it."""
    pixels: np.ndarray | None
    lines: tuple[str, ...] = ()
    mark: tuple[int, int, int] | None = None
    ink: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where a grid puts its images, in pixels. A cell holds an image of `side` x `side` inside
    `frame` pixels kept for a marked image's frame (so that marked and plain images line up), with
    `lines` lines of text at `font_px` above (`above`) or below it, and `room` pixels more width for
    the text; cells are `gap` apart, below a band of `band` for the title."""
    side: int
    lines: int = 0
    above: bool = False
    frame: int = 0
    room: int = 0
    gap: int = 2
    band: int = 0
    font_px: int = 10

    @property
    def line_height(self) -> int:
        return self.font_px + 2

    @property
    def width(self) -> int:
        """Of a cell: also the most its text may take."""
        return self.side + 2 * self.frame + self.room

    @property
    def height(self) -> int:
        return self.side + 2 * self.frame + self.lines * self.line_height

    def cell(self, r: int, c: int) -> tuple[int, int]:
        """(x, y) of the top left corner of row r's cell c."""
        return c * (self.width + self.gap), self.band + r * (self.height + self.gap)

    def image(self, r: int, c: int) -> tuple[int, int]:
        """(x, y) of the top left corner of the image in row r's cell c."""
        x, y = self.cell(r, c)
        return x + self.room // 2 + self.frame, y + self.frame + (self.lines * self.line_height if self.above else 0)

    def size(self, rows: int, cols: int) -> tuple[int, int]:
        """(width, height) of a grid of `rows` x `cols` cells and its band."""
        return cols * (self.width + self.gap) - self.gap, self.band + rows * (self.height + self.gap) - self.gap


def picture_grid(rows: list[list[Cell]], layout: GridLayout, title: str = "", column_titles=()):
    """A PIL image of `rows` of cells placed by `layout`: one white uint8 canvas with each image
    resized into its cell (see `thumbnail`) and a marked image's frame drawn round it, then its
    lines, each cut to the cell's width and centred over it; `title` centred in the band above (the
    canvas widened to hold it) or `column_titles` over their columns. One array and one drawing
    pass: a matplotlib axes per image took 10 s for 20 rows of 8."""
    from PIL import Image, ImageDraw

    cols = max([len(row) for row in rows] + [1])
    width, height = layout.size(len(rows), cols)
    title_font = text_font(13)
    width = max(width, round(title_font.getlength(title)) + 8 if title else 0)
    canvas = np.full((height, width, 3), 255, np.uint8)  # (H, W, 3)
    side, frame = layout.side, layout.frame
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = layout.image(r, c)
            if cell.mark is not None and frame:
                canvas[y - frame:y + side + frame, x - frame:x + side + frame] = cell.mark
            canvas[y:y + side, x:x + side] = thumbnail(cell.pixels, side)
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), text_font(layout.font_px)
    if title:
        draw.text(((width - title_font.getlength(title)) / 2, 4), title, fill="black", font=title_font)
    for c, text in enumerate(column_titles):
        x = layout.cell(0, c)[0] + (layout.width - draw.textlength(text, font=font)) / 2
        draw.text((max(0, x), 2), text, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = layout.cell(r, c)
            if not layout.above:
                y += side + 2 * frame
            for line in cell.lines[:layout.lines]:
                line = fitted(draw, line, font, layout.width)
                draw.text((x + (layout.width - draw.textlength(line, font=font)) / 2, y), line, fill=cell.ink,
                          font=font)
                y += layout.line_height
    return picture


def thumbnail(pixels: np.ndarray | None, side: int) -> np.ndarray:
    """(side, side, 3) uint8: `pixels` enlarged by repeating each pixel where `side` is a whole
    multiple of its sides (a 32- or 64-pixel image stays sharp), else resized (nearest neighbour
    up, area average down); black for None."""
    if pixels is None:
        return np.zeros((side, side, 3), np.uint8)
    h, w = pixels.shape[:2]
    if side % h == 0 and side % w == 0:
        return np.asarray(pixels, np.uint8).repeat(side // h, axis=0).repeat(side // w, axis=1)
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, np.uint8))
    return np.asarray(image.resize((side, side), Image.NEAREST if side > min(h, w) else Image.BOX))


def save_png(picture, out: Path) -> Path:
    """Write the PIL image `picture` to `out` as a PNG, atomically (a picture may be redrawn while a
    run goes on, and a killed write leaves no half file)."""
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG")
    return out
