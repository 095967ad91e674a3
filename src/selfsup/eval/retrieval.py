"""Retrieval: for each query image, the most similar gallery images by cosine similarity.

Features are L2-normalised, so similarity is a dot product. Large galleries are searched with
faiss (an exact inner-product index) when it is installed; otherwise, and for small galleries,
with chunked matrix products. With labels, a neighbour is relevant when it shares the query's
class: precision@k is the relevant fraction of the first k neighbours, and mean average precision
(mAP) averages, over queries, the precision at the rank of every relevant gallery image in the
full ranking of the gallery (queries whose class has no gallery image are left out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FAISS_MIN_GALLERY = 50_000  # below this, a matrix product is as fast and needs nothing installed


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, gallery: torch.Tensor, k: int,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (Q, k): the k most similar gallery rows of each query, most
    similar first."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    k = min(k, len(g))
    faiss = _faiss() if len(g) >= FAISS_MIN_GALLERY else None
    if faiss is not None:
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g.cpu().numpy())
        sims, idx = index.search(q.cpu().numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()
    sims, idx = [], []
    for start in range(0, len(q), chunk):
        s, i = (q[start:start + chunk] @ g.T).topk(k, dim=1)  # (chunk, k)
        sims.append(s.cpu())
        idx.append(i.cpu())
    if not sims:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(idx)


def precision_at_k(neighbour_labels: torch.Tensor, query_labels: torch.Tensor, ks=(1, 10, 50)) -> dict[str, float]:
    """{'precision@k': ...}: the mean fraction of each query's first k neighbours of its class."""
    relevant = neighbour_labels == query_labels[:, None]  # (Q, K)
    # Counted, then divided in Python: exact fractions, not float32's 0.25600001.
    return {f"precision@{k}": int(relevant[:, :k].sum()) / (k * len(query_labels))
            for k in ks if k <= relevant.shape[1]}


@torch.no_grad()
def mean_average_precision(queries: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                           gallery_labels: torch.Tensor, max_elements: int = 1 << 24) -> float:
    """mAP over the full ranking of the gallery, exact, in chunks of queries."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    gallery_labels = gallery_labels.to(g.device)
    ranks = torch.arange(1, len(g) + 1, device=g.device, dtype=torch.float32)
    chunk = max(1, max_elements // max(1, len(g)))
    total, counted = 0.0, 0
    for start in range(0, len(q), chunk):
        order = (q[start:start + chunk] @ g.T).argsort(dim=1, descending=True, stable=True)  # (c, N)
        labels = query_labels[start:start + chunk].to(g.device)
        relevant = (gallery_labels[order] == labels[:, None]).float()
        hits = relevant.sum(dim=1)
        precision = relevant.cumsum(dim=1) / ranks  # precision at every rank
        ap = (precision * relevant).sum(dim=1) / hits.clamp_min(1)
        total += ap[hits > 0].sum().item()
        counted += int((hits > 0).sum())
    return total / max(1, counted)
