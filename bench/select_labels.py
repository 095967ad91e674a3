"""Which images to label: test accuracy with the labels `selfsup select` chose, per strategy and budget.

    python bench/select_labels.py --checkpoint RUN --data src/selfsup/sample/cifar10-sample.tar.xz \
        --budgets 10 20 40 100 --seeds 0 1 2 3 4 --out /tmp/select-bench

For each strategy (typiclust, kcenter, random) and each budget, `selfsup select` chooses that many
training images (seed by seed: k-means' starts, random's draw, k-center's first image), then kNN
(k = 20) and a linear probe (one setting, nothing held out: every chosen label trains it) learn
from the chosen images' labels only and are scored on the test images. A last row, "balanced",
draws the same number per class at random: it needs the labels before choosing, which a user
does not have, so it is a reference, not a strategy. Prints a table of means and spreads.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from selfsup import evaluate_knn, evaluate_linear, select_images

STRATEGIES = ("typiclust", "kcenter", "random")
LINEAR = {"lr": 3e-3, "weight_decay": 0.05, "val_fraction": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a dataset with train/ and test/ (folder or tar)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-size", type=int)
    args = parser.parse_args()
    out = Path(args.out)
    encoder = {"image_size": args.image_size, "show_progress": False}
    figures: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    start = time.perf_counter()
    for budget in args.budgets:
        for strategy in STRATEGIES:
            for seed in args.seeds:
                # One --out for all: the pool is embedded once.
                summary = select_images(args.data, args.checkpoint, out / "select", budget, strategy=strategy,
                                        seed=seed, **encoder)
                chosen = out / f"{strategy}-{budget}-seed{seed}.csv"
                shutil.copy(out / "select" / "to_label.csv", chosen)
                figures.setdefault((strategy, budget), []).append(
                    _scores(args, chosen, encoder) + (summary["folders"]["covered"],))
        classes = summary["folders"]["classes"]
        if budget % classes == 0:  # the labelled reference: budget / classes images of each class
            runs = {"seeds": len(args.seeds), "per_class": budget // classes, "record": False, **encoder}
            knn = evaluate_knn(args.checkpoint, data=args.data, k=20, **runs)
            linear = evaluate_linear(args.checkpoint, data=args.data, **LINEAR, **runs)
            figures[("balanced", budget)] = [(a["top1"], b["top1"], classes)
                                             for a, b in zip(knn["per_seed"], linear["per_seed"])]
        _print(figures, args)
    print(f"{time.perf_counter() - start:.0f} s in all")


def _scores(args, chosen: Path, encoder: dict) -> tuple[float, float]:
    """kNN's and the linear probe's test top-1 with the labels of the images `chosen` lists."""
    knn = evaluate_knn(args.checkpoint, data=args.data, k=20, subset=str(chosen), record=False, **encoder)
    linear = evaluate_linear(args.checkpoint, data=args.data, subset=str(chosen), record=False, **LINEAR, **encoder)
    return knn["top1"], linear["top1"]


def _print(figures, args) -> None:
    print(f"\ntest top-1 with the chosen labels only; mean ± std over seeds {args.seeds}; classes covered")
    print(f"{'budget':>6}  {'strategy':<10} {'kNN k=20':>16} {'linear':>16} {'covered':>8}")
    for (strategy, budget), rows in figures.items():
        knn, linear, covered = zip(*rows)
        print(f"{budget:>6}  {strategy:<10} {_mean(knn):>16} {_mean(linear):>16} {statistics.mean(covered):>8.1f}")


def _mean(values) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


if __name__ == "__main__":
    main()
