#!/usr/bin/env bash
# SimCLR (or METHOD), ResNet-18 with the small-image stem, batch 512, 200 epochs on CIFAR-10 (the
# method's CIFAR preset), then weighted kNN (k=20, 200) on the test set. Prints the wall time.
# (METHOD, BACKBONE, PYTHON, DEVICE and BATCH in the environment override simclr, resnet18,
# python3, auto and 512; the small-image stem is asked for ResNets only. For a ViT, e.g.
# METHOD=dino BACKBONE=vit-tiny ... --preset cifar-vit, or METHOD=mae BACKBONE=vit-tiny.)
#   bash bench/simclr_cifar10.sh ../shared/data/cifar10-jpg.tar.xz runs/simclr-c10 [EPOCHS] [extra pretrain flags]
set -euo pipefail
TAR=${1:?path to cifar10-jpg.tar.xz}; OUT=${2:?run folder}; EPOCHS=${3:-200}; shift 3 || shift $#
BACKBONE=${BACKBONE:-resnet18}
STEM=""; [[ $BACKBONE == resnet* ]] && STEM="--small-stem"
start=$(date +%s)
"${PYTHON:-python3}" -m selfsup pretrain --method "${METHOD:-simclr}" --data "$TAR" --out "$OUT" --backbone "$BACKBONE" $STEM \
    --image-size 32 --batch-size "${BATCH:-512}" --device "${DEVICE:-auto}" --epochs "$EPOCHS" --set data.holdout_fraction=0 --no-progress "$@"
trained=$(date +%s)
"${PYTHON:-python3}" -m selfsup eval knn --checkpoint "$OUT/last.pt" --data "$TAR" --k 20 200 --temperature 0.1 --device "${DEVICE:-auto}" --json --no-progress
echo "{\"pretrain_seconds\": $((trained - start)), \"total_seconds\": $(( $(date +%s) - start ))}"
