#!/usr/bin/env bash
# Build .gpu/, the ignored folder that travels to the device machine (run's `carry: [".gpu"]`):
# the CIFAR-10 JPEG tar, the peer's and probes' scripts from ../shared/bench, and the wheels the
# device cannot fetch (it has no registry): lightly 1.6.0 for --part peer, kornia for --part extra;
# and the src/ of the branch moco-v2-one-pass-bn, for bench/moco_one_pass.sh.
#
#     bash bench/gpu_carry.sh            # from the repository root, on this machine (network: PyPI)
#
# Then, on the device: bash bench/gpu_first_call.sh (see there), or bench/gpu_session.py by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/whl
cp ../shared/data/cifar10-jpg.tar.xz .gpu/
cp ../shared/bench/*.py .gpu/
for wheel in lightly==1.6.0 kornia==0.9.0 kornia_rs; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl "$wheel"
done
# MoCo v2's one-pass BatchNorm groups, kept on a branch until a GPU measures them (bench/moco_one_pass.sh)
if git rev-parse -q --verify moco-v2-one-pass-bn >/dev/null; then
    rm -rf .gpu/moco-one-pass && mkdir -p .gpu/moco-one-pass
    git archive moco-v2-one-pass-bn src | tar -x -C .gpu/moco-one-pass
fi
du -sh .gpu
ls .gpu .gpu/whl
