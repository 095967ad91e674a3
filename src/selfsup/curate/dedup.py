"""Near-duplicates: images whose embeddings have cosine similarity above a threshold.

Pairs above the threshold are found among each image's nearest neighbours and joined into groups
(connected components, so a chain of near-copies is one group); each group keeps the member
whose name sorts first, which makes the result independent of the order of the files.
"""
from __future__ import annotations

import numpy as np

from .search import nearest


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def duplicate_groups(vectors: np.ndarray, threshold: float, neighbours: int = 10, backend: str = "auto",
                     device="cpu") -> list[list[int]]:
    """Groups (lists of row indices, each of 2 or more) of near-duplicate rows of `vectors`."""
    if len(vectors) < 2:
        return []
    sims, idx, _ = nearest(vectors, vectors, neighbours + 1, backend, device)
    parent = list(range(len(vectors)))
    rows, cols = np.nonzero(sims >= threshold)
    for i, j in zip(rows.tolist(), idx[rows, cols].tolist()):
        if i != j:
            a, b = _find(parent, i), _find(parent, j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(vectors)):
        groups.setdefault(_find(parent, i), []).append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def duplicates_to_drop(groups: list[list[int]], names: list[str]) -> set[int]:
    """All members of each group but the one whose name sorts first."""
    drop = set()
    for group in groups:
        keep = min(group, key=lambda i: names[i])
        drop.update(i for i in group if i != keep)
    return drop


def near_any(pool: np.ndarray, others: np.ndarray, threshold: float, backend: str = "auto",
             device="cpu") -> np.ndarray:
    """(N,) bool: which pool rows are near-duplicates of at least one row of `others`."""
    if len(others) == 0 or len(pool) == 0:
        return np.zeros(len(pool), dtype=bool)
    sims, _, _ = nearest(pool, others, 1, backend, device)
    return sims[:, 0] >= threshold
