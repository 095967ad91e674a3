"""`selfsup demo`: SimCLR on the CIFAR-10 sample that ships with selfsup, on the CPU, in minutes.

Pretrains a small ResNet on 4,750 of the sample's 5,000 training images (labels are never used
for training; 5 % are held out to monitor kNN accuracy while training), then measures
weighted-kNN accuracy on 1,000 test images for the pretrained encoder and for the same
architecture at random initialisation, and prints both side by side.
"""
from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path

from .console import plural, say

# A recipe that fits in about ten minutes on two CPU cores (BENCHMARKS.md has the measurements).
DEMO_BACKBONE = "resnet18-half"
DEMO_EPOCHS = 30
SAMPLE_TRAIN_IMAGES = 5_000  # the sample's train/: 10 classes x 500
DEMO_CONFIG = {
    "method": "simclr",
    "backbone": {"name": DEMO_BACKBONE, "small_stem": False},  # the ImageNet stem is 16x cheaper at 32 px
    "data": {"image_size": 32},
    "train": {"batch_size": 256, "monitor_every_epochs": 5},
    # A short run learns faster with a higher rate and a lower temperature than the 200-epoch
    # CIFAR preset (measured: kNN 0.409 against 0.363 at 25 epochs; BENCHMARKS.md).
    "optim": {"lr": 0.4},
    "simclr": {"temperature": 0.2},
}


def sample_path() -> Path:
    """The CIFAR-10 sample inside the package: train/ (500 per class) and test/ (100 per class)."""
    return Path(str(resources.files("selfsup") / "sample" / "cifar10-sample.tar.xz"))


def run_demo(out: str | Path | None = None, epochs: int | None = None, device: str = "auto",
             show_progress: bool = True, show_table: bool = True) -> dict:
    from . import pretrain
    from .config import DataConfig, merge_dicts
    from .eval import evaluate_knn

    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="selfsup-demo-"))
    data = sample_path()
    held = int(SAMPLE_TRAIN_IMAGES * DataConfig().holdout_fraction)  # what monitor_split holds out
    say(f"selfsup demo: SimCLR on {SAMPLE_TRAIN_IMAGES - held:,} of the {SAMPLE_TRAIN_IMAGES:,} CIFAR-10 "
        f"training images shipped with selfsup ({data.name}; labels unused, {held:,} held out to monitor); "
        f"run folder {out}")
    started = time.perf_counter()
    config = merge_dicts(DEMO_CONFIG, {"train": {"epochs": epochs or DEMO_EPOCHS, "device": device}})
    run = pretrain(data=data, out=out, config=config, show_progress=show_progress)
    train_seconds = time.perf_counter() - started
    common = dict(data=data, k=(20, 200), device=device, show_progress=False)
    pretrained = evaluate_knn(run.checkpoint, **common)
    random_init = evaluate_knn(f"random:{DEMO_BACKBONE}", image_size=32, small_stem=False, **common)
    seconds = time.perf_counter() - started
    gain = pretrained["top1"] - random_init["top1"]
    if show_table:
        print(f"\nkNN accuracy on {pretrained['test_images']:,} CIFAR-10 test images "
              f"(weighted vote of Wu et al. 2018, {pretrained['train_images']:,} labelled training images)")
        rows = [(f"{DEMO_BACKBONE}, random initialisation", random_init),
                (f"{DEMO_BACKBONE}, SimCLR {plural(run.config.train.epochs, 'epoch')}", pretrained)]
        width = max(len(name) for name, _ in rows)
        print(f"  {'encoder':<{width}} {'k=20':>7} {'k=200':>7}")
        for name, result in rows:
            print(f"  {name:<{width}} {result['by_k']['20']['top1']:>7.3f} {result['by_k']['200']['top1']:>7.3f}")
        print(f"  gain from pretraining (k=200): {gain * 100:+.1f} points; {seconds / 60:.1f} min in all "
              f"({train_seconds / 60:.1f} pretraining)")
        print(f"  run folder: {out} ({', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))})")
    return {"pretrained": pretrained, "random": random_init, "gain_top1": gain, "seconds": round(seconds, 1),
            "pretrain_seconds": round(train_seconds, 1), "run": str(out)}
