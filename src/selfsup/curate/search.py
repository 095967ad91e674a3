"""Nearest neighbours and k-means on L2-normalised embeddings: faiss when installed, exact
matrix products otherwise. Both return the same thing (tested on a common pool). `nearest` is
the one neighbour search of the package: curation, `selfsup search` and the retrieval protocol
differ only in the `SearchPolicy` they give it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_BYTES = 512 * 2**20  # exact search: the (queries x gallery) float32 similarity block, at most
NORM_ROWS = 65_536  # rows renormalised at a time by `centred`


@dataclass(frozen=True)
class SearchPolicy:
    """How `nearest` runs a search: when backend "auto" hands it to faiss, which faiss index it
    builds and where, and how many queries exact search multiplies at a time."""
    faiss_from: int  # backend "auto": faiss (when installed) from this many gallery rows
    inverted_file_from: int | None  # faiss: an inverted-file index (approximate) from here; None: always flat (exact)
    faiss_on_gpu: bool  # faiss: on the GPU when faiss has one and CUDA is up
    query_rows: int | None = None  # exact: queries per product (the gallery is cut to keep the block under
    #                                 BLOCK_BYTES); None: as many as keep the block under BLOCK_BYTES


# Curation and `selfsup search`: below 20,000 rows exact products on the device are as fast; from
# 200,000 an inverted-file index beats a flat one.
CURATION = SearchPolicy(faiss_from=20_000, inverted_file_from=200_000, faiss_on_gpu=True)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, backend: str = "auto",
            device: str | torch.device = "cpu", policy: SearchPolicy = CURATION) -> tuple[np.ndarray, np.ndarray, str]:
    """(similarities (Q, k), indices (Q, k), backend used): the k gallery vectors with the largest
    inner product with each query (cosine similarity for L2-normalised vectors), best first; all
    of them, in that order, when the gallery holds fewer than k. No row is left out: a caller
    whose queries are gallery rows asks for one more and drops the query's own row.
    `backend`: "exact" (float32 products on `device`), "faiss", or "auto" (faiss as `policy` says)."""
    k = min(k, len(gallery))
    if backend == "auto":
        backend = "faiss" if faiss_available() and len(gallery) >= policy.faiss_from else "exact"
    if backend == "faiss":
        inverted_file = policy.inverted_file_from is not None and len(gallery) >= policy.inverted_file_from
        sims, idx = _faiss_search(queries, gallery, k, inverted_file, policy.faiss_on_gpu)
        return sims, idx, "faiss-ivf" if inverted_file else "faiss-flat"
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)).to(device)
    sims, idx = [], []
    chunk, columns = block_shape(len(gallery), policy.query_rows)
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)).to(device)
        s, i = _best_k(q, gallery_t, k, columns)  # (chunk, k)
        sims.append(s.cpu().numpy())
        idx.append(i.cpu().numpy())
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), "exact"
    return np.concatenate(sims), np.concatenate(idx).astype(np.int64), "exact"


def block_shape(gallery_rows: int, query_rows: int | None) -> tuple[int, int]:
    """(queries, gallery rows) of one similarity block of exact search, at most BLOCK_BYTES of
    float32. Queries fill the block first; only a policy's fixed `query_rows` (whose products must
    keep their number of rows) times a large gallery needs the gallery cut too: 1,024 queries by a
    million gallery rows would be a 4 GB block."""
    gallery_rows, cells = max(1, gallery_rows), BLOCK_BYTES // 4
    rows = query_rows or max(1, cells // gallery_rows)
    return rows, min(gallery_rows, max(1, cells // rows))


def _best_k(q: torch.Tensor, gallery: torch.Tensor, k: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) (Q, k) of the k gallery rows most similar to each query, best first,
    from products of at most `columns` gallery rows at a time: the k best of each cut, then the k
    best of those. The products keep their queries, so each similarity is summed as in one product
    with the whole gallery (bit for bit with MKL's sgemm, checked; a product's number of query rows
    can change its sums, its number of gallery rows did not)."""
    if columns >= len(gallery):
        return (q @ gallery.T).topk(k, dim=1)
    best_s, best_i = [], []
    for start in range(0, len(gallery), columns):
        cut = gallery[start:start + columns]
        s, i = (q @ cut.T).topk(min(k, len(cut)), dim=1)  # (Q, <=k)
        best_s.append(s)
        best_i.append(i + start)
    s, at = torch.cat(best_s, dim=1).topk(k, dim=1)
    return s, torch.cat(best_i, dim=1).gather(1, at)


def _faiss_search(queries: np.ndarray, gallery: np.ndarray, k: int, inverted_file: bool,
                  on_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    dim = gallery.shape[1]
    if inverted_file:
        lists = int(4 * math.sqrt(len(gallery)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(gallery[np.random.default_rng(0).choice(len(gallery), min(len(gallery), 64 * lists), replace=False)])
        index.nprobe = 32
    else:
        index = faiss.IndexFlatIP(dim)
    if on_gpu and hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(gallery)
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims, idx.astype(np.int64)


def centred(vectors: np.ndarray, mean: np.ndarray | None, in_place: bool = False) -> np.ndarray:
    """`vectors` minus `mean`, renormalised (unchanged when `mean` is None): the direction that all
    images of a collection share no longer makes unrelated images look alike. `in_place`: written
    over `vectors` (the same floats) by a caller that has no further use for them."""
    if mean is None:
        return vectors
    if in_place:
        out = vectors
        out -= mean
    else:
        out = vectors - mean  # (N, D): the one copy; the rest is done in place, a block of rows at a time
    for start in range(0, len(out), NORM_ROWS):  # np.linalg.norm of all rows at once makes two more copies
        block = out[start:start + NORM_ROWS]
        block /= np.linalg.norm(block, axis=1, keepdims=True).clip(1e-12)
    return out


def kmeans(x: np.ndarray, clusters: int, iterations: int = 25, seed: int = 0, init: str = "random",
           restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (C, D), assignment (N,)) of spherical k-means (Lloyd on normalised vectors,
    centroids renormalised). `init="random"` starts from distinct points drawn by the seed;
    `"k-means++"` draws each next start with probability growing with its squared cosine distance
    to the starts already drawn (Arthur and Vassilvitskii 2007). With `restarts` > 1 the run whose
    points lie closest to their centroids (largest summed cosine) is kept."""
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    clusters = min(clusters, len(x))
    best = None
    for attempt in range(restarts):
        generator = torch.Generator().manual_seed(seed + 1_000_003 * attempt)  # seeds 0, 1, 2 share no restart
        start = (_plus_plus_starts(x_t, clusters, generator) if init == "k-means++"
                 else x_t[torch.randperm(len(x), generator=generator)[:clusters]].clone())
        centroids, assign, similarity = _lloyd(x_t, start, iterations)
        fit = float(similarity.double().sum())
        if best is None or fit > best[0]:
            best = (fit, centroids, assign)
    return best[1].numpy(), best[2].numpy()


def _plus_plus_starts(x: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    distance = (1 - x @ x[chosen[0]]).clamp_min(0)  # to the nearest start so far
    for _ in range(1, clusters):
        weights = distance ** 2
        if float(weights.sum()) <= 0:  # every point sits on a start: any point not yet taken
            weights = torch.ones(len(x))
            weights[chosen] = 0
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        distance = torch.minimum(distance, (1 - x @ x[chosen[-1]]).clamp_min(0))
    return x[chosen].clone()


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor,
                      block_bytes: int = 256 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, cosine) of each row's most similar centroid, a block of rows at a time: the whole
    (N, C) similarity matrix of a million images and 10,000 clusters would be 40 GB."""
    rows = max(1, block_bytes // (4 * len(centroids)))
    best = [(x[start:start + rows] @ centroids.T).max(dim=1) for start in range(0, len(x), rows)]
    return torch.cat([b.indices for b in best]), torch.cat([b.values for b in best])


def _lloyd(x_t: torch.Tensor, centroids: torch.Tensor, iterations: int):
    """(centroids, assignment, each point's cosine to its centroid) after `iterations` rounds."""
    clusters = len(centroids)
    for _ in range(iterations):
        assign, similarity = _nearest_centroid(x_t, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x_t)
        counts = torch.bincount(assign, minlength=clusters)
        empty = counts == 0  # re-seed empty clusters with the points farthest from their centroid
        if empty.any():
            worst = similarity.argsort()[: int(empty.sum())]
            sums[empty] = x_t[worst]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids, *_nearest_centroid(x_t, centroids)
