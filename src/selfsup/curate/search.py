"""Nearest neighbours and k-means on L2-normalised embeddings: faiss when installed, exact
matrix products otherwise. Both return the same thing (tested on a common pool)."""
from __future__ import annotations

import math

import numpy as np
import torch

FAISS_MIN_GALLERY = 20_000  # below this, exact products on the device are as fast and exact
FAISS_IVF_MIN = 200_000  # from here an inverted-file index beats a flat one


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, backend: str = "auto",
            device: str | torch.device = "cpu", block_bytes: int = 512 * 2**20) -> tuple[np.ndarray, np.ndarray, str]:
    """(similarities (Q, k), indices (Q, k), backend used): the k gallery vectors with the largest
    inner product with each query (cosine similarity for L2-normalised vectors), best first.
    Exact search takes as many queries at a time as keep their similarity block (queries x
    gallery, float32) under `block_bytes`."""
    k = min(k, len(gallery))
    if backend == "auto":
        backend = "faiss" if faiss_available() and len(gallery) >= FAISS_MIN_GALLERY else "exact"
    if backend == "faiss":
        sims, idx = _faiss_search(queries, gallery, k)
        return sims, idx, "faiss-ivf" if len(gallery) >= FAISS_IVF_MIN else "faiss-flat"
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)).to(device)
    sims, idx = [], []
    chunk = max(1, block_bytes // (4 * max(1, len(gallery))))
    for start in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32)).to(device)
        s, i = (q @ gallery_t.T).topk(k, dim=1)
        sims.append(s.cpu().numpy())
        idx.append(i.cpu().numpy())
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), "exact"
    return np.concatenate(sims), np.concatenate(idx).astype(np.int64), "exact"


def _faiss_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    dim = gallery.shape[1]
    if len(gallery) >= FAISS_IVF_MIN:
        lists = int(4 * math.sqrt(len(gallery)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(gallery[np.random.default_rng(0).choice(len(gallery), min(len(gallery), 64 * lists), replace=False)])
        index.nprobe = 32
    else:
        index = faiss.IndexFlatIP(dim)
    if hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(gallery)
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims, idx.astype(np.int64)


def kmeans(x: np.ndarray, clusters: int, iterations: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (C, D), assignment (N,)) of spherical k-means (Lloyd on normalised vectors,
    centroids renormalised), initialised with distinct points drawn by the seed."""
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    clusters = min(clusters, len(x))
    generator = torch.Generator().manual_seed(seed)
    centroids = x_t[torch.randperm(len(x), generator=generator)[:clusters]].clone()
    for _ in range(iterations):
        assign = (x_t @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x_t)
        counts = torch.bincount(assign, minlength=clusters)
        empty = counts == 0  # re-seed empty clusters with the points farthest from their centroid
        if empty.any():
            worst = (x_t * centroids[assign]).sum(1).argsort()[: int(empty.sum())]
            sums[empty] = x_t[worst]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    assign = (x_t @ centroids.T).argmax(dim=1)
    return centroids.numpy(), assign.numpy()
