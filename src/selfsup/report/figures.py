"""The report's pictures, as PNG bytes: training curves, nearest neighbours, a 2-D embedding map."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..viz import Cell, GridLayout, picture_grid, pyplot


def figure_png(fig, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return buffer.getvalue()


def via_file(draw, *args) -> bytes | None:
    """PNG bytes from a function that writes a PNG to a path (`draw(*args, path)`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(*args, path)
        return path.read_bytes() if path.is_file() else None


def fixed_queries(labels: np.ndarray, count: int) -> np.ndarray:
    """The first test image of each class, then the second of each, ...: `count` queries that do
    not change from one report to the next."""
    orders = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked = [order[i] for i in range(max(map(len, orders))) for order in orders if i < len(order)]
    return np.asarray(picked[:count], dtype=np.int64)


COLOURS = {"query": (0, 0, 0), "same": (0, 150, 0), "other": (210, 0, 0)}


def neighbour_grid(query_images: np.ndarray, query_labels: np.ndarray, gallery_images: np.ndarray,
                   neighbours: np.ndarray, gallery_labels: np.ndarray, classes: list[str], cell: int = 64) -> bytes:
    """One row per query: the query (black frame), then its nearest training images, framed green
    when of the query's class and red otherwise, each with its class name. Images are (S, S, 3)
    uint8, enlarged (nearest neighbour, whole factors) to at least `cell` pixels."""
    side = query_images.shape[1] * max(1, -(-cell // query_images.shape[1]))
    rows = []
    for r in range(len(neighbours)):
        kinds = ["query"] + ["same" if gallery_labels[j] == query_labels[r] else "other" for j in neighbours[r]]
        images = [query_images[r]] + [gallery_images[j] for j in neighbours[r]]
        labels = [query_labels[r]] + [gallery_labels[j] for j in neighbours[r]]
        rows.append([Cell(image, (classes[label],), COLOURS[kind], COLOURS[kind])
                     for image, label, kind in zip(images, labels, kinds)])
    buffer = io.BytesIO()
    picture_grid(rows, GridLayout(side=side, lines=1, frame=3, gap=4)).save(buffer, format="PNG")
    return buffer.getvalue()


# t-SNE's perplexity must be below the number of points, and fewer points show nothing anyway.
MIN_MAP_POINTS = 3


def project_2d(features: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the method's name: t-SNE (van der Maaten & Hinton 2008) with
    scikit-learn when installed, else the first two principal components."""
    x = torch.nn.functional.normalize(features.double(), dim=1)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        centred = x - x.mean(dim=0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        return (centred @ v[:2].T).numpy(), "PCA (install scikit-learn for t-SNE)"
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    coords = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x.numpy())
    return coords, "t-SNE"


def embedding_map(coords: np.ndarray, labels: np.ndarray, classes: list[str], method: str) -> bytes:
    """A scatter plot of 2-D coordinates coloured by class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        chosen = labels == c
        if chosen.any():
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=6, color=cmap(c % cmap.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{method} of {len(coords):,} test embeddings, coloured by class", fontsize=9)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return figure_png(fig)
