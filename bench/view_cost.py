"""What one view costs under a recipe: milliseconds per view of a batch, eager, on one device.

    PYTHONPATH=src python bench/view_cost.py --set random_jitter_order=true     # against the default
    PYTHONPATH=src python bench/view_cost.py --device cuda --batch 512 --set blur_prob=0.5
Each --set KEY=VALUE changes the CIFAR SimCLR recipe's ViewConfig (colour strength 0.5, no blur);
the script times the recipe with and without the changes, median of --rounds, one thread on the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
import yaml

from selfsup.views import ViewConfig, make_view


def time_view(images: torch.Tensor, cfg: ViewConfig, size: int, rounds: int) -> float:
    generator = torch.Generator(device=images.device).manual_seed(0)
    seconds = []
    for _ in range(rounds + 1):  # the first round warms up
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        make_view(images, cfg, size, generator)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    base = ViewConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_prob=0.0)
    changes = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    changed = dataclasses.replace(base, **changes)
    images = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8, device=args.device)
    base_ms = 1e3 * time_view(images, base, args.size, args.rounds)
    changed_ms = 1e3 * time_view(images, changed, args.size, args.rounds)
    print(json.dumps({"batch": args.batch, "size": args.size, "device": args.device, "changes": changes,
                      "ms_recipe": round(base_ms, 1), "ms_changed": round(changed_ms, 1),
                      "changed_over_recipe": round(changed_ms / base_ms, 2)}))


if __name__ == "__main__":
    main()
