#!/usr/bin/env bash
# The first device call of a 15-minute lease, prepared: issue 3's open figure first (SimCLR,
# 200 exact epochs with the current head, compiled, then kNN), in one call under the device's
# 10-minute limit. Needs .gpu/ (bash bench/gpu_carry.sh here first). On the device:
#
#     run(command="bash bench/gpu_first_call.sh", carry=[".gpu"], timeout_s=600)
#
# Its output comes back under $OUT/main (session.log, summary.jsonl, outputs.tar.gz). The next
# call, on the warm machine (within its 30 s idle release): e.g. --part quality --method byol
# --epochs 200, or bench/step_profile.py --device cuda --compile (BENCHMARKS.md, "Still to measure").
set -o pipefail
export PYTHONUNBUFFERED=1 SELFSUP_CACHE=/tmp/selfsup-cache
mkdir -p "$OUT/main"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/main/gpu.txt"
PYTHONPATH=src timeout 560 python3 bench/gpu_session.py --tar .gpu/cifar10-jpg.tar.xz --deadline 520 \
    --part main --no-views --epochs 200 --exact-epochs --out "$OUT/main" 2>&1 | tee "$OUT/main/session.log"
