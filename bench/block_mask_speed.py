"""How long BEiT/iBOT block masks take for one batch: `views.masks.block_mask` against the version
of an earlier commit (52ccd20 drew each image's blocks in a Python loop), on the CPU, one thread.

    PYTHONPATH=src python bench/block_mask_speed.py [--against 52ccd20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import types

import torch

from selfsup.views.masks import block_mask


def block_mask_at(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:src/selfsup/views/masks.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType("masks_then")
    exec(compile(source, f"{commit}:masks.py", "exec"), module.__dict__)
    return module.block_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="52ccd20")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    then = block_mask_at(args.against)
    for grid in [(14, 14), (8, 8)]:
        patches = grid[0] * grid[1]
        # iBOT's draw: half of the images masked, each hiding 10 % to 50 % of its patches
        draw = torch.Generator().manual_seed(0)
        counts = ((0.1 + 0.4 * torch.rand(args.images, generator=draw)) * patches).long()
        counts *= torch.rand(args.images, generator=draw) < 0.5
        for name, fn, asked in [(args.against, then, counts.tolist()), ("now", block_mask, counts)]:
            seconds, hidden = [], 0
            for r in range(args.rounds):
                start = time.perf_counter()
                hidden = int(fn(args.images, grid, asked, torch.Generator().manual_seed(r)).sum())
                seconds.append(time.perf_counter() - start)
            print(json.dumps({"version": name, "images": args.images, "grid": grid, "ms": round(1e3 * statistics.median(seconds), 1),
                              "hidden": hidden, "asked": int(counts.sum())}))


if __name__ == "__main__":
    main()
