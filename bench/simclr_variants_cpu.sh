#!/usr/bin/env bash
# SimCLR recipe variants side by side on the CPU, several seeds each: the demo's recipe
# (resnet18-half, ImageNet stem, 32 px, batch 256, lr 0.4, temperature 0.2) on the CIFAR-10 sample
# that ships with selfsup, then weighted kNN (k=200 and 20) and the linear probe on its 1,000 test
# images. A variant is NAME=SETTINGS, SETTINGS being `--set` overrides separated by commas
# ("" for the recipe as it is). Prints one markdown row per run, then the mean per variant.
#   OMP_NUM_THREADS=2 bash bench/simclr_variants_cpu.sh /tmp/variants 30 "0 1" \
#       base= output-bn=simclr.projection_output_batch_norm=true
set -uo pipefail
OUT=${1:?folder for the runs}; EPOCHS=${2:?epochs}; SEEDS=${3:?seeds, e.g. "0 1"}; shift 3
SELFSUP=${SELFSUP:-selfsup}
DATA=${DATA:-src/selfsup/sample/cifar10-sample.tar.xz}
PY=$(command -v "$(dirname "$(command -v "$SELFSUP")")/python" || command -v python3)
mkdir -p "$OUT"

echo "| variant | seed | pretraining s | kNN top-1 k=200 | k=20 | linear top-1 |"
echo "| --- | --- | --- | --- | --- | --- |"
for variant in "$@"; do
    name=${variant%%=*}; settings=${variant#*=}
    sets=(); IFS=, read -ra pairs <<<"$settings"
    for pair in "${pairs[@]}"; do sets+=(--set "$pair"); done
    for seed in $SEEDS; do
        run="$OUT/$name-seed$seed"; rm -rf "$run"; start=$(date +%s)
        if ! "$SELFSUP" pretrain --method simclr --data "$DATA" --out "$run" --backbone resnet18-half \
                --no-small-stem --image-size 32 --batch-size 256 --epochs "$EPOCHS" --lr 0.4 --seed "$seed" \
                --set simclr.temperature=0.2 "${sets[@]}" --no-progress >"$run.log" 2>&1; then
            echo "| $name | $seed | - | error: $(grep -v '^\s*$' "$run.log" | tail -n1) | | |"; continue
        fi
        seconds=$(( $(date +%s) - start ))
        "$SELFSUP" eval knn --checkpoint "$run/last.pt" --data "$DATA" --k 20 200 --json --no-progress \
            >"$run/knn.json" 2>>"$run.log"
        "$SELFSUP" eval linear --checkpoint "$run/last.pt" --data "$DATA" --json --no-progress \
            >"$run/linear.json" 2>>"$run.log"
        "$PY" - "$name" "$seed" "$seconds" "$run" <<'EOF'
import json, sys
name, seed, seconds, run = sys.argv[1:5]
knn = json.load(open(f"{run}/knn.json"))["by_k"]
linear = json.load(open(f"{run}/linear.json"))["top1"]
print(f"| {name} | {seed} | {seconds} | {knn['200']['top1']:.3f} | {knn['20']['top1']:.3f} | {linear:.3f} |")
json.dump({"variant": name, "seed": int(seed), "seconds": int(seconds), "knn200": knn["200"]["top1"],
           "knn20": knn["20"]["top1"], "linear": linear}, open(f"{run}/row.json", "w"))
EOF
    done
done

echo
echo "| variant | runs | mean kNN k=200 | mean k=20 | mean linear |"
echo "| --- | --- | --- | --- | --- |"
"$PY" - "$OUT" "$@" <<'EOF'
import glob, json, sys
out, variants = sys.argv[1], [v.split("=", 1)[0] for v in sys.argv[2:]]
for name in variants:
    rows = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/{name}-seed*/row.json"))]
    if rows:
        mean = lambda key: sum(r[key] for r in rows) / len(rows)
        print(f"| {name} | {len(rows)} | {mean('knn200'):.3f} | {mean('knn20'):.3f} | {mean('linear'):.3f} |")
EOF
