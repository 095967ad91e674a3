#!/usr/bin/env bash
# Issue 9's claim in the small, on the CPU: are ego-motion equivariant features better than
# invariant ones when labels are few? Pretrains egomotion, its invariant baseline (the same method
# with the maps fixed to the identity) and SimCLR on the same synthetic clips (2,000 CIFAR-10
# sample images, 8 frames of 32 px), with about the same number of images through the encoder,
# then runs the label-efficiency curve (linear probe and kNN, 1 to 100 labels per class, 5 seeds)
# on the sample's CIFAR-10 images, and the equivariance errors. Figures in BENCHMARKS.md.
# Usage: bash bench/video_fewlabel.sh [OUT_DIR] [EPOCHS]   (about 35 minutes on 2 CPU cores)
set -euo pipefail
SAMPLE="$(cd "$(dirname "$0")/.." && pwd)/src/selfsup/sample/cifar10-sample.tar.xz"
OUT="${1:-runs/video-fewlabel}"
EPOCHS="${2:-15}"
mkdir -p "$OUT" && cd "$OUT"
export OMP_NUM_THREADS=1
selfsup synth motion --from "$SAMPLE" --out clips --frames 8 --size 32 --max-images 2000 --speed 2 --no-progress
COMMON="--data clips --image-size 32 --backbone resnet18-half --no-small-stem --batch-size 128 --no-progress --json"
EGO="--set egomotion.motion_classes=9 --set egomotion.pair_gap=2"
# egomotion sees 11,400 frame pairs (22,800 images) per epoch, SimCLR 2 views of 15,200 frames
# (30,400): SimCLR gets 3/4 of the epochs for the same number of images through the encoder.
SIMCLR_EPOCHS=$(( (EPOCHS * 3 + 2) / 4 ))
start=$(date +%s)
selfsup pretrain --method egomotion --out ego --epochs "$EPOCHS" $COMMON $EGO > ego.log 2>&1 &
selfsup pretrain --method egomotion --out ego-inv --epochs "$EPOCHS" $COMMON $EGO \
    --set egomotion.invariant=true > ego-inv.log 2>&1 &
selfsup pretrain --method simclr --out simclr --epochs "$SIMCLR_EPOCHS" $COMMON > simclr.log 2>&1 &
wait
echo "pretraining: $(( $(date +%s) - start )) s for the three runs side by side"
EVAL="--data $SAMPLE --image-size 32 --no-small-stem --per-class 1 2 5 10 25 100 --seeds 5 --json --no-progress"
RUNS="ego/last.pt ego-inv/last.pt simclr/last.pt random:resnet18-half"
selfsup eval curve --checkpoint $RUNS --protocol linear --out curve-linear.png $EVAL > curve-linear.json
selfsup eval curve --checkpoint $RUNS --protocol knn --out curve-knn.png $EVAL > curve-knn.json
python - <<'PY'
import json
from selfsup.eval.video import equivariance_report

for name in ("linear", "knn"):
    curve = json.load(open(f"curve-{name}.json"))
    print(f"{name}: top-1 (mean ± sd over {curve['seeds']} label subsets) at labels per class")
    for line in curve["lines"]:
        print(f"  {line['checkpoint']:24s}", "  ".join(f"{p['labels_per_class']:g}: {p['top1']:.3f}±{p['top1_std']:.3f}"
                                                  for p in line["points"]))
for run in ("ego", "ego-inv", "simclr"):
    print(json.dumps({"run": run, "equivariance": equivariance_report(f"{run}/last.pt", "clips", motion_classes=9, gap=2)}))
    print(json.dumps({"run": run, "last_epoch": json.loads(open(f"{run}/metrics.jsonl").read().splitlines()[-1])}))
PY
