"""Retrieval: for each query image, the most similar gallery images by cosine similarity.

Features are L2-normalised, so similarity is a dot product; the neighbours are found by
`curate.search.nearest` under `RETRIEVAL_SEARCH`. With labels, a neighbour is relevant when it
shares the query's class: precision@k is the relevant fraction of the first k neighbours, and
mean average precision (mAP) averages, over queries, the precision at the rank of every relevant
gallery image in the full ranking of the gallery (equal similarities in gallery order; queries
whose class has no gallery image are left out).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..curate.search import SearchPolicy, nearest

# Exact and on the CPU whatever the machine, so that a protocol's figures depend neither on its GPU
# nor on an approximate index: faiss's flat index from 50,000 gallery images (below, a matrix
# product is as fast and needs nothing installed), else products of 1,024 queries at a time (the
# float32 sums of a product, and so its near-ties, can change with its number of rows: the
# figures recorded so far were computed this way).
RETRIEVAL_SEARCH = SearchPolicy(faiss_from=50_000, inverted_file_from=None, faiss_on_gpu=False, query_rows=1024)


def unit_rows(features: torch.Tensor) -> np.ndarray:
    """(N, D) float32 rows of length 1, as `nearest` takes them: cosine similarity is then their dot product."""
    return F.normalize(features.float(), dim=1).cpu().numpy()


def retrieve(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (Q, k): the k gallery rows most similar to each query by
    cosine similarity, most similar first, found as every evaluation finds them (RETRIEVAL_SEARCH)."""
    similarity, indices, _ = nearest(unit_rows(queries), unit_rows(gallery), k, policy=RETRIEVAL_SEARCH)
    return similarity, indices


def precision_at_k(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, ks=(1, 10, 50)) -> dict[str, float]:
    """{'precision@k': ...}: the mean fraction of each query's first k neighbours of its class."""
    relevant = neighbour_labels == query_labels[:, None]  # (Q, K)
    # Counted, then divided in Python: exact fractions, not float32's 0.25600001.
    return {f"precision@{k}": int(relevant[:, :k].sum()) / (k * len(query_labels))
            for k in ks if k <= relevant.shape[1]}


@torch.no_grad()
def mean_average_precision(queries: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                           gallery_labels: torch.Tensor, max_elements: int = 1 << 24) -> float:
    """mAP over the full ranking of the gallery, exact, in chunks of queries: the gallery ranked by
    cosine similarity, ties in gallery order (a stable sort's). Only the ranks of each query's
    relevant gallery images are needed, found among the sorted keys of `ranking_keys` (numpy sorts
    those several times faster than torch argsorts the scores: BENCHMARKS.md)."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    g_labels = gallery_labels.cpu().numpy()
    by_label = np.argsort(g_labels, kind="stable")
    labels, starts = np.unique(g_labels[by_label], return_index=True)
    rows_of = dict(zip(labels.tolist(), np.split(by_label, starts[1:])))  # {label: its gallery rows}
    positions = np.arange(len(g), dtype=np.int64)
    chunk = max(1, max_elements // max(1, len(g)))
    total, counted = 0.0, 0
    for start in range(0, len(q), chunk):
        # (c, N): the same products, chunk for chunk, as when this function argsorted them in torch
        scores = (q[start:start + chunk] @ g.T).cpu().numpy()
        for row, label in zip(scores, query_labels[start:start + chunk].tolist()):
            if label in rows_of:  # a class with no gallery image is left out
                keys = ranking_keys(row, positions)
                ranks = np.searchsorted(np.sort(keys), np.sort(keys[rows_of[label]])) + 1  # (R,) in rank order
                total += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))  # precision at each, in float64
                counted += 1
    return total / max(1, counted)


def ranking_keys(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) int64 keys, distinct, whose ascending order ranks float32 `scores` (not NaN, which would
    rank first or last by its sign bit: the protocols never see NaN features, see refuse_nonfinite)
    from the highest, equal scores by their `positions` (0 .. N-1, below 2^32): a score's bits made
    to order as the floats do, inverted, above its position. -0.0 is 0.0 (they compare equal)."""
    bits = (scores + np.float32(0)).view(np.int32)  # -0.0 + 0.0 is 0.0
    np.bitwise_xor(bits, np.int32(0x7FFFFFFF), out=bits, where=bits < 0)  # negatives: larger magnitude, smaller
    np.invert(bits, out=bits)  # the highest score first
    keys = bits.astype(np.int64)
    keys <<= 32
    keys |= positions
    return keys
