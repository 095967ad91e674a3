#!/usr/bin/env bash
# SimCLR (or METHOD), ResNet-18 with the small-image stem, batch 512, 200 epochs on CIFAR-10 (the
# method's CIFAR preset), then weighted kNN (k=20, 200) on the test set. Prints the wall time.
# (METHOD, PYTHON, DEVICE and BATCH in the environment override simclr, python3, auto and 512.)
#   bash bench/simclr_cifar10.sh ../shared/data/cifar10-jpg.tar.xz runs/simclr-c10 [EPOCHS] [extra pretrain flags]
set -euo pipefail
TAR=${1:?path to cifar10-jpg.tar.xz}; OUT=${2:?run folder}; EPOCHS=${3:-200}; shift 3 || shift $#
start=$(date +%s)
"${PYTHON:-python3}" -m selfsup pretrain --method "${METHOD:-simclr}" --data "$TAR" --out "$OUT" --backbone resnet18 --small-stem \
    --image-size 32 --batch-size "${BATCH:-512}" --device "${DEVICE:-auto}" --epochs "$EPOCHS" --set data.holdout_fraction=0 --no-progress "$@"
trained=$(date +%s)
"${PYTHON:-python3}" -m selfsup eval knn --checkpoint "$OUT/last.pt" --data "$TAR" --k 20 200 --temperature 0.1 --device "${DEVICE:-auto}" --json --no-progress
echo "{\"pretrain_seconds\": $((trained - start)), \"total_seconds\": $(( $(date +%s) - start ))}"
