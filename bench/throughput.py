"""How close does selfsup's whole SimCLR pipeline come to the hardware ceiling? (a benchmark)

Measures in one run, on one device:
  ceiling   the same SimCLR training step (backbone, projection, NT-Xent, optimizer) on float
            tensors already on the device: no data, no views. No pipeline can beat it.
  pipeline  selfsup's trainer step: uint8 batch from the cache -> two views made on the device ->
            the same training step.
  views     (with --views) the two views alone, selfsup's batched ops against kornia.augmentation
            (when installed), eager and compiled.
and prints one JSON line per figure, then the ratio pipeline / ceiling.

    python bench/throughput.py --tar ../shared/data/cifar10-jpg.tar.xz --device cuda [--compile [--compile-mode reduce-overhead]] [--views]
    python bench/throughput.py --tar ... --device cpu --batch 64 --steps 5      # a smoke run on the CPU
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from bench_data import pipeline_step, time_steps
from selfsup import config as config_lib
from selfsup.losses import nt_xent
from selfsup.train import Trainer, autocast_for
from selfsup.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, apply_view, sample_view_uniforms


def build_trainer(args, out: str) -> Trainer:
    user = {"data": {"path": args.tar, "image_size": 32, "holdout_fraction": 0.0},
            "backbone": {"name": args.backbone, "small_stem": True}, "out": out,
            "train": {"batch_size": args.batch, "epochs": 1, "device": args.device, "compile": args.compile,
                      "compile_mode": args.compile_mode, "progress": False}}
    cfg, _ = config_lib.resolve(user), None
    return Trainer(cfg, None, show_progress=False)


def ceiling(trainer: Trainer, args) -> float:
    method, device = trainer.method, trainer.device
    views = torch.randn(2 * args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)

    def step():
        with autocast_for(device, trainer.cfg.train.precision):
            z_a, z_b = method.projection(method.backbone(views)).chunk(2)
            loss = nt_xent(z_a, z_b, method.config.temperature)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    seconds = time_steps(step, args.steps, args.warmup, device)
    return args.steps * args.batch / seconds


def pipeline(trainer: Trainer, args) -> float:
    step = pipeline_step(trainer)
    seconds = time_steps(step, args.steps, args.warmup, trainer.device)
    return args.steps * args.batch / seconds


def views_only(trainer: Trainer, args) -> list[dict]:
    """Two SimCLR views of a batch: selfsup's ops (one uniform draw per view, then the arithmetic
    eager or compiled, as `train.compile` does) against kornia.augmentation (when installed)."""
    device = trainer.device
    images = next(iter(trainer.stream.epoch(0)))
    cfg = ViewConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_prob=0.0)
    generator = torch.Generator(device=device).manual_seed(0)
    compiled_apply = torch.compile(apply_view, dynamic=False)

    def selfsup_views(apply):
        def two_views(x):
            return [apply(x, sample_view_uniforms(len(x), generator, device), cfg, 32) for _ in range(2)]
        return two_views

    candidates = {("selfsup", False): selfsup_views(apply_view), ("selfsup", True): selfsup_views(compiled_apply)}
    try:
        import kornia.augmentation as K

        augment = torch.nn.Sequential(
            K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))).to(device)
        compiled_augment = torch.compile(augment)
        candidates[("kornia", False)] = lambda x: [augment(x.permute(0, 3, 1, 2).float().div(255)) for _ in range(2)]
        candidates[("kornia", True)] = lambda x: [compiled_augment(x.permute(0, 3, 1, 2).float().div(255))
                                                  for _ in range(2)]
    except ImportError:
        print(json.dumps({"figure": "views", "note": "kornia is not installed; only selfsup's views timed"}))
    results = []
    for (name, compiled), fn in candidates.items():
        if compiled and device.type != "cuda" and not args.compile:
            continue
        seconds = time_steps(lambda: fn(images), args.steps, args.warmup, device)
        results.append({"figure": "views", "impl": name, "compiled": compiled,
                        "ms_per_batch_2views": round(1e3 * seconds / args.steps, 3),
                        "images_per_s": round(args.steps * args.batch / seconds)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", required=True, help="CIFAR-10 JPEG tar (../shared/data/cifar10-jpg.tar.xz)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", help="with --compile: train.compile_mode, e.g. "
                        "reduce-overhead (the backbone's step as CUDA graphs)")
    parser.add_argument("--views", action="store_true", help="also time the views alone (and kornia's)")
    parser.add_argument("--only-views", action="store_true", help="time the views alone, not the training step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(args, out)
        device_name = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"
        common = {"device": device_name, "batch": args.batch, "backbone": args.backbone, "compile": args.compile,
                  **({"compile_mode": args.compile_mode} if args.compile else {}), "torch": torch.__version__}
        if not args.only_views:
            top = ceiling(trainer, args)
            print(json.dumps({"figure": "ceiling", "images_per_s": round(top, 1), **common}), flush=True)
            ours = pipeline(trainer, args)
            print(json.dumps({"figure": "pipeline", "images_per_s": round(ours, 1), **common}), flush=True)
            print(json.dumps({"figure": "ratio", "pipeline_over_ceiling": round(ours / top, 3), **common}), flush=True)
        if args.views or args.only_views:
            for row in views_only(trainer, args):
                print(json.dumps({**row, **common}), flush=True)


if __name__ == "__main__":
    main()
