"""uint8 batches on the model's device, in an order fixed by (seed, epoch).

The order of every epoch is a pure function of the seed and the epoch number, so a resumed run
needs only (epoch, batch index) to continue with exactly the batches it would have seen. Small
caches are copied to accelerator memory once and indexed there; large ones are gathered from the
memory map by a background thread into pinned memory and copied asynchronously.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


@dataclass
class SampleBatch:
    """A batch of multi-row samples (see `BatchStream`'s `rows`)."""

    images: torch.Tensor  # (B, k, S, S, 3) uint8
    side: Any  # the side data's dataclass, each field sliced to the batch, as tensors


def map_side(side: Any, fn) -> Any:
    """`side` (a dataclass of arrays or tensors) with `fn` applied to every field."""
    if side is None:
        return None
    return dataclasses.replace(side, **{f.name: fn(getattr(side, f.name)) for f in dataclasses.fields(side)})


class BatchStream:
    """Batches of `images[indices]` as (B, S, S, 3) uint8 tensors on `device`.

    With `rows` ((n, k) cache rows of n samples) the stream runs over samples instead: `indices`
    index the samples, and each batch is a `SampleBatch` of `images[rows[i]]` (B, k, S, S, 3)
    with the matching slice of `side` (a dataclass of (n, ...) arrays), all on `device`.

    `batch_size` is the global batch. Step i of an epoch takes the global batch
    order[i*G:(i+1)*G] of that epoch's order, and with `world > 1` processes each takes a
    disjoint share of it (rank::world), so the processes together see every image once per
    epoch, and the global batches are the same whatever the number of processes: a run can be
    resumed on another number of processes and continue with the same data.
    """

    def __init__(self, images: np.ndarray, indices: np.ndarray, batch_size: int, device: torch.device,
                 seed: int, keep_on_device: str = "auto", rank: int = 0, world: int = 1,
                 rows: np.ndarray | None = None, side: Any = None):
        self.images, self.indices = images, np.asarray(indices, dtype=np.int64)
        self.rows, self.side = rows, side
        self.batch_size, self.device, self.seed = batch_size, torch.device(device), seed
        self.rank, self.world = rank, world
        if batch_size % world:
            from ..errors import UserError
            raise UserError(f"the batch size {batch_size} must be divisible by the number of processes {world}")
        self.on_device = self._fits_on_device(keep_on_device)
        self.device_images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device) if self.on_device else None

    def _fits_on_device(self, mode: str) -> bool:
        if mode in ("never", "always"):
            return mode == "always"  # "always" on the CPU: one tensor instead of the memory map
        if self.device.type == "cpu":
            return False
        free, _ = torch.cuda.mem_get_info(self.device) if self.device.type == "cuda" else (0, 0)
        return self.images.nbytes < 0.25 * free

    def __len__(self) -> int:
        """Steps per epoch (the last incomplete global batch is dropped)."""
        return len(self.indices) // self.batch_size

    def _batch_indices(self, epoch: int) -> list[np.ndarray]:
        order = self.indices[epoch_order(len(self.indices), self.seed, epoch).numpy()]
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]
                   for i in range(len(self))]
        # Sorted within a batch: reads from the memory map are then sequential, and the order of
        # images inside a batch does not matter to any method.
        return [np.sort(b) for b in batches]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The batches of `epoch`, beginning at batch number `start` (to resume mid-epoch)."""
        batches = self._batch_indices(epoch)[start:]
        if self.on_device:
            if not batches:
                return
            # The whole epoch's rows go to the device in one copy: a copy per step from pageable
            # memory would wait for the GPU to finish the previous step, every step.
            rows = np.stack(batches) if self.rows is None else self.rows[np.stack(batches)]
            device_rows = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
            for i, idx in enumerate(batches):
                yield self._with_side(self.device_images[device_rows[i]], idx)
            return
        yield from self._prefetched(batches)

    def _with_side(self, images: torch.Tensor, idx: np.ndarray):
        """Plain streams: the images. Sample streams: a SampleBatch with the side data on the device."""
        if self.rows is None:
            return images
        side = map_side(self.side, lambda a: torch.from_numpy(np.ascontiguousarray(a[idx])).to(self.device))
        return SampleBatch(images, side)

    def _prefetched(self, batches: list[np.ndarray], depth: int = 3) -> Iterator[torch.Tensor]:
        pin = self.device.type == "cuda"
        ready: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def hand_over(item) -> bool:
            """Put `item` in the queue, unless the consumer has stopped; whether it was put."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def gather():
            try:
                for idx in batches:
                    host = torch.from_numpy(self.images[idx if self.rows is None else self.rows[idx]])
                    if not hand_over((host.pin_memory() if pin else host, idx)):
                        return
                hand_over(None)
            except BaseException as e:  # surfaced in the consuming thread
                hand_over(e)

        worker = threading.Thread(target=gather, daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                host, idx = item
                yield self._with_side(host.to(self.device, non_blocking=True), idx)
        finally:
            # Joined, not left running: a thread still inside PyTorch while the interpreter exits
            # (after Ctrl-C) aborted the process ("terminate called without an active exception").
            stop.set()
            worker.join()
