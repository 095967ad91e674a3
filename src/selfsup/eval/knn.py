"""Weighted k-nearest-neighbour classification (Wu, Xiong, Yu, Lin 2018, sec. 3.4).

Features are L2-normalised; a test image's k nearest training images by cosine similarity s_i
each vote for their class with weight exp(s_i / T); the class with the largest total wins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               k: int, temperature: float, num_classes: int, chunk: int = 1024) -> torch.Tensor:
    """(N_test, C) each class's share of the query's vote weight (rows sum to 1)."""
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.to(train.device)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start:start + chunk].float().to(train.device), dim=1)
        similarity, neighbours = (query @ train.T).topk(k, dim=1)  # (q, k)
        # exp(s / T) overflows float32 for T below ~0.011; dividing every weight of a query by its
        # nearest neighbour's, exp(s_max / T), leaves its vote unchanged and the largest weight 1.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()  # (q, k)
        votes = torch.zeros(len(query), num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        scores.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5), votes: bool = False) -> dict[str, float]:
    """{'top1': ..., 'top5': ...}: how often the true class is among the k highest scores (with
    fewer than k classes, every class is, and top-k is 1). With `votes` (kNN's vote shares), a
    class that got no vote is no prediction: it never counts, so top-5 with k=1 neighbour is
    top-1, not a draw among the unvoted classes in whatever order their tied zeros come."""
    labels = labels.to(scores.device)
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        hit = top.indices == labels[:, None]
        if votes:
            hit &= top.values > 0
        hits = int(hit.any(dim=1).sum())
        out[f"top{k}"] = hits / len(labels) if len(labels) else float("nan")  # exact: 0.6, not float32's 0.6000000238
    return out


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 200, temperature: float = 0.07,
                 num_classes: int | None = None) -> dict[str, float]:
    """{'top1': ..., 'top5': ...} as fractions in [0, 1]."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max()).item()) + 1
    scores = knn_scores(train_features, train_labels, test_features, k, temperature, num_classes)
    return topk_accuracy(scores, test_labels, votes=True)
