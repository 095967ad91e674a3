"""Is issue 3's kNN gap (0.783 against lightly's 0.848) in the backbone? (a benchmark)

lightly's CIFAR-10 benchmark builds its ResNet-18 as `nn.Sequential(*resnet.children()[:-1])`,
which drops the ReLU that its `forward` applies after the stem's BatchNorm, and keeps PyTorch's
default initialisation of the convolutions (uniform, variance 1/(3 fan-in)), where torchvision's
ResNet, selfsup's, draws them from a normal of variance 2/fan-out. Everything else in the
architecture is the same (3x3 stride-1 stem, no max-pool, the same blocks and widths).

This script registers that ResNet-18 as the backbone `resnet18-lightly` in this process only,
then runs what `bench/simclr_cifar10.sh` runs (SimCLR's CIFAR preset, batch 512, the small stem,
kNN k=20 and 200 on the test set) with it, so that one change separates the run from the
recorded 0.783. `--variant` chooses which of the two differences to take:

    PYTHONPATH=src python bench/lightly_backbone.py --tar .gpu/cifar10-jpg.tar.xz --out /tmp/lb \\
        --epochs 200 --variant both --compile          # on a GPU (selfsup's backbone: 363 s on an H200)
    PYTHONPATH=src python bench/lightly_backbone.py --tar src/selfsup/sample/cifar10-sample.tar.xz \\
        --out /tmp/lb --epochs 1 --device cpu --batch 256     # a smoke run on the CPU (23 min on 2 busy cores)

Prints the kNN result as one JSON line, then the pretraining and total seconds.
"""
from __future__ import annotations

import argparse
import json
import time

import torch.nn as nn

from selfsup.backbones import BACKBONES
from selfsup.cli import main as selfsup_main

VARIANTS = ("both", "init", "no-stem-relu")


def lightly_resnet18(variant: str):
    """A builder for BACKBONES: torchvision's ResNet-18 (small stem as asked) with lightly's
    default initialisation of the convolutions and/or without the stem's ReLU."""
    torchvision_resnet18 = BACKBONES["resnet18"]

    def build(cfg, image_size):
        backbone = torchvision_resnet18(cfg, image_size)
        net = backbone.net
        if variant in ("both", "init"):
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    module.reset_parameters()  # PyTorch's default: kaiming_uniform_(a=sqrt(5))
        if variant in ("both", "no-stem-relu"):
            net.relu = nn.Identity()  # torchvision's ResNet uses net.relu after the stem alone
        return backbone
    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", required=True, help="CIFAR-10 JPEG tar (../shared/data/cifar10-jpg.tar.xz)")
    parser.add_argument("--out", required=True, help="a new run folder (one that holds a run is refused, as by pretrain)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--variant", choices=VARIANTS, default="both")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="a config override, as selfsup's --set")
    args = parser.parse_args()
    BACKBONES["resnet18-lightly"] = lightly_resnet18(args.variant)

    start = time.time()
    pretrain = ["pretrain", "--method", "simclr", "--data", args.tar, "--out", args.out,
                "--backbone", "resnet18-lightly", "--small-stem", "--image-size", "32", "--batch-size", str(args.batch),
                "--device", args.device, "--epochs", str(args.epochs), "--set", "data.holdout_fraction=0",
                "--no-progress", *(["--compile"] if args.compile else [])]
    for item in args.set:
        pretrain += ["--set", item]
    status = selfsup_main(pretrain)
    if status:
        raise SystemExit(status)
    trained = time.time()
    status = selfsup_main(["eval", "knn", "--checkpoint", f"{args.out}/last.pt", "--data", args.tar,
                           "--k", "20", "200", "--temperature", "0.1", "--device", args.device, "--json",
                           "--no-progress", "--no-record"])
    if status:
        raise SystemExit(status)
    print(json.dumps({"variant": args.variant, "epochs": args.epochs, "pretrain_seconds": round(trained - start),
                      "total_seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
