"""The `selfsup` command line. Flag spellings are a contract that scripts rely on: keep them.

    selfsup pretrain --method simclr --data PATH --out RUN_DIR [--epochs N ...] [--resume]
    selfsup eval knn|linear --checkpoint CKPT --train PATH --test PATH [--json]
    selfsup export --checkpoint CKPT --out FILE.safetensors
    selfsup embed --checkpoint CKPT --data PATH --out FILE.npy
    selfsup demo
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError

# Command-line flag -> dotted key of the run config (also the keyword arguments of selfsup.pretrain).
PRETRAIN_FLAGS = {
    "method": "method",
    "data": "data.path",
    "out": "out",
    "backbone": "backbone.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "image_size": "data.image_size",
    "device": "train.device",
    "seed": "train.seed",
    "compile": "train.compile",
    "cache_dir": "data.cache_dir",
    "preset": "preset",
    "small_stem": "backbone.small_stem",
    "patch_size": "backbone.patch_size",
}


def flags_to_config(values: dict) -> dict:
    """{'epochs': 10, 'lr': 0.3} -> {'train': {'epochs': 10}, 'optim': {'lr': 0.3}} (None skipped)."""
    from .config import merge_dicts, nested
    from .errors import nearest

    tree: dict = {}
    for flag, value in values.items():
        if value is None:
            continue
        if flag not in PRETRAIN_FLAGS:
            raise UserError(f"unknown option {flag!r}{nearest(flag, PRETRAIN_FLAGS)}; valid: {', '.join(PRETRAIN_FLAGS)}")
        tree = merge_dicts(tree, nested(PRETRAIN_FLAGS[flag], value))
    return tree


def _pretrain(args) -> int:
    from .config import load_yaml, merge_dicts, parse_assignment
    from .train import run_pretraining

    user = load_yaml(args.config) if args.config else {}
    for assignment in args.set or []:
        user = merge_dicts(user, parse_assignment(assignment))
    flags = {name: getattr(args, name) for name in PRETRAIN_FLAGS}
    user = merge_dicts(user, flags_to_config(flags))
    result = run_pretraining(user, resume=args.resume, show_progress=not args.no_progress)
    last = result.metrics[-1] if result.metrics else {}
    summary = {"checkpoint": str(result.checkpoint), **{k: last[k] for k in ("epoch", "loss", "knn_top1") if k in last}}
    print(json.dumps(summary) if args.json else f"done: {summary}")
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    print(f"{result['protocol']} evaluation of {result['encoder']}")
    print(f"  {result['train_images']:,} training / {result['test_images']:,} test images, {result['classes']} classes")
    if result["protocol"] == "knn":
        for k, scores in result["by_k"].items():
            print(f"  k={k:<4} top-1 {scores['top1']:.4f}   top-5 {scores.get('top5', float('nan')):.4f}")
    else:
        print(f"  top-1 {result['top1']:.4f}   top-5 {result.get('top5', float('nan')):.4f}")


def _eval(args) -> int:
    from .eval import evaluate_knn, evaluate_linear

    common = dict(train=args.train, test=args.test, data=args.data, device=args.device,
                  image_size=args.image_size, small_stem=args.small_stem, cache_dir=args.cache_dir,
                  show_progress=not args.no_progress)
    if args.protocol == "knn":
        result = evaluate_knn(args.checkpoint, k=tuple(args.k), temperature=args.temperature, **common)
    else:
        result = evaluate_linear(args.checkpoint, epochs=args.epochs, lr=args.lr, **common)
    _print_result(result, args.json)
    return 0


def _export(args) -> int:
    from .export import export_encoder

    metadata = export_encoder(args.checkpoint, args.out)
    print(json.dumps({"out": args.out, **metadata}) if args.json else f"wrote {args.out} ({metadata['backbone']})")
    return 0


def _embed(args) -> int:
    from .export import embed_images

    result = embed_images(args.checkpoint, args.data, args.out, device=args.device, batch_size=args.batch_size,
                          cache_dir=args.cache_dir, show_progress=not args.no_progress)
    print(json.dumps(result) if args.json else
          f"wrote {result['count']:,} embeddings of dimension {result['dim']} to {result['embeddings']} "
          f"(file list: {result['files']})")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(out=args.out, epochs=args.epochs, device=args.device, show_progress=not args.no_progress)
    if args.json:
        print(json.dumps(result))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pretrain", help="pretrain an encoder on unlabelled images")
    p.add_argument("--method", help="simclr, ... (see README.md)")
    p.add_argument("--data", help="folder of images (searched recursively) or a .tar/.tar.gz/.tar.xz of one")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, config.yaml")
    p.add_argument("--backbone", help="resnet18, resnet34, resnet50, or timm:NAME")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="base learning rate per 256 images (scaled to the batch)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML file of config values (flags override it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. optim.lr=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the backbone")
    p.add_argument("--cache-dir", help="where decoded images are cached (default $SELFSUP_CACHE or ~/.cache/selfsup)")
    p.add_argument("--preset", help="cifar or imagenet (default: by image size)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="3x3 stride-1 first convolution, no max-pool (default: on below 64 px)")
    p.add_argument("--patch-size", type=int, help="ViT patch size")
    _common(p)
    p.set_defaults(run=_pretrain)

    p = commands.add_parser("eval", help="evaluate an encoder with labels")
    p.add_argument("protocol", choices=["knn", "linear"])
    p.add_argument("--checkpoint", required=True, help="checkpoint, run folder, or random:BACKBONE")
    p.add_argument("--train", help="labelled training images (one subfolder per class)")
    p.add_argument("--test", help="labelled test images (one subfolder per class)")
    p.add_argument("--data", help="one folder (or tar) holding train/ and test/")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, help="for random:BACKBONE only")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="for random:BACKBONE only (default: on below 64 px)")
    p.add_argument("--cache-dir")
    p.add_argument("--k", type=int, nargs="+", default=[20, 200], help="kNN: neighbours (the last is the headline)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN: vote temperature")
    p.add_argument("--epochs", type=int, default=100, help="linear: epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="linear: AdamW learning rate")
    _common(p)
    p.set_defaults(run=_eval)

    p = commands.add_parser("export", help="write the encoder's weights as safetensors")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(run=_export)

    p = commands.add_parser("embed", help="write one L2-normalised vector per image (.npy)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir")
    _common(p)
    p.set_defaults(run=_embed)

    p = commands.add_parser("demo", help="pretrain SimCLR on the CIFAR-10 sample that ships with selfsup (CPU, minutes)")
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    p.add_argument("--epochs", type=int, help="default: the demo's own setting")
    p.add_argument("--device", default="auto")
    _common(p)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
