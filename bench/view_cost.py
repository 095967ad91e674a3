"""What one view costs under a recipe: milliseconds per view of a batch, eager, on one device.

    PYTHONPATH=src python bench/view_cost.py --set random_jitter_order=true     # against the default
    PYTHONPATH=src python bench/view_cost.py --device cuda --batch 512 --set blur_prob=0.5
Each --set KEY=VALUE changes the CIFAR SimCLR recipe's ViewConfig (colour strength 0.5, no blur);
the script times the recipe with and without the changes, median of --rounds, one thread on the CPU.

    PYTHONPATH=src python bench/view_cost.py --copies 8 --size 96 --source 252 --batch 64
With --copies N it times N views of the batch made as one batch (`make_views`, multi-crop's local
crops) against N `make_view` calls in a row, and counts the operator calls of each (each is a
kernel launch or more on a GPU, so the count is what batching saves there whatever the CPU's time).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch
import yaml

from bench_data import time_steps
from selfsup.views import ViewConfig, make_view, make_views


def time_view(images: torch.Tensor, cfg: ViewConfig, size: int, rounds: int) -> float:
    generator = torch.Generator(device=images.device).manual_seed(0)
    return time_calls(lambda: make_view(images, cfg, size, generator), images.device, rounds)


def time_calls(make, device: torch.device, rounds: int) -> float:
    """The median seconds of `rounds` calls of `make`, after one that warms up."""
    return statistics.median(time_steps(make, 1, 0 if i else 1, device) for i in range(rounds))


def operator_calls(make) -> int:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        make()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def compare_copies(images: torch.Tensor, cfg: ViewConfig, size: int, copies: int, rounds: int) -> dict:
    generator = torch.Generator(device=images.device).manual_seed(0)
    together = lambda: make_views(images, cfg, size, copies, generator)  # noqa: E731
    apart = lambda: [make_view(images, cfg, size, generator) for _ in range(copies)]  # noqa: E731
    return {"copies": copies, "ms_one_batch": round(1e3 * time_calls(together, images.device, rounds), 1),
            "ms_one_after_another": round(1e3 * time_calls(apart, images.device, rounds), 1),
            "operator_calls_one_batch": operator_calls(together),
            "operator_calls_one_after_another": operator_calls(apart)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--copies", type=int, help="time N views as one batch against N in a row")
    parser.add_argument("--source", type=int, help="side of the source images (default: --size)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    base = ViewConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_prob=0.0)
    changes = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    changed = dataclasses.replace(base, **changes)
    side = args.source or args.size
    images = torch.randint(0, 256, (args.batch, side, side, 3), dtype=torch.uint8, device=args.device)
    if args.copies:
        print(json.dumps({"batch": args.batch, "source": side, "size": args.size, "device": args.device,
                          "changes": changes, **compare_copies(images, changed, args.size, args.copies, args.rounds)}))
        return
    base_ms = 1e3 * time_view(images, base, args.size, args.rounds)
    changed_ms = 1e3 * time_view(images, changed, args.size, args.rounds)
    print(json.dumps({"batch": args.batch, "size": args.size, "device": args.device, "changes": changes,
                      "ms_recipe": round(base_ms, 1), "ms_changed": round(changed_ms, 1),
                      "changed_over_recipe": round(changed_ms / base_ms, 2)}))


if __name__ == "__main__":
    main()
