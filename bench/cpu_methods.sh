#!/usr/bin/env bash
# Smoke-scale side-by-side of the image methods on the CPU, on the CIFAR-10 sample that ships with
# selfsup (train/ 5,000 images, 4,750 pretrained on and 250 held out for the monitor; test/ 1,000;
# 32 px). Every method: resnet18-half with the ImageNet stem (--no-small-stem), 32 px, the same
# batch and number of epochs, its CIFAR preset otherwise; then weighted kNN (k=20, 200, T=0.07) on
# the sample's test images against its 5,000 training images. The first row is the same encoder
# at random initialisation. Prints one markdown row per method:
#   method | epochs | pretraining s (wall, date +%s) | images/s (mean over epochs, metrics.jsonl)
#   | kNN top-1 k=200 [95 % Wilson interval] | k=20 | linear-probe top-1 (all labels less a validation split)
# A method that fails prints its last error line in the row and the script carries on.
# (SELFSUP, DATA and METHODS in the environment override the defaults below; SET_<method, with _
# for ->, e.g. SET_moco_v2="moco-v2.queue_size=2500" adds --set options to that method's run.)
#   OMP_NUM_THREADS=1 SELFSUP_CACHE=/tmp/cpu-bench-cache bash bench/cpu_methods.sh /tmp/cpu-methods [EPOCHS] [BATCH]
set -uo pipefail
OUT=${1:?folder for the runs}; EPOCHS=${2:-3}; BATCH=${3:-256}
SELFSUP=${SELFSUP:-selfsup}
DATA=${DATA:-src/selfsup/sample/cifar10-sample.tar.xz}
METHODS=${METHODS:-simclr byol moco-v2 moco-v3 dino rotation relative-location jigsaw colorization inpainting}
PY=$(command -v "$(dirname "$(command -v "$SELFSUP")")/python" || command -v python3)
mkdir -p "$OUT"

# knn_row NAME EPOCHS SECONDS IPS KNN_JSON LINEAR_JSON: one markdown row from `selfsup eval knn|linear --json`
knn_row() {
    "$PY" - "$@" <<'EOF'
import json, sys
name, epochs, seconds, ips, knn_path, linear_path = sys.argv[1:7]
r = json.load(open(knn_path))
k200, k20 = r["by_k"]["200"]["top1"], r["by_k"]["20"]["top1"]
lo, hi = r["top1_ci"]
try:
    linear = f"{json.load(open(linear_path))['top1']:.3f}"
except (OSError, ValueError, KeyError):
    linear = "-"
print(f"| {name} | {epochs} | {seconds} | {ips} | {k200:.3f} [{lo:.3f}, {hi:.3f}] | {k20:.3f} | {linear} |")
EOF
}

# mean images/s over the epochs of RUN/metrics.jsonl ("-" when absent)
images_per_s() {
    "$PY" - "$1/metrics.jsonl" <<'EOF'
import json, sys
try:
    v = [json.loads(l).get("images_per_s") for l in open(sys.argv[1]) if l.strip()]
    v = [x for x in v if x is not None]
    print(f"{sum(v) / len(v):.0f}" if v else "-")
except OSError:
    print("-")
EOF
}

echo "| method | epochs | pretraining s | images/s | kNN top-1 k=200 [95 % CI] | k=20 | linear top-1 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"

# random initialisation: no training
if "$SELFSUP" eval knn --checkpoint random:resnet18-half --image-size 32 --no-small-stem --data "$DATA" \
        --k 20 200 --json --no-progress >"$OUT/random-knn.json" 2>"$OUT/random-knn.log"; then
    "$SELFSUP" eval linear --checkpoint random:resnet18-half --image-size 32 --no-small-stem --data "$DATA" \
        --json --no-progress >"$OUT/random-linear.json" 2>>"$OUT/random-knn.log" || true
    knn_row "random init" 0 0 - "$OUT/random-knn.json" "$OUT/random-linear.json"
else
    echo "| random init | 0 | 0 | - | error: $(grep -v '^\s*$' "$OUT/random-knn.log" | tail -n1) | |"
fi

for method in $METHODS; do
    run="$OUT/$method"
    rm -rf "$run"
    sets_var="SET_${method//-/_}"; sets=()
    for kv in ${!sets_var:-}; do sets+=(--set "$kv"); done
    start=$(date +%s)
    if ! "$SELFSUP" pretrain --method "$method" --data "$DATA" --out "$run" --backbone resnet18-half --no-small-stem \
            --image-size 32 --batch-size "$BATCH" --epochs "$EPOCHS" --no-progress "${sets[@]}" >"$OUT/$method-pretrain.log" 2>&1; then
        echo "| $method | $EPOCHS | $(( $(date +%s) - start )) | - | error: $(grep -v '^\s*$' "$OUT/$method-pretrain.log" | tail -n1) | |"
        continue
    fi
    seconds=$(( $(date +%s) - start ))
    if "$SELFSUP" eval knn --checkpoint "$run/last.pt" --data "$DATA" --k 20 200 --json --no-progress \
            >"$run/knn.json" 2>"$OUT/$method-knn.log"; then
        "$SELFSUP" eval linear --checkpoint "$run/last.pt" --data "$DATA" --json --no-progress \
            >"$run/linear.json" 2>>"$OUT/$method-knn.log" || true
        knn_row "$method" "$EPOCHS" "$seconds" "$(images_per_s "$run")" "$run/knn.json" "$run/linear.json"
    else
        echo "| $method | $EPOCHS | $seconds | $(images_per_s "$run") | eval error: $(grep -v '^\s*$' "$OUT/$method-knn.log" | tail -n1) | |"
    fi
done
