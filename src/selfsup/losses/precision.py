"""Losses compute in float32 even inside a bf16 autocast region.

Casting a loss's inputs to float32 is not enough under autocast: a matmul of float32 tensors still
runs in bf16 there, which rounds every cosine similarity to about three significant digits before
a temperature of 0.1 magnifies the error tenfold. `float32_math` switches autocast off for the
whole loss; `full_precision` casts its half-precision inputs.
"""
from __future__ import annotations

import functools

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 if it is in half precision, else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def float32_math(loss_fn):
    """Decorate a loss of tensors so that its arithmetic runs with autocast off (it must cast its
    own half-precision inputs with `full_precision`)."""
    @functools.wraps(loss_fn)
    def in_float32(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        device_type = first.device.type if first is not None else "cpu"
        with torch.autocast(device_type, enabled=False):
            return loss_fn(*args, **kwargs)
    return in_float32
