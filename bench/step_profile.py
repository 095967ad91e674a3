"""Where a training step's time goes: the step's named phases (`selfsup/phases.py`) under torch.profiler.

    PYTHONPATH=src python bench/step_profile.py --device cuda --compile        # SimCLR, the CIFAR setting
    PYTHONPATH=src python bench/step_profile.py --device cuda --method dino --preset imagenet \\
        --backbone vit-small --image-size 224 --batch 128 --set dino.local_crops=8 --set dino.local_size=96
    PYTHONPATH=src python bench/step_profile.py --device cpu --batch 16 --steps 2 --warmup 1  # a smoke run

Trains --warmup steps, records --steps more under torch.profiler, and prints one JSON line per
phase, in milliseconds per step and as a share of the step: data (taking the next uint8 batch),
views (made inside forward), forward (views, networks and loss), backward, optimizer, after_step
(EMA teachers, queues), metrics. On a GPU the times are the device's, the kernels that each phase
launched; autograd launches the backward kernels from its own thread, outside the range, so there
backward is the step's kernel time less the other phases. On the CPU the times are the host's.
Then the --top operators by self time, and with --trace FILE a Chrome trace (Perfetto opens it).
Data: --data (a folder or tar of images), or random-noise JPEGs (speed does not depend on content).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench_data import pipeline_step, write_images
from selfsup import config as config_lib
from selfsup.train import Trainer

PHASES = ["data", "views", "forward", "backward", "optimizer", "after_step", "metrics"]


def build_trainer(args, data: str, out: str) -> Trainer:
    user = {"method": args.method, "out": out,
            "data": {"path": data, "image_size": args.image_size, "holdout_fraction": 0.0},
            "backbone": {"name": args.backbone},
            "train": {"batch_size": args.batch, "epochs": 1, "device": args.device, "compile": args.compile,
                      "progress": False}}
    if args.preset:
        user["preset"] = args.preset
    for assignment in args.set:
        user = config_lib.merge_dicts(user, config_lib.parse_assignment(assignment))
    return Trainer(config_lib.resolve(user), None, show_progress=False)


def is_kernel(event) -> bool:
    """A kernel (or copy) on the device; not a range that a user named, seen on the device's timeline."""
    return event.device_type != DeviceType.CPU and not getattr(event, "is_user_annotation", False)


def phase_times(events, steps: int, on_device: bool) -> tuple[dict[str, float], float]:
    """(milliseconds per step of each phase, of the whole step), from the profiler's events. On the
    device: the kernels that each range's operators launched; the step is every kernel's time."""
    ranges: dict[str, float] = {}
    for event in events:
        if event.device_type == DeviceType.CPU and event.name.startswith("selfsup."):
            name = event.name[len("selfsup."):]
            ranges[name] = ranges.get(name, 0.0) + (event.device_time_total if on_device else event.cpu_time_total)
    if on_device:
        step = sum(event.device_time_total for event in events if is_kernel(event))
        counted = sum(ranges.get(name, 0.0) for name in PHASES if name not in ("views", "backward"))
        ranges["backward"] = max(step - counted, 0.0)
    else:
        step = sum(ranges.get(name, 0.0) for name in PHASES if name != "views")
    return {name: ranges[name] / steps / 1e3 for name in PHASES if name in ranges}, step / steps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--preset", default="cifar")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--data", help="a folder or tar of images (default: synthetic JPEGs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--top", type=int, default=15, help="operators listed by self time")
    parser.add_argument("--trace", help="also write a Chrome trace to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(write_images(Path(tmp) / "images", max(2 * args.batch, 64),
                                             args.image_size + args.image_size // 8))
        trainer = build_trainer(args, data, str(Path(tmp) / "run"))
        on_device = trainer.device.type == "cuda"
        step = pipeline_step(trainer)
        for _ in range(args.warmup):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
        if on_device:
            torch.cuda.synchronize(trainer.device)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if on_device:
                torch.cuda.synchronize(trainer.device)
    per_phase, step_ms = phase_times(prof.events(), args.steps, on_device)
    common = {"method": args.method, "backbone": args.backbone, "image_size": args.image_size, "batch": args.batch,
              "compile": args.compile, "clock": "device" if on_device else "host", "torch": torch.__version__,
              "device": torch.cuda.get_device_name(trainer.device) if on_device else "cpu"}
    print(json.dumps({"figure": "step", "ms_per_step": round(step_ms, 3),
                      "images_per_s": round(args.batch / step_ms * 1e3, 1), **common}))
    for name, ms in per_phase.items():
        print(json.dumps({"figure": "phase", "phase": name, "ms_per_step": round(ms, 3),
                          "share": round(ms / step_ms, 3), **common}))
    # Operators as the host called them (aten::..., compiled regions), by the kernel time they
    # launched themselves on the device, or by their own host time on the CPU.
    self_time = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    operators = sorted((e for e in prof.key_averages()
                        if e.device_type == DeviceType.CPU and not e.key.startswith("selfsup.")),
                       key=self_time, reverse=True)
    for event in operators[:args.top]:
        print(json.dumps({"figure": "operator", "name": event.key, "calls_per_step": event.count / args.steps,
                          "self_ms_per_step": round(self_time(event) / args.steps / 1e3, 3)}))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
