"""What several benchmark scripts share: synthetic images to train on, an endless training step,
and a timer that waits for the GPU."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def time_steps(fn, steps: int, warmup: int, device) -> float:
    """Seconds that `steps` calls of `fn` take after `warmup` untimed ones, the GPU's queue drained
    before and after."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def write_images(folder: Path, count: int, side: int) -> Path:
    """`count` random-noise JPEGs of side x side pixels in `folder` (speed does not depend on content)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    return folder


def pipeline_step(trainer):
    """A function that runs the trainer's next step on its next batch, epoch after epoch (taking
    the batch inside the profiler's `data` range, see bench/step_profile.py)."""
    from selfsup.phases import phase

    epoch, batches = 0, iter(trainer.stream.epoch(0))

    def step():
        nonlocal epoch, batches
        with phase("data"):
            try:
                images = next(batches)
            except StopIteration:
                epoch += 1
                batches = iter(trainer.stream.epoch(epoch))
                images = next(batches)
        trainer.step(images)

    return step
