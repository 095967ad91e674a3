#!/usr/bin/env bash
# The first device call of a 15-minute lease, prepared: issue 3's open gap (kNN 0.783 against
# lightly's 0.848). The default recipe's 200 epochs were measured in the fourth lease; this call runs
# the same 200 epochs with lightly's benchmark backbone (no ReLU after the stem, PyTorch's default
# convolution init; bench/lightly_backbone.py), one change from that run, then kNN, in one call
# under the device's 10-minute limit. The kNN monitor reads the test set every 10 epochs (k=200,
# T=0.1, the 50,000 training images as its bank: lightly's protocol, whose table reports the best
# epoch), so metrics.jsonl holds the test-set curve and its best next to the last epoch's figure. Needs .gpu/ (bash bench/gpu_carry.sh here first). On the device:
#
#     run(command="bash bench/gpu_first_call.sh", carry=[".gpu"], timeout_s=600)
#
# Its output comes back under $OUT/main (gpu.txt, session.log, the run's metrics, curves, config).
# The next call, on the warm machine (within its 30 s idle release), per BENCHMARKS.md, "Still to
# measure on a GPU": e.g. bench/gpu_session.py --part quality --method byol --epochs 200.
set -o pipefail
export PYTHONUNBUFFERED=1 SELFSUP_CACHE=/tmp/selfsup-cache
mkdir -p "$OUT/main"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/main/gpu.txt"
PYTHONPATH=src timeout 560 python3 bench/lightly_backbone.py --tar .gpu/cifar10-jpg.tar.xz --out /tmp/lightly-backbone \
    --epochs 200 --variant both --compile --set data.monitor_path=.gpu/cifar10-jpg.tar.xz \
    --set train.monitor_every_epochs=10 --set train.knn_temperature=0.1 2>&1 | grep -v UserWarning | tee "$OUT/main/session.log"
for name in metrics.jsonl curves.png config.yaml; do cp /tmp/lightly-backbone/$name "$OUT/main/" 2>/dev/null; done
