"""A multi-crop configuration's training speed and GPU memory, next to its ceiling (a benchmark).

DINO (or iBOT) with a ViT-S/16 at 224 pixels, 2 global and 8 local crops of 96 pixels by default:
  ceiling   selfsup's training step (student, EMA teacher, heads, loss, optimizer) on crops made
            once and reused: no data and no views; the same model can go no faster.
  pipeline  the same step on uint8 batches from the cache, the crops made on the device each step.
Prints one JSON line per figure (images/s, peak GPU memory), then the ratio. The images are
synthetic JPEGs written to a temporary folder (speed does not depend on their content).

    PYTHONPATH=src python bench/multicrop_throughput.py --device cuda [--compile] [--batch 128]
    PYTHONPATH=src python bench/multicrop_throughput.py --device cpu --batch 4 --steps 2 --warmup 1 \\
        --image-size 32 --patch-size 8 --local-size 16     # a smoke run on the CPU
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench_data import pipeline_step, time_steps, write_images
from selfsup import config as config_lib
from selfsup.train import Trainer


def build_trainer(args, data: Path, out: str) -> Trainer:
    user = {"method": args.method, "preset": "imagenet", "out": out,
            "data": {"path": str(data), "image_size": args.image_size, "holdout_fraction": 0.0},
            "backbone": {"name": args.backbone, "patch_size": args.patch_size},
            "train": {"batch_size": args.batch, "epochs": 1, "device": args.device, "compile": args.compile,
                      "progress": False},
            args.method: {"local_crops": args.local_crops, "local_size": args.local_size}}
    return Trainer(config_lib.resolve(user), None, show_progress=False)


def timed(trainer: Trainer, step, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, peak GPU memory in GiB, 0 on the CPU) over `steps` calls after `warmup`."""
    cuda = trainer.device.type == "cuda"
    time_steps(step, 0, warmup, trainer.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    seconds = time_steps(step, steps, 0, trainer.device)
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if cuda else 0.0
    return steps * trainer.cfg.train.batch_size / seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--method", default="dino", choices=["dino", "ibot"])
    parser.add_argument("--backbone", default="vit-small")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "images", max(2 * args.batch, 64), args.image_size + args.image_size // 8)
        trainer = build_trainer(args, data, str(Path(tmp) / "run"))
        images = next(iter(trainer.stream.epoch(0)))
        common = {"method": args.method, "backbone": f"{args.backbone}/{args.patch_size}", "image_size": args.image_size,
                  "crops": f"2x{args.image_size} + {args.local_crops}x{args.local_size}", "batch": args.batch,
                  "compile": args.compile, "torch": torch.__version__,
                  "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"}

        method_config = trainer.method.config
        crops = method_config.make_crops(images, args.image_size, trainer.generator)
        method_config.make_crops = lambda *_: crops  # the ceiling: the same crops every step
        top, top_memory = timed(trainer, lambda: trainer.step(images), args.steps, args.warmup)
        print(json.dumps({"figure": "ceiling", "images_per_s": round(top, 1), "peak_gib": round(top_memory, 2),
                          **common}), flush=True)
        del method_config.make_crops  # back to the class's method: crops made every step

        ours, memory = timed(trainer, pipeline_step(trainer), args.steps, args.warmup)
        print(json.dumps({"figure": "pipeline", "images_per_s": round(ours, 1), "peak_gib": round(memory, 2),
                          **common}), flush=True)
        print(json.dumps({"figure": "ratio", "pipeline_over_ceiling": round(ours / top, 3), **common}), flush=True)


if __name__ == "__main__":
    main()
