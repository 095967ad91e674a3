"""uint8 batches on the model's device, in an order fixed by (seed, epoch).

The order of every epoch is a pure function of the seed and the epoch number, so a resumed run
needs only (epoch, batch index) to continue with exactly the batches it would have seen. Small
caches are copied to accelerator memory once and indexed there; large ones are gathered from the
memory map by a background thread into pinned memory and copied asynchronously.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class BatchStream:
    """Batches of `images[indices]` as (B, S, S, 3) uint8 tensors on `device`.

    With `world > 1` each process takes a disjoint share of every epoch's order (rank::world),
    so the processes together see every image once per epoch.
    """

    def __init__(self, images: np.ndarray, indices: np.ndarray, batch_size: int, device: torch.device,
                 seed: int, keep_on_device: str = "auto", rank: int = 0, world: int = 1):
        self.images, self.indices = images, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.device, self.seed = batch_size, torch.device(device), seed
        self.rank, self.world = rank, world
        self.on_device = self._fits_on_device(keep_on_device)
        self.device_images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device) if self.on_device else None

    def _fits_on_device(self, mode: str) -> bool:
        if self.device.type == "cpu" or mode == "never":
            return False
        if mode == "always":
            return True
        free, _ = torch.cuda.mem_get_info(self.device) if self.device.type == "cuda" else (0, 0)
        return self.images.nbytes < 0.25 * free

    def __len__(self) -> int:
        """Batches per epoch per process (the last incomplete batch is dropped)."""
        return (len(self.indices) // self.world) // self.batch_size

    def _batch_indices(self, epoch: int) -> list[np.ndarray]:
        order = self.indices[epoch_order(len(self.indices), self.seed, epoch).numpy()]
        mine = order[self.rank::self.world]
        # Sorted within a batch: reads from the memory map are then sequential, and the order of
        # images inside a batch does not matter to any method.
        return [np.sort(mine[i * self.batch_size:(i + 1) * self.batch_size]) for i in range(len(self))]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches of `epoch`, beginning at batch number `start` (to resume mid-epoch)."""
        batches = self._batch_indices(epoch)[start:]
        if self.on_device:
            for idx in batches:
                yield self.device_images[torch.from_numpy(idx).to(self.device)]
            return
        yield from self._prefetched(batches)

    def _prefetched(self, batches: list[np.ndarray], depth: int = 3) -> Iterator[torch.Tensor]:
        pin = self.device.type == "cuda"
        ready: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def gather():
            try:
                for idx in batches:
                    host = torch.from_numpy(self.images[idx])
                    while not stop.is_set():
                        try:
                            ready.put(host.pin_memory() if pin else host, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put(None)
            except BaseException as e:  # surfaced in the consuming thread
                ready.put(e)

        worker = threading.Thread(target=gather, daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.device, non_blocking=True)
        finally:
            stop.set()
