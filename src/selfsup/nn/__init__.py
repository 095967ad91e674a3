"""Shared building blocks of methods: heads, and (later) the EMA teacher, queues, multi-crop."""
from .heads import mlp

__all__ = ["mlp"]
