"""MoCo's queue of negative keys (He et al. 2020, sec. 3.2): a FIFO of fixed length.

Keys and the write position are registered buffers, so the queue is in the state dict and thus in
every checkpoint. A step's keys are pushed after its loss is computed, so a query never meets the
keys of its own step among its negatives; the newest keys overwrite the oldest, wrapping around.
The queue starts empty: slots not yet written are no negatives.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import dist


class Queue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", torch.zeros(size, dim))  # (K, d)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # the oldest slot
        # Slots written so far. MoCo's code fills the queue with random unit vectors instead; with
        # those as the only negatives, the first steps pull every query onto the keys' common
        # direction (the positives improve, random negatives do not care), and on our CIFAR runs
        # the queries never came apart again (loss at chance, std ratio 0.005 after 5 epochs).
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue `keys` (n, d) of this step from every process (rank order), dropping the oldest.
        Index arithmetic on the device: no host synchronisation."""
        keys = dist.gather(keys.detach())[-len(self):]  # (N, d): never more than the queue holds
        slots = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % len(self)
        self.keys.index_copy_(0, slots, keys.to(self.keys.dtype))
        self.pointer.copy_((self.pointer + keys.shape[0]) % len(self))
        self.count.copy_(torch.clamp(self.count + keys.shape[0], max=len(self)))

    def filled(self) -> torch.Tensor:
        """(K,) bool: the slots that hold a key (slots are written from 0 up, then wrap around)."""
        return torch.arange(len(self), device=self.keys.device) < self.count

    def oldest_first(self) -> torch.Tensor:
        """The keys in FIFO order, oldest first (K, d)."""
        return torch.roll(self.keys, -int(self.pointer), dims=0)
