"""The GPU benchmarks of BENCHMARKS.md, in calls that each fit a short lease.

`--part main`, each stage in its own process (a failure is reported and the next still runs):
  1. throughput, compiled: the ceiling against selfsup's whole SimCLR pipeline, then selfsup's
     views alone, eager and compiled;
  2. SimCLR, ResNet-18 (small stem), batch 512 on CIFAR-10, with as many epochs (at most
     --epochs) as fit before the deadline at the compiled pipeline's measured speed, then
     weighted kNN (k=20, 200) on the test set.
`--part extra`: the same ratio eager, and kornia.augmentation's views (kornia importable, e.g.
from wheels in PYTHONPATH) against selfsup's, eager and compiled.
`--part recipe`: the compiled ratio, then short SimCLR runs (--epochs, eager) of recipe variants,
each followed by kNN, while time is left: which choices matter for quality.
`--part quality --method M --epochs E [--backbone B]`: one compiled run of M's CIFAR preset, then kNN (the
momentum-teacher and pretext benchmarks; on the H200 SimCLR took 1.4 to 1.6 s per epoch, BYOL
1.6 to 2.3 s).
`--part peer`: lightly's recipe (../shared/bench/peer_lightly.py copied into .gpu/, lightly's
wheel in PYTHONPATH) for --epochs next to selfsup's compiled pipeline, in the same call.
`--part labels`: SimCLR for the epochs that fit (keeping --labels-seconds), then issue 8's
label-efficiency comparison: linear probe and fine-tuning at 1 % and 10 % of the labels, next to
random initialisation and to supervised training from scratch on the same labels.
`--set KEY=VALUE` (repeatable) overrides the config of the runs of --part main, quality, labels;
`--no-views` skips timing the views alone in --part main.
Logs and the run's metrics go to $OUT (or --out); a summary table is printed last. Past 6 files,
all but summary.jsonl and session.log are packed into outputs.tar.gz (the device returns 8 files).

    PYTHONPATH=src python bench/gpu_session.py --tar .gpu/cifar10-jpg.tar.xz --deadline 540 [--part extra]

`bash bench/gpu_carry.sh` builds .gpu/ on the CPU machine; `bench/gpu_first_call.sh` is the
prepared first call of a lease.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

STARTED = time.monotonic()
TRAIN_IMAGES = 50_000
COMPILE_AND_EVAL_SECONDS = 80  # start-up, compiling the step and the kNN evaluation (45 + 25 s on the H200)
H200_COMPILED_IMAGES_PER_S = 33_000  # SimCLR epochs of the second lease: 31,400 to 36,900 images/s
LABEL_BUDGETS = ["0.01", "0.1"]  # issue 8: 1 % and 10 % of the training labels


def elapsed() -> float:
    return time.monotonic() - STARTED


def run(name: str, cmd: list[str], out: Path, timeout: float, env=None) -> list[dict]:
    """Run one stage, tee its output to out/NAME.log, and return the JSON lines it printed."""
    print(f"\n=== {name} (at {elapsed():.0f} s, limit {timeout:.0f} s): {' '.join(cmd)}", flush=True)
    rows = []
    with open(out / f"{name}.log", "w") as log:
        # A session of its own, killed whole on timeout: a stage is often a shell script whose
        # python would otherwise go on training, holding the GPU under the next stage's timings.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        # Out of the caller's process group, the stage must be stopped with this script too (the
        # device call's `timeout` signals its group only): SIGTERM exits through the clause below.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            text, _ = proc.communicate(timeout=max(timeout, 1))
            status = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            status = "timeout"
        except BaseException:  # SIGTERM, or Ctrl-C by hand
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.write(text)
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    tail = "\n".join(text.splitlines()[-8:])
    print(f"{tail}\n=== {name}: exit {status}, {len(rows)} figures, done at {elapsed():.0f} s", flush=True)
    return rows


def simclr(args, out: Path, measured: list[dict], env, reserve: float = 0.0) -> list[dict]:
    """SimCLR for as many epochs as fit before the deadline less `reserve` seconds, at the compiled
    pipeline's measured speed (or, not measured in this call, the second H200 lease's)."""
    compiled = [r for r in measured if r.get("figure") == "pipeline" and r.get("compile")]
    images_per_s = compiled[0]["images_per_s"] if compiled else H200_COMPILED_IMAGES_PER_S
    epoch_seconds = TRAIN_IMAGES / images_per_s * 1.03 + 0.1  # plus the checkpoint written each epoch
    budget = args.deadline - reserve - elapsed() - COMPILE_AND_EVAL_SECONDS
    fit = int(max(1, min(args.epochs, budget // epoch_seconds)))
    # The probe's figure can read 15 % low on a busy host (third lease: 0.786 of the ceiling, then
    # 0.914 on the same machine), which costs epochs: --exact-epochs keeps --epochs regardless.
    epochs = args.epochs if args.exact_epochs else fit
    print(f"\nSimCLR: {fit} epochs fit ({budget:.0f} s at an estimated {epoch_seconds:.2f} s per epoch); "
          f"running {epochs}", flush=True)
    run_dir = Path("/tmp/simclr-c10")
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = run("simclr", ["bash", "bench/simclr_cifar10.sh", args.tar, str(run_dir), str(epochs), "--compile",
                          *pretrain_overrides(args)], out, args.deadline - elapsed(), env)
    keep_run_files(run_dir, out, "simclr")
    return [{"figure": "simclr", "epochs": epochs, **r} for r in rows]


def label_efficiency(args, out: Path, env) -> list[dict]:
    """Issue 8's comparison on the SimCLR encoder just trained: linear probe and fine-tuning at
    1 % and 10 % of the labels, next to random initialisation (linear) and supervised training
    from scratch on the same labels (fine-tuning a random init, encoder at the head's rate)."""
    py, checkpoint, rows = sys.executable, "/tmp/simclr-c10/last.pt", []
    curve = [py, "-m", "selfsup", "eval", "curve", "--data", args.tar, "--fraction", *LABEL_BUDGETS, "--seeds",
             str(args.label_seeds), "--device", args.device, "--json", "--no-progress", "--no-record",
             *args.eval_args.split()]
    jobs = {"labels_linear": ["--checkpoint", checkpoint, "random:resnet18", "--image-size", "32", "--protocol", "linear"],
            "labels_finetune": ["--checkpoint", checkpoint, "--protocol", "finetune"],
            "labels_supervised": ["--checkpoint", "random:resnet18", "--image-size", "32", "--protocol", "finetune",
                                  "--encoder-lr-ratio", "1"]}
    for name, flags in jobs.items():
        if args.deadline - elapsed() < 20:
            print(f"no time left for {name}", flush=True)
            break
        found = run(name, [*curve, *flags, "--out", str(out / f"{name}.png")], out, args.deadline - elapsed(), env)
        rows += [{"figure": name, **r} for r in found]
    return rows


def pretrain_overrides(args) -> list[str]:
    return [flag for item in args.set for flag in ("--set", item)]


def keep_run_files(run_dir: Path, out: Path, prefix: str) -> None:
    """Copy a run's metrics, curves and config into `out` (what comes back from the device)."""
    for name in ("metrics.jsonl", "curves.png", "config.yaml"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / f"{prefix}_{name}")


RECIPE_VARIANTS = {
    "preset": [],
    "pass_per_view": ["--set", "simclr.one_pass=false"],
    "no_decay_on_bias_and_norm": ["--set", "optim.exclude_bias_and_norm=true"],
    "random_jitter_order": ["--set", "simclr.views.random_jitter_order=true"],
}


def recipe_variants(args, out: Path, env) -> list[dict]:
    rows = []
    for name, flags in RECIPE_VARIANTS.items():
        left = args.deadline - elapsed()
        if left < 45:
            print(f"no time left for {name}", flush=True)
            break
        run_dir = Path(f"/tmp/simclr-{name}")
        shutil.rmtree(run_dir, ignore_errors=True)
        found = run(f"recipe_{name}", ["bash", "bench/simclr_cifar10.sh", args.tar, str(run_dir), str(args.epochs),
                                       *flags], out, left, env)
        rows += [{"figure": "recipe", "variant": name, "epochs": args.epochs, **r} for r in found]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", required=True)
    parser.add_argument("--deadline", type=float, default=540, help="seconds from start to finish everything")
    parser.add_argument("--epochs", type=int, default=200, help="most SimCLR epochs to run")
    parser.add_argument("--exact-epochs", action="store_true",
                        help="run --epochs SimCLR epochs even where the deadline's estimate fits fewer")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    parser.add_argument("--part", choices=["main", "extra", "recipe", "quality", "peer", "labels"], default="main")
    parser.add_argument("--method", default="simclr", help="--part quality: the method to pretrain")
    parser.add_argument("--backbone", default="resnet18",
                        help="--part quality: e.g. vit-tiny (with --set preset=cifar-vit for dino)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the SimCLR run of --part main and for --part quality")
    parser.add_argument("--no-views", action="store_true", help="--part main: skip timing the views alone")
    parser.add_argument("--labels-seconds", type=float, default=240,
                        help="--part labels: seconds kept for the evaluations after pretraining")
    parser.add_argument("--label-seeds", type=int, default=1, help="--part labels: label subsets per budget")
    parser.add_argument("--eval-args", default="", help="--part labels: extra flags for `selfsup eval curve`")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per throughput figure")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before each throughput figure")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    # kornia (from wheels in PYTHONPATH) only for the views of --part extra
    env_no_kornia = {**os.environ, "PYTHONPATH": "src", "PYTHON": py, "DEVICE": args.device, "BATCH": str(args.batch)}
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm",
                        "--format=csv"], check=False)
    print(subprocess.run([py, "-c", "import torch, torchvision; print('torch', torch.__version__, 'torchvision', "
                          "torchvision.__version__)"], capture_output=True, text=True).stdout, flush=True)

    summary: list[dict] = []
    tp = [py, "bench/throughput.py", "--tar", args.tar, "--device", args.device, "--batch", str(args.batch),
          "--warmup", str(args.warmup)]
    if args.part == "extra":
        summary += run("throughput_eager", tp + ["--steps", str(args.steps)], out, 100, env_no_kornia)
        summary += run("views_kornia", tp + ["--only-views", "--steps", str(args.steps)], out,
                       args.deadline - elapsed(), dict(os.environ))
    elif args.part == "quality":
        run_dir = Path(f"/tmp/{args.method}-c10")
        rows = run(f"quality_{args.method}", ["bash", "bench/simclr_cifar10.sh", args.tar, str(run_dir),
                                              str(args.epochs), "--compile", *pretrain_overrides(args)],
                   out, args.deadline - elapsed(),
                   {**env_no_kornia, "METHOD": args.method, "BACKBONE": args.backbone})
        summary += [{"figure": "quality", "method": args.method, "epochs": args.epochs, **r} for r in rows]
        keep_run_files(run_dir, out, args.method)
    elif args.part == "peer":
        summary += run("throughput_compiled", tp + ["--compile", "--steps", str(args.steps)], out, 120, env_no_kornia)
        rows = run("peer_lightly", [py, ".gpu/peer_lightly.py", "--tar", args.tar, "--mode", "lightly",
                                    "--epochs", str(args.epochs)], out, args.deadline - elapsed(), dict(os.environ))
        summary += [{"figure": "peer", **r} for r in rows]
    elif args.part == "labels":
        summary += simclr(args, out, summary, env_no_kornia, reserve=args.labels_seconds)
        summary += label_efficiency(args, out, env_no_kornia)
    elif args.part == "recipe":
        summary += run("throughput_compiled", tp + ["--compile", "--steps", str(args.steps)], out, 120, env_no_kornia)
        summary += recipe_variants(args, out, env_no_kornia)
    else:
        views = [] if args.no_views else ["--views"]
        summary += run("throughput_compiled", tp + ["--compile", "--steps", str(args.steps), *views], out, 200,
                       env_no_kornia)
        summary += simclr(args, out, summary, env_no_kornia)

    print("\n=== summary (total %.0f s)" % elapsed())
    verbose = {"subsets", "per_seed", "train_data", "test_data", "interval", "top1_ci", "top5_ci", "encoder"}
    for row in summary:
        print(json.dumps({k: v for k, v in row.items() if k not in verbose}))
    (out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary))
    pack_if_many(out)


def pack_if_many(out: Path, keep=("summary.jsonl", "session.log"), most: int = 6) -> None:
    """The device returns at most 8 files: past `most`, all but `keep` go into outputs.tar.gz."""
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name not in keep)
    if len(files) + len(keep) <= most:
        return
    with tarfile.open(out / "outputs.tar.gz", "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    for path in files:
        path.unlink()
    print(f"{len(files)} files packed into {out / 'outputs.tar.gz'}", flush=True)


if __name__ == "__main__":
    main()
