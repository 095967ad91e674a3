"""What several benchmark scripts share: synthetic images to train on, and an endless training step."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, count: int, side: int) -> Path:
    """`count` random-noise JPEGs of side x side pixels in `folder` (speed does not depend on content)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    return folder


def pipeline_step(trainer):
    """A function that runs the trainer's next step on its next batch, epoch after epoch."""
    epoch, batches = 0, iter(trainer.stream.epoch(0))

    def step():
        nonlocal epoch, batches
        try:
            images = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(trainer.stream.epoch(epoch))
            images = next(batches)
        trainer.step(images)

    return step
