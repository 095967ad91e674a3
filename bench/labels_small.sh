#!/usr/bin/env bash
# Issue 8's question in the small, on the CPU: with 1 % and 10 % of the labels, how close does a
# SimCLR encoder come to supervised training on all of them? On the CIFAR-10 sample that ships
# with selfsup (5,000 training images, 1,000 test images, 32 px), for one SimCLR run (e.g. the
# demo's, `selfsup demo --out RUN`) against the same architecture at random initialisation:
#   linear probe      at 1 %, 10 %, 100 %: the SimCLR encoder and the random one
#   fine-tuning       at 1 %, 10 %, 100 %: the SimCLR encoder (encoder at 0.1 x the head's rate)
#   supervised        at 1 %, 10 %, 100 %: the random encoder fine-tuned at the head's rate
# Each budget over SEEDS class-balanced label subsets (the same subsets for every encoder).
# Usage: bash bench/labels_small.sh RUN_DIR OUT_DIR [SEEDS]   (prints one markdown row per line)
set -euo pipefail
SAMPLE="$(cd "$(dirname "$0")/.." && pwd)/src/selfsup/sample/cifar10-sample.tar.xz"
RUN=$(cd "${1:?a SimCLR run folder}" && pwd); OUT=${2:?folder for the results}; SEEDS=${3:-3}
BACKBONE=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['backbone']['name'])" "$RUN/config.yaml")
mkdir -p "$OUT" && cd "$OUT"
CURVE="selfsup eval curve --data $SAMPLE --fraction 0.01 0.1 1 --seeds $SEEDS --json --no-progress --no-record"
RANDOM_ENCODER="random:$BACKBONE --image-size 32 --no-small-stem"
timed() {  # NAME COMMAND...: JSON to NAME.json, seconds to times.txt
    local name=$1; shift; local start; start=$(date +%s)
    "$@" --out "$name.png" > "$name.json"
    echo "$name $(( $(date +%s) - start ))" | tee -a times.txt
}
timed linear $CURVE --protocol linear --checkpoint "$RUN/last.pt" $RANDOM_ENCODER
timed finetune $CURVE --protocol finetune --checkpoint "$RUN/last.pt"
timed supervised $CURVE --protocol finetune --encoder-lr-ratio 1 --checkpoint $RANDOM_ENCODER
python - <<'PY'
import json
print("| encoder | protocol | 1 % (50 labels) | 10 % (500) | all (5,000 less the validation split) |\n| --- | --- | --- | --- | --- |")
for name in ("linear", "finetune", "supervised"):
    for line in json.load(open(f"{name}.json"))["lines"]:
        cells = " | ".join(f"{p['top1']:.3f} ± {p['top1_std']:.3f}" for p in line["points"])
        protocol = {"linear": "linear probe", "finetune": "fine-tuning", "supervised": "supervised from scratch"}[name]
        print(f"| {line['encoder']} | {protocol} | {cells} |")
PY
