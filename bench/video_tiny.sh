#!/usr/bin/env bash
# Tiny CPU runs of the video, motion and interaction methods (issue 9); figures in BENCHMARKS.md.
# Usage: bash bench/video_tiny.sh [OUT_DIR]   (about 15 minutes on 2 busy CPU cores)
set -euo pipefail
SAMPLE="$(cd "$(dirname "$0")/.." && pwd)/src/selfsup/sample/cifar10-sample.tar.xz"
OUT="${1:-runs/video-tiny}"
mkdir -p "$OUT" && cd "$OUT"
export OMP_NUM_THREADS=1
selfsup synth motion --from "$SAMPLE" --out clips --frames 8 --size 16 --max-images 300 --speed 2 --no-progress
selfsup synth interaction --out world --count 1500 --objects 600 --size 16 --no-progress
COMMON="--data clips --image-size 16 --backbone resnet18-half --no-small-stem --batch-size 64 --epochs 4 --no-progress --json"
selfsup pretrain --method egomotion --out ego $COMMON --set egomotion.motion_classes=9 --set egomotion.pair_gap=2
selfsup pretrain --method egomotion --out ego-inv $COMMON --set egomotion.motion_classes=9 --set egomotion.pair_gap=2 \
    --set egomotion.invariant=true
selfsup pretrain --method temporal-order --out order $COMMON --set temporal-order.tuples_per_clip=8 \
    --set temporal-order.positive_fraction=0.5
selfsup pretrain --method simclr --out simclr $COMMON --epochs 1
selfsup pretrain --method interaction --out inter --data world --image-size 16 --backbone resnet18-half \
    --no-small-stem --batch-size 64 --epochs 6 --no-progress --json
SAMPLE="$SAMPLE" python - <<'PY'
import json, os
import selfsup
from selfsup.checkpoint import load_checkpoint
from selfsup.config import from_dict
from selfsup.data.interactions import open_interactions
from selfsup.eval.video import equivariance_report, outcome_scores
from selfsup.methods import restore_method
from selfsup.train import monitor_split

def knn(spec, data):
    extra = {"image_size": 16, "small_stem": False} if spec.startswith("random") else {}
    return selfsup.evaluate_knn(spec, data=data, show_progress=False, record=False, **extra)["top1"]

for run in ["ego", "ego-inv", "order", "simclr", "random:resnet18-half"]:
    spec = run if run.startswith("random") else f"{run}/last.pt"
    row = {"run": run, "knn_cifar": knn(spec, os.environ["SAMPLE"])}
    if not run.startswith("random"):
        row["equivariance"] = equivariance_report(spec, "clips", motion_classes=9, gap=2)
    print(json.dumps(row))
checkpoint = load_checkpoint("inter/last.pt")
cfg = from_dict(checkpoint["config"])
method = restore_method(cfg, checkpoint["model"])
cache = open_interactions("world", cfg.data.cache_size, show_progress=False)
_, held_out = monitor_split(cache, cfg.data.holdout_fraction, cfg.train.seed)
print(json.dumps({"interaction_held_out": len(held_out), **outcome_scores(method, cache, held_out)}))
for spec in ["inter/last.pt", "order/last.pt", "simclr/last.pt", "random:resnet18-half"]:
    print(json.dumps({"run": spec, "knn_objects": knn(spec, "world/objects")}))
PY
