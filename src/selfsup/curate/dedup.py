"""Near-duplicates: images whose embeddings have cosine similarity above a threshold.

Pairs above the threshold are found among each image's nearest neighbours, widening the search
for images with more near-duplicates than it first looks at. Groups are stars, not
chains: images are visited in the order of their names, and each one not yet in a group keeps
itself and takes its own near-duplicates not yet grouped as its copies. An image is thus removed
only for being close to the image kept in its place. Connected components would chain a~b~c~...
through a crowded region of embedding space into one group and keep one image of hundreds (seen
on CIFAR-10 with a small encoder, BENCHMARKS.md). Visiting by name makes the result independent
of the order of the files.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .search import nearest


def duplicate_groups(vectors: np.ndarray, threshold: float, names: list[str] | None = None, neighbours: int = 16,
                     backend: str = "auto", device="cpu") -> list[list[int]]:
    """Groups (lists of row indices, each of 2 or more, the kept row first) of near-duplicate rows
    of `vectors`; rows are visited in the order of `names` (default: row order).

    Each row's `neighbours` nearest are searched first; a row whose farthest neighbour found is
    still above the threshold is searched again with twice as many, until its list ends below
    the threshold or holds every row. So a picture with hundreds of copies is one group. Rows
    that are the same vector (one file saved many times: a placeholder through a scraped folder)
    are copies of each other at any threshold up to 1, and only the first of them is searched
    again: M of them each searched past M neighbours were M x M pairs to hold."""
    if len(vectors) < 2:
        return []
    first, same_as = identical_rows(vectors)
    close = _close_vectors(vectors, first, same_as, threshold, neighbours, backend, device)
    by_vector = np.argsort(same_as, kind="stable")  # the rows of vector u: by_vector[starts[u]:starts[u + 1]]
    starts = np.searchsorted(same_as[by_vector], np.arange(len(first) + 1))

    def rows_near(u: int) -> list[int]:
        near = [*close.get(u, ()), *([u] if threshold <= 1 else [])]  # identical rows: a cosine of exactly 1
        return [int(j) for v in near for j in by_vector[starts[v]:starts[v + 1]]]

    visit = sorted(range(len(vectors)), key=lambda i: names[i]) if names is not None else range(len(vectors))
    grouped = np.zeros(len(vectors), dtype=bool)
    groups = []
    for i in visit:
        if grouped[i]:
            continue
        copies = sorted(j for j in rows_near(same_as[i]) if j != i and not grouped[j])
        grouped[i] = True
        grouped[copies] = True
        if copies:
            groups.append([i, *copies])
    return sorted(groups, key=lambda g: g[0])


def identical_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, same_as): the first row of each distinct vector, in row order, and for each row the
    index in `first` of its vector; rows are told apart by a 128-bit digest of their bytes (not
    by sorting the rows, which copies a pool of GBs)."""
    digests = np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in vectors], dtype="S16")
    _, at, inverse = np.unique(digests, return_index=True, return_inverse=True)
    by_row = np.argsort(at)  # distinct vectors numbered in the order of their first rows
    number = np.empty_like(by_row)
    number[by_row] = np.arange(len(by_row))
    return at[by_row], number[inverse.reshape(-1)]


def _close_vectors(vectors: np.ndarray, first: np.ndarray, same_as: np.ndarray, threshold: float,
                   neighbours: int, backend: str, device) -> dict[int, set[int]]:
    """{distinct vector: the other distinct vectors whose cosine similarity with it reaches the
    threshold}, for those that have some (a million empty sets hold 200 MB). Every row is searched
    first, the pool itself as the queries (a copy of it is 2 GB for a million rows); a row searched
    again is the first of its vector's rows, whose copies would find the same."""
    close: dict[int, set[int]] = {}
    searched_again = np.zeros(len(vectors), dtype=bool)
    searched_again[first] = True
    rows_to_search = np.arange(len(vectors))
    k = min(neighbours + 1, len(vectors))
    while len(rows_to_search):
        queries = vectors if len(rows_to_search) == len(vectors) else vectors[rows_to_search]
        sims, idx, _ = nearest(queries, vectors, k, backend, device)
        rows, cols = np.nonzero(sims >= threshold)
        for u, v in zip(same_as[rows_to_search[rows]].tolist(), same_as[idx[rows, cols]].tolist()):
            if u != v:
                close.setdefault(u, set()).add(v)
                close.setdefault(v, set()).add(u)
        if k == len(vectors):
            break
        rows_to_search = rows_to_search[(sims[:, -1] >= threshold) & searched_again[rows_to_search]]
        k = min(2 * k, len(vectors))
    return close


def kept_similarities(vectors: np.ndarray, groups: list[list[int]]) -> list[list[float]]:
    """For each group, the cosine similarity of each member to the kept one (1.0 for itself), to
    show beside the pictures how close each copy is to the threshold (rows of `vectors` are
    L2-normalised, as duplicate_groups compares them)."""
    return [(vectors[group] @ vectors[group[0]]).astype(float).tolist() for group in groups]


def duplicates_to_drop(groups: list[list[int]]) -> set[int]:
    """All members of each group but the kept one (the first)."""
    return {i for group in groups for i in group[1:]}


def near_any(pool: np.ndarray, others: np.ndarray, threshold: float, backend: str = "auto",
             device="cpu") -> np.ndarray:
    """(N,) bool: which pool rows are near-duplicates of at least one row of `others`."""
    if len(others) == 0 or len(pool) == 0:
        return np.zeros(len(pool), dtype=bool)
    sims, _, _ = nearest(pool, others, 1, backend, device)
    return sims[:, 0] >= threshold
