"""Time and peak memory of `selfsup cluster`'s k-means on synthetic embeddings (no images).

    python bench/kmeans_scale.py --images 1000000 --dim 128 --clusters 1000 --restarts 1

Points are drawn around `--clusters` random directions (L2-normalised, as embeddings are), so the
run also reports how many planted groups it recovers (NMI against them)."""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from selfsup.curate.search import kmeans
from selfsup.explore import cluster_agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    truth = rng.integers(0, args.clusters, args.images)
    x = centres[truth]
    x += rng.standard_normal(x.shape, dtype=np.float32) * 0.6
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    before_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    _, assignment = kmeans(x, args.clusters, iterations=args.iterations, init="k-means++", restarts=args.restarts)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    nmi = cluster_agreement(assignment, truth)["nmi"]
    print(f"{args.images:,} x {args.dim} embeddings, {args.clusters:,} clusters, {args.restarts} restart(s) x "
          f"{args.iterations} iterations: {seconds:.1f} s, peak memory {peak_gb:.2f} GB ({before_gb:.2f} GB "
          f"before k-means; the embeddings {x.nbytes / 2**30:.2f} GB), NMI with the planted groups {nmi:.3f}")


if __name__ == "__main__":
    main()
