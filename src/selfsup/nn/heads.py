"""Projection and prediction heads: one function for every MLP the methods use."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def mlp(dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False,
        last_bias: bool = True, last_affine: bool = False,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers through `dims` (e.g. [512, 2048, 128]), each hidden layer followed by
    BatchNorm (optional) and the activation. MoCo v3 ends with a BatchNorm without affine
    parameters (`last_batch_norm`); lightly's SimCLR head ends with one that has both (`last_affine`
    too), SimCLR's official code with one that has a scale and no offset."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last_bias if last else not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(activation())
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=last_affine))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and appendix): an MLP with GELU to a
    bottleneck, L2 normalisation, then a weight-normalised linear layer to `out_dim` prototypes.

    `norm_last_layer` fixes the weight norm's gain at 1, so every prototype has unit length (the
    official default, which DINO reports as more stable). `forward(x, freeze_last_layer=True)` lets
    no gradient reach the last layer, as DINO does during the first epoch."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = mlp([in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim], batch_norm=batch_norm,
                       activation=nn.GELU)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):  # DINO's initialisation
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # (out_dim, 1)
        gain.data.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck)
        weight = self.last_layer.weight  # (out_dim, bottleneck): gain * v / |v|
        return F.linear(z, weight.detach() if freeze_last_layer else weight)  # (B, out_dim)
