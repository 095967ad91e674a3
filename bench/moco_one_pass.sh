#!/usr/bin/env bash
# MoCo v2's step with its 8 BatchNorm groups as 8 passes (main) against one pass (the branch
# moco-v2-one-pass-bn: a grouped BatchNorm over the batch viewed as (N/8, 8C, H, W)), interleaved,
# the CIFAR setting (resnet18, 32 px, batch 512, queue 8192). On a 2-core CPU the one pass was
# 10-15 % slower (channels_last copies; BENCHMARKS.md, "MoCo v2's BatchNorm groups"); whether it wins
# on a GPU, where 8 passes of 64 images leave the device idle, is what this measures.
#
#     bash bench/gpu_carry.sh                         # here: puts the branch's src/ in .gpu/moco-one-pass
#     run(command="bash bench/moco_one_pass.sh", carry=[".gpu"], timeout_s=300)   # on the device
#     DEVICE=cpu BATCH=32 STEPS=2 WARMUP=1 QUEUE=32 bash bench/moco_one_pass.sh   # a smoke run here
set -o pipefail
export PYTHONUNBUFFERED=1 SELFSUP_CACHE=${SELFSUP_CACHE:-/tmp/selfsup-cache}
DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-512} STEPS=${STEPS:-20} WARMUP=${WARMUP:-10} QUEUE=${QUEUE:-8192}
DATA=${DATA:-.gpu/cifar10-jpg.tar.xz}
[ -d .gpu/moco-one-pass/src ] || { echo "no .gpu/moco-one-pass/src: run bash bench/gpu_carry.sh first" >&2; exit 2; }
data=(); [ -e "$DATA" ] && data=(--data "$DATA")  # without it, step_profile's synthetic images
log=${OUT:-/tmp}/moco_one_pass.log
for round in 1 2; do
    for tree in src .gpu/moco-one-pass/src; do
        echo "== round $round, $tree" | tee -a "$log"
        PYTHONPATH=$tree:bench timeout 240 python3 bench/step_profile.py --device "$DEVICE" --method moco-v2 \
            --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --top 3 "${data[@]}" \
            --set moco-v2.queue_size="$QUEUE" 2>&1 | grep -v Warning | tee -a "$log"
    done
done
