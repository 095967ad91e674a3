#!/usr/bin/env bash
# Issue 10's distillation claim in the small, on the CPU: does a small student distilled from a
# larger selfsup teacher beat the same student pretrained from scratch for the same time?
# Data: the CIFAR-10 sample that ships with selfsup (4,750 training images pretrained on, 32 px).
#   teacher: SimCLR, TEACHER_BACKBONE (default resnet18-half; ImageNet stem), the demo's
#            recipe, TEACHER_EPOCHS: on 2 CPU cores a wider teacher does not get better in the
#            time there is (torchvision's ResNet-18 after 25 epochs: kNN 0.376, BENCHMARKS.md), so
#            by default the teacher is the student's architecture trained for longer
#   distilled: resnet18-half, `--method distill` against the teacher's pooled features (with a
#              linear map to the teacher's width when it differs), DISTILL_EPOCHS
#   scratch:   resnet18-half, SimCLR with the demo's recipe, SCRATCH_EPOCHS
# then kNN (k=20, 200) and the linear probe on the sample's 1,000 test images for all of them and
# for the student at random initialisation. Pretraining wall times are printed: choose the epochs
# so that the two students' times match. Figures in BENCHMARKS.md.
# Usage: [TEACHER_BACKBONE=NAME] bash bench/distill_small.sh OUT_DIR [TEACHER_EPOCHS] [DISTILL_EPOCHS] [SCRATCH_EPOCHS]
set -euo pipefail
SAMPLE="$(cd "$(dirname "$0")/.." && pwd)/src/selfsup/sample/cifar10-sample.tar.xz"
OUT=${1:?folder for the runs}; TEACHER_EPOCHS=${2:-90}; DISTILL_EPOCHS=${3:-20}; SCRATCH_EPOCHS=${4:-30}
TEACHER_BACKBONE=${TEACHER_BACKBONE:-resnet18-half}
PROJECTION=""; [ "$TEACHER_BACKBONE" = resnet18-half ] || PROJECTION="--set distill.projection=true"
mkdir -p "$OUT" && cd "$OUT"
COMMON="--data $SAMPLE --image-size 32 --no-small-stem --batch-size 256 --no-progress --json"
DEMO_RECIPE="--lr 0.4 --set simclr.temperature=0.2"
timed() {  # NAME COMMAND...: run it, append "NAME SECONDS" to times.txt (skipped if listed there)
    local name=$1; shift; local start; start=$(date +%s)
    if grep -q "^$name " times.txt 2>/dev/null; then echo "$name: kept from times.txt"; return; fi
    "$@" > "$name.log" 2>&1
    echo "$name $(( $(date +%s) - start ))" | tee -a times.txt
}
timed teacher selfsup pretrain --method simclr --out teacher --backbone "$TEACHER_BACKBONE" \
    --epochs "$TEACHER_EPOCHS" $COMMON $DEMO_RECIPE
timed distilled selfsup pretrain --method distill --teacher teacher/last.pt --out distilled \
    --backbone resnet18-half --epochs "$DISTILL_EPOCHS" $PROJECTION $COMMON
timed scratch selfsup pretrain --method simclr --out scratch --backbone resnet18-half \
    --epochs "$SCRATCH_EPOCHS" $COMMON $DEMO_RECIPE
for spec in teacher/last.pt distilled/last.pt scratch/last.pt random:resnet18-half; do
    extra=""; case $spec in random:*) extra="--image-size 32 --no-small-stem";; esac
    knn=$(selfsup eval knn --checkpoint "$spec" --data "$SAMPLE" --k 20 200 --json --no-progress $extra)
    linear=$(selfsup eval linear --checkpoint "$spec" --data "$SAMPLE" --json --no-progress $extra)
    python - "$spec" "$knn" "$linear" <<'PY'
import json, sys
spec, knn, linear = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| {spec} | {knn['by_k']['200']['top1']:.3f} [{knn['top1_ci'][0]:.3f}, {knn['top1_ci'][1]:.3f}] "
      f"| {knn['by_k']['20']['top1']:.3f} | {linear['top1']:.3f} [{linear['top1_ci'][0]:.3f}, {linear['top1_ci'][1]:.3f}] |")
PY
done
