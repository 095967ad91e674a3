"""Pictures of a run: training curves from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path


def plot_training_curves(metrics: list[dict], out: str | Path) -> Path | None:
    """A PNG with one panel per logged quantity (loss, learning rate, collapse monitor, kNN)."""
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
