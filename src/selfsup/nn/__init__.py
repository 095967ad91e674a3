"""Shared building blocks of methods: heads, the EMA teacher, the queue of negatives, multi-crop runs."""
from .ema import ema_copy, ema_momentum, ema_update
from .heads import DINOHead, mlp
from .multicrop import forward_by_size
from .queue import Queue

__all__ = ["mlp", "DINOHead", "ema_copy", "ema_momentum", "ema_update", "forward_by_size", "Queue"]
