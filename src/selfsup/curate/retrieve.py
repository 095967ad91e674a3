"""Retrieval of pool images for a curated set (Oquab et al. 2023, DINOv2, sec. 3):
the k nearest pool images of each seed image, or, for small seed sets, k-means clusters of the
pool nearest the seeds, sampled evenly."""
from __future__ import annotations

import numpy as np

from .search import kmeans, nearest


def nearest_to_seeds(seeds: np.ndarray, pool: np.ndarray, k: int, backend: str = "auto",
                     device="cpu") -> np.ndarray:
    """(S, k) pool indices: each seed's k nearest pool images, nearest first."""
    _, idx, _ = nearest(seeds, pool, k, backend, device)
    return idx


def from_nearest_clusters(seeds: np.ndarray, pool: np.ndarray, clusters: int, per_cluster: int,
                          seed: int = 0) -> dict[int, np.ndarray]:
    """{cluster: pool indices drawn from it}: the pool is clustered with k-means, each seed picks
    its nearest cluster, and `per_cluster` images (or all, if fewer) are drawn from each picked
    cluster uniformly at random (fixed by `seed`)."""
    centroids, assignment = kmeans(pool, clusters, seed=seed)
    picked = sorted(set((seeds @ centroids.T).argmax(axis=1).tolist()))
    rng = np.random.default_rng(seed)
    out = {}
    for cluster in picked:
        members = np.flatnonzero(assignment == cluster)
        take = min(per_cluster, len(members))
        out[cluster] = np.sort(rng.choice(members, size=take, replace=False))
    return out
