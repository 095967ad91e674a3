"""Projection and prediction heads: one function for every MLP the methods use."""
from __future__ import annotations

from torch import nn


def mlp(dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False,
        last_bias: bool = True, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers through `dims` (e.g. [512, 2048, 128]), each hidden layer followed by
    BatchNorm (optional) and the activation. SimCLR's head is `mlp([d, d, 128])`; MoCo v3 and BYOL
    add BatchNorm; SimCLR v2 and MoCo v3 end with a BatchNorm without affine (`last_batch_norm`)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last_bias if last else not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(activation())
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)
