"""Where a ViT's class token looks: self-attention maps of the last block, drawn over the images.

DINO (Caron et al. 2021, fig. 1 and 3) showed that the class token's attention in the last block
of a self-supervised ViT segments the main object without any label. `class_token_attention`
gets those weights from any selfsup ViT (or timm ViT) without touching timm's attention code: a
forward hook keeps the output of the last block's qkv projection, and the class token's row of
softmax(q k^T / sqrt(d)) is recomputed from it (checked against timm's own computation in
tests/test_vit_mae.py). `save_attention_maps` writes one PNG per image: the image, the mean over
heads, and each head, overlaid; and attention.png, each image beside its mean over heads. Each is
one uint8 canvas (viz.picture_grid): a matplotlib axes per panel took 0.5 s an image.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .backbones import Backbone
from .console import option, path_option
from .errors import UserError
from .outputs import output_folder
from .viz import Cell, GridLayout, picture_grid, save_png, short_name, thumbnail

if TYPE_CHECKING:
    from .data.sources import ImageSource

# A panel is at least PANEL_SIDE pixels (matplotlib's axes of 2.2 inches at 100 dpi showed about 198),
# a whole multiple of the image's side so that a 32-pixel image stays sharp; PANELS_PER_ROW of them a row.
PANEL_SIDE = 200
PANELS_PER_ROW = 7
PANELS = GridLayout(side=PANEL_SIDE, lines=1, above=True, gap=10, font_px=11)
HEAT = "inferno"  # the maps' colormap, drawn at HEAT_ALPHA over the image
HEAT_ALPHA = 0.6
OVERVIEW = "attention.png"  # every image beside its mean of heads, in one picture
OVERVIEW_IMAGES = 32  # the first 32 images are shown in it, OVERVIEW_PAIRS a row, at OVERVIEW_SIDE or more
OVERVIEW_PAIRS = 4
OVERVIEW_SIDE = 128
OVERVIEW_CELL = GridLayout(side=OVERVIEW_SIDE, lines=1, above=True, room=12, gap=4, band=26, font_px=10)


def class_token_attention(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, h, w) attention weights of the class token on each patch in the last block
    (a softmax over all tokens, so a map sums to 1 minus the class token's weight on itself)."""
    net = backbone.net
    attn = net.blocks[-1].attn
    captured = {}
    hook = attn.qkv.register_forward_hook(lambda module, inputs, output: captured.update(qkv=output))
    try:
        backbone.forward_map(images)
    finally:
        hook.remove()
    qkv = captured["qkv"].float()  # (B, T, 3 * heads * head_dim)
    b, t, _ = qkv.shape
    q, k, _ = qkv.reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (B, heads, T, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, T)
    p = net.patch_embed.patch_size
    grid = (images.shape[-2] // p[0], images.shape[-1] // p[1])
    return weights[:, :, 0, net.num_prefix_tokens:].reshape(b, attn.num_heads, *grid)


def read_images(path: str | Path, size: int, limit: int, bands=None,
                source: ImageSource | None = None) -> tuple[np.ndarray, list[str], ImageSource]:
    """The first `limit` decodable images (N, size, size, 3) uint8 (shorter side resized, centre
    crop; of TIFFs, `bands`) of an image file, a folder or a tar (`source`: of `path`, where it is
    open already), with their names and the source they were read from; the files that do not
    decode are skipped, and counted in one warning."""
    from .data.decode import warn_skipped
    from .data.sources import open_file_or_source
    from .data.workers import decode_stream

    path = Path(path).expanduser()
    source = source or open_file_or_source(path)
    items = source.read()
    decoded, skipped, notes = [], [], {}
    for name, pixels in decode_stream(items, size, parallel=False, notes=notes, bands=bands):
        if pixels is None:
            skipped.append(name)
        else:
            decoded.append((name, pixels[0]))
            if len(decoded) == limit:
                break
    if not decoded and source.one_file:  # the error names the file: a warning about it would say it twice
        raise UserError(source.none_decoded())
    warn_skipped(skipped, len(decoded) + len(skipped), repr(str(path)), notes=notes)
    if not decoded:
        raise UserError(f"no decodable image in {str(path)!r}; give an image, a folder of images or a tar of one")
    return np.stack([pixels for _, pixels in decoded]), [name for name, _ in decoded], source


def output_names(names: list[str]) -> list[str]:
    """A distinct PNG name for each image: its path with '/' as '_' and without its suffix, but
    with it where that alone would collide (x.jpg and x.png give x.jpg.png and x.png.png), and
    numbered where even that collides (a/b.png and a_b.png), or differs only in case (a file
    system that ignores case would write both to one file), or is the overview's (attention.jpg
    gives attention~2.png)."""
    stems = [Path(name).with_suffix("").as_posix().replace("/", "_") for name in names]
    clashing = {stem for stem, count in Counter(stems).items() if count > 1}
    wanted = [name.replace("/", "_") if stem in clashing else stem for name, stem in zip(names, stems)]
    taken, distinct = {Path(OVERVIEW).stem.casefold()}, []
    for base in wanted:
        name, number = base, 1
        while name.casefold() in taken:
            number += 1
            name = f"{base}~{number}"
        taken.add(name.casefold())
        distinct.append(name + ".png")
    return distinct


def _check_images_are_kept(source: ImageSource, images: Path, out: Path, file_names: list[str]) -> None:
    """A UserError when the maps would be written over the images they are drawn from: --out is
    the folder given as --images, or a map's file is an image's (photo.png in its own folder)."""
    if images.is_dir() and out.is_dir() and os.path.samefile(images, out):
        raise UserError(f"{path_option('out', str(out))} is the folder the images are read from; "
                        f"give the maps a folder "
                        f"of their own")
    targets = {}  # (device, inode) of each map's file already there: what writing it would replace
    for name in file_names:
        try:
            st = (out / name).stat()
        except OSError:
            continue
        targets[(st.st_dev, st.st_ino)] = out / name
    if not targets or source.file_path(source.names[0]) is None:  # nothing to replace, or images in a tar
        return
    for name in source.names:  # every image, not only those drawn: none may be replaced
        try:
            st = source.file_path(name).stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in targets:
            raise UserError(f"the attention map {str(targets[(st.st_dev, st.st_ino)])!r} would replace the image "
                            f"{name!r}; give {option('out')} another folder")


def panel_layout(image_side: int, layout: GridLayout = PANELS) -> GridLayout:
    """`layout` with its side the first whole multiple of `image_side` at least as large."""
    return replace(layout, side=image_side * -(-layout.side // image_side))


def heat(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8: the map `weights` (h, w) coloured by HEAT from its least (the colormap's
    bottom) to its most (its top), each patch's colour over that patch's pixels (a whole block of
    them: S is a multiple of h and w), blended at HEAT_ALPHA over `image` (S, S, 3) uint8, as
    imshow(weights, cmap=HEAT, alpha=HEAT_ALPHA) drew it over the image."""
    import matplotlib

    values = weights - weights.min()
    span = values.max()
    values = values / span if span > 0 else np.zeros_like(values)  # one value throughout: the bottom, as imshow
    colours = matplotlib.colormaps[HEAT](values)[..., :3] * 255  # (h, w, 3)
    side = image.shape[0]
    rows, cols = np.arange(side) * weights.shape[0] // side, np.arange(side) * weights.shape[1] // side
    blended = HEAT_ALPHA * colours[rows][:, cols] + (1 - HEAT_ALPHA) * image  # (S, S, 3)
    return blended.round().astype(np.uint8)


def _draw(image: np.ndarray, maps: np.ndarray, out: Path) -> Path:
    """One PNG: the image (S, S, 3) uint8, then each map (h, w) over it: mean, heads, in rows of
    PANELS_PER_ROW panels drawn at panel_layout's side."""
    layout = panel_layout(image.shape[0])
    shown = thumbnail(image, layout.side)
    titles = ["image", "mean of heads"] + [f"head {i}" for i in range(len(maps) - 1)]
    panels = [shown] + [heat(shown, weights) for weights in maps]
    cells = [Cell(panel, (title,)) for panel, title in zip(panels, titles)]
    rows = [cells[i:i + PANELS_PER_ROW] for i in range(0, len(cells), PANELS_PER_ROW)]
    return save_png(picture_grid(rows, layout), out)


def _draw_overview(images: np.ndarray, means: np.ndarray, file_names: list[str], out: Path) -> Path:
    """OUT/attention.png: the first OVERVIEW_IMAGES images (N, S, S, 3) uint8, each under the name of
    its own picture and beside its mean of heads (N, h, w), OVERVIEW_PAIRS pairs a row."""
    layout = panel_layout(images.shape[1], OVERVIEW_CELL)
    cells = []
    for image, weights, name in zip(images[:OVERVIEW_IMAGES], means, file_names):
        shown = thumbnail(image, layout.side)
        cells += [Cell(shown, (short_name(name, layout.width, layout.font_px),)),
                  Cell(heat(shown, weights), ("mean of heads",))]
    rows = [cells[i:i + 2 * OVERVIEW_PAIRS] for i in range(0, len(cells), 2 * OVERVIEW_PAIRS)]
    which = f"the first {OVERVIEW_IMAGES} of {len(images)} images" if len(images) > OVERVIEW_IMAGES else "each image"
    return save_png(picture_grid(rows, layout, f"{which} and the class token's attention, mean of heads"), out)


@torch.no_grad()
def save_attention_maps(checkpoint, images: str | Path, out: str | Path, image_size: int | None = None,
                        device: str = "auto", max_images: int = 32, bands=None) -> dict:
    """Write OUT/<image name>.png for each of the first `max_images` images under `images`, at the
    encoder's training size unless `image_size` is given (positions are resampled), and
    OUT/attention.png, each image beside its mean of heads; a random: encoder is drawn at
    `image_size`, else at the images' own size (see encoder.random_size)."""
    from .backbones.vit import check_image_size
    from .data.sources import open_file_or_source
    from .encoder import default_cache_size, load_encoder
    from .train import resolve_device
    from .views import denormalize, eval_view

    if max_images < 1:
        raise UserError(f"{option('max_images')} must be at least 1, got {max_images}")
    if image_size is not None and image_size < 1:
        raise UserError(f"{option('image_size')} must be a positive number of pixels, got {image_size}; leave it out "
                        f"for the encoder's training size")
    # A random: encoder is drawn at the size it is shown: the one given, else the images' own (listed
    # first for it), as eval and embed draw it. `bands`: of TIFFs, by default the encoder's own.
    drawn = str(checkpoint).startswith("random:")
    source = open_file_or_source(images) if drawn and image_size is None else None
    encoder = load_encoder(checkpoint, image_size=image_size if drawn else None, bands=bands, images=source)
    backbone = encoder.backbone
    if backbone.kind != "vit" or not hasattr(backbone.net, "blocks"):
        raise UserError(f"attention maps need a ViT encoder (vit-tiny, vit-small, vit-base); {checkpoint} "
                        f"holds a {backbone.name}")
    size = encoder.image_size if image_size is None else image_size
    # The patch size is the checkpoint's: only the image size can change here.
    check_image_size(size, size, backbone.net.patch_embed.patch_size[0], backbone.name, other_patch_sizes=False)
    device = resolve_device(device)
    pixels, names, source = read_images(images, default_cache_size(size), max_images, encoder.bands, source)
    file_names = output_names(names)
    _check_images_are_kept(source, Path(images).expanduser(), Path(out).expanduser(), file_names + [OVERVIEW])
    x = eval_view(torch.from_numpy(pixels).to(device), size)  # (N, 3, S, S) normalised
    maps = class_token_attention(backbone.to(device).eval(), x)  # (N, heads, h, w)
    maps = torch.cat([maps.mean(dim=1, keepdim=True), maps], dim=1).cpu().numpy()
    out = output_folder(out)
    pictures = (denormalize(x.float()).clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 3, S, S)
    pictures = pictures.permute(0, 2, 3, 1).cpu().numpy()  # (N, S, S, 3)
    for file_name, picture, image_maps in zip(file_names, pictures, maps):
        _draw(picture, image_maps, out / file_name)
    overview = _draw_overview(pictures, maps[:, 0], file_names, out / OVERVIEW)
    return {"out": str(out), "images": len(names), "heads": maps.shape[1] - 1, "image_size": size,
            "overview": str(overview)}
