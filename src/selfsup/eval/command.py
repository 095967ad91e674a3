"""`selfsup eval knn|linear|finetune|retrieval|curve`: the command line of the protocols.

    selfsup eval PROTOCOL --checkpoint CKPT --train PATH --test PATH
                 [--fraction F | --per-class K | --subset FILE] [--seeds N] [--json]
    selfsup eval curve --checkpoint CKPT [CKPT ...] --data PATH [--per-class K ...] [--out FILE.png]
"""
from __future__ import annotations

import argparse
import json
from functools import partial

from ..console import flag, plural
from ..errors import UserError

PROTOCOLS = ["knn", "linear", "finetune", "retrieval", "curve"]
FINETUNE_FLAGS = ("epochs", "min_steps", "batch_size", "encoder_lr_ratio", "layer_decay", "patience",
                  "freeze_stages", "label_smoothing", "drop_path_rate")
# The protocols that use each option (by its argparse dest); an option not named here is used by
# all. The curve uses its own and those of its --protocol. From _protocol_options and run_eval.
USED_BY = {**{name: ("finetune",) for name in FINETUNE_FLAGS},
           **{name: ("linear", "finetune") for name in ("epochs", "batch_size", "lr", "weight_decay",
                                                         "val_fraction")},
           "k": ("knn", "retrieval"), "temperature": ("knn",), "curve_protocol": ("curve",),
           "out": ("retrieval", "curve"), "subset": ("knn", "linear", "finetune", "retrieval")}


def add_eval_parser(commands, common) -> None:
    from ..cli import BANDS_HELP, parse_bands

    p = commands.add_parser("eval", help="evaluate an encoder with labels (kNN, linear, fine-tuning, retrieval, "
                                         "label-efficiency curve)")
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="checkpoint or run folder, random:BACKBONE (drawn with seed 0; random:BACKBONE@seed=N "
                        "with seed N), or weights:FILE (curve: several)")
    p.add_argument("--backbone", help="architecture of a weights:FILE (e.g. resnet50, timm:NAME)")
    p.add_argument("--train", help="labelled training images (one subfolder per class)")
    p.add_argument("--test", help="labelled test images (one subfolder per class)")
    p.add_argument("--data", help="one folder (or tar) holding train/ and test/")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, help="input size (default: a checkpoint's training size; random: the "
                                                   "images' own, at most 224, or in a curve its runs' size; "
                                                   "weights: the size it was made at)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="for random: and weights: encoders (default: on up to 64 px, or as the weights say)")
    p.add_argument("--bands", type=parse_bands, help=BANDS_HELP + "; in a curve, random: takes its runs'")
    p.add_argument("--cache-dir")
    p.add_argument("--fraction", type=float, nargs="+", help="use this fraction of each class's training labels "
                                                            "(curve: several)")
    p.add_argument("--per-class", type=int, nargs="+", help="use K training labels per class (curve: several)")
    p.add_argument("--subset", metavar="FILE",
                   help="use the labels of only the training images FILE lists: selfsup select's to_label.csv, a "
                        "CSV with a file column, a .txt of one name per line, or a subset JSON that eval saved")
    p.add_argument("--seeds", type=int, help="repeat over N label subsets (default 1; curve 3)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="linear, finetune: part of each class's training labels held out to tune on (default "
                        "%(default)s)")
    p.add_argument("--k", type=int, nargs="+", help="kNN: neighbours, the last is the headline (default 20 200); "
                                                    "retrieval: ranks of precision@k (default 1 10 50)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN: vote temperature (default %(default)s)")
    p.add_argument("--epochs", type=int, help="linear: epochs (default 100); finetune: passes (default 30)")
    p.add_argument("--lr", type=float, nargs="+", help="linear: AdamW rates to sweep (default 0.001 0.003 0.01); "
                                                       "finetune: the head's rate (default 0.001)")
    p.add_argument("--weight-decay", type=float, nargs="+", help="linear: decays to sweep (default 0.0 0.05 0.5); "
                                                                 "finetune: one (default 0.05)")
    p.add_argument("--batch-size", type=int, help="linear (default 1024), finetune (default 128)")
    p.add_argument("--encoder-lr-ratio", type=float,
                   help="finetune, CNNs (and ViTs with --layer-decay 1): encoder rate / head rate (default 0.1)")
    p.add_argument("--layer-decay", type=float,
                   help="finetune, ViTs: rate factor per block (default 0.75; 1: every block at --encoder-lr-ratio)")
    p.add_argument("--freeze-stages", type=int, help="finetune: freeze the stem and the first N stages")
    p.add_argument("--patience", type=int, help="finetune: validation checks without gain before stopping (default 5)")
    p.add_argument("--min-steps", type=int, help="finetune: train at least this many steps (default 200)")
    p.add_argument("--label-smoothing", type=float, help="finetune (default 0.0)")
    p.add_argument("--drop-path-rate", type=float, help="finetune, ViTs: stochastic depth (default 0.1)")
    p.add_argument("--protocol", dest="curve_protocol", default="linear", choices=["knn", "linear", "finetune"],
                   help="curve: the protocol to run at each budget")
    p.add_argument("--out", help="retrieval: write the neighbour lists (JSON); curve: the plot (.png, .svg or .pdf)")
    p.add_argument("--no-record", action="store_true", help="do not append the result to the run's evals.jsonl")
    common(p)
    p.set_defaults(run=partial(run_eval, defaults={name: p.get_default(name) for name in USED_BY}))


def _one(values, flag: str, several: str = "`selfsup eval curve`"):
    if values is not None and len(values) > 1:
        raise UserError(f"{flag} takes one value here; several only for {several}")
    return values[0] if values else None


def _protocol_options(args, protocol: str) -> dict:
    """The protocol's own keyword arguments from the flags (defaults where a flag is absent)."""
    if protocol == "knn":
        return {"k": tuple(args.k or (20, 200)), "temperature": args.temperature}
    if protocol == "retrieval":
        return {"ks": tuple(args.k or (1, 10, 50)), "out": args.out}
    if protocol == "linear":
        options = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
                   "batch_size": args.batch_size, "val_fraction": args.val_fraction}
        return {k: v for k, v in options.items() if v is not None}
    config = {name: getattr(args, name) for name in FINETUNE_FLAGS if getattr(args, name) is not None}
    config.update({k: _one(getattr(args, k), flag(k), "the linear probe's sweep")
                   for k in ("lr", "weight_decay") if getattr(args, k) is not None})
    return {"config": config, "val_fraction": args.val_fraction}


def _flag(name: str) -> str:
    return "--protocol" if name == "curve_protocol" else flag(name)


def refuse_unused(args, defaults: dict) -> None:
    """Refuse an option the user gave (it differs from the parser's default) that the protocol
    would ignore: a silently ignored --out or --freeze-stages reads as if it had an effect."""
    used = {args.protocol} | ({args.curve_protocol} if args.protocol == "curve" else set())
    for name, protocols in USED_BY.items():
        if getattr(args, name) != defaults[name] and not used & set(protocols):
            where = " and ".join(protocols)
            takers = [p for p in protocols if p in ("knn", "linear", "finetune")]
            if takers:  # the curve runs these, so it takes their options too
                where += f" (and curve --protocol {'|'.join(takers)})"
            command = f"eval curve --protocol {args.curve_protocol}" if args.protocol == "curve" else \
                f"eval {args.protocol}"
            raise UserError(f"{_flag(name)} is for {where}; {command} does not use it, leave it out")


def run_eval(args, defaults: dict) -> int:
    """`defaults`: the parser's, to tell the options the user gave (see refuse_unused)."""
    from . import evaluate_finetune, evaluate_knn, evaluate_linear, evaluate_retrieval, label_efficiency_curve

    refuse_unused(args, defaults)
    if args.protocol == "curve" and args.subset:
        raise UserError("--subset is for one evaluation; eval curve draws its own subsets at each --per-class or "
                        "--fraction (run eval linear --subset once per file instead)")
    setup = dict(train=args.train, test=args.test, data=args.data, device=args.device, image_size=args.image_size,
                 small_stem=args.small_stem, backbone=args.backbone, bands=args.bands, cache_dir=args.cache_dir,
                 show_progress=not args.no_progress, record=not args.no_record)
    if args.protocol == "curve":
        result = label_efficiency_curve(args.checkpoint, protocol=args.curve_protocol, per_class=args.per_class,
                                        fractions=args.fraction, seeds=3 if args.seeds is None else args.seeds,
                                        out=args.out or "label_efficiency.png",
                                        protocol_options=_protocol_options(args, args.curve_protocol), **setup)
    else:
        evaluate = {"knn": evaluate_knn, "linear": evaluate_linear, "finetune": evaluate_finetune,
                    "retrieval": evaluate_retrieval}[args.protocol]
        result = evaluate(_one(args.checkpoint, "--checkpoint"), fraction=_one(args.fraction, "--fraction"),
                          per_class=_one(args.per_class, "--per-class"), subset=args.subset,
                          seeds=1 if args.seeds is None else args.seeds,
                          **_protocol_options(args, args.protocol), **setup)
    print(json.dumps(result) if args.json else describe(result))
    return 0


def _figure(result: dict, key: str) -> str:
    text = f"{result[key]:.4f}"
    if result.get("seeds", 1) > 1 and f"{key}_std" in result:
        text += f" ± {result[key + '_std']:.4f}"
    if f"{key}_ci" in result:
        low, high = result[f"{key}_ci"]
        text += f" (95 % CI {low:.3f}-{high:.3f})"
    return text


def describe(result: dict) -> str:
    """The result as a few lines for a person."""
    seeds = result["seeds"]
    if result["protocol"] == "curve":
        lines = [f"label-efficiency curve ({result['curve_protocol']}, {plural(seeds, 'seed')}, "
                 f"{result['test_images']:,} test images): {result['plot']}"]
        for line in result["lines"]:
            lines.append(f"  {line['encoder']}")
            lines += [f"    {_count(p['labels_per_class']):>8} {'label/class ' if p['labels_per_class'] == 1 else 'labels/class'}  "
                      f"top-1 {_figure({**p, 'seeds': seeds}, 'top1')}" for p in line["points"]]
        return "\n".join(lines)
    validation = f", {result['val_images']:,} for validation" if result.get("val_images") else ""
    budget = result["budget"] if result["classes"] else "no labels"
    lines = [f"{result['protocol']} evaluation of {result['encoder']} at {result['image_size']} px",
             f"  {budget}: {result['labelled_images']:,} of {result['train_images']:,} training images"
             f"{validation}; {result['test_images']:,} test images, "
             f"{plural(result['classes'], 'class', 'classes')}; {plural(seeds, 'seed')}"]
    if result.get("neighbours_file"):
        lines.append(f"  neighbours of every test image: {result['neighbours_file']}")
    # With 5 classes or fewer every class is in the top 5: top-5 is 1 whatever the encoder.
    top5 = result["classes"] > 5
    if result["protocol"] == "knn":
        by_used: dict[int, list[str]] = {}  # k's cut to the same number give one figure: one line
        for k, s in result["by_k"].items():
            by_used.setdefault(s.get("k", int(k)), []).append(k)
        for used, asked in by_used.items():
            s, cut = result["by_k"][asked[0]], [k for k in asked if int(k) != used]
            lines.append(f"  k={used:<4} top-1 {_figure({**s, 'seeds': seeds}, 'top1')}"
                         + (f"   top-5 {_figure({**s, 'seeds': seeds}, 'top5')}" if top5 else "")
                         + (f"   (k={', '.join(cut)} asked; only {used} labelled images to vote)" if cut else ""))
        lines.append(f"  k={result['k']}, with its 95 % interval: top-1 {_figure(result, 'top1')}")
    elif result["protocol"] == "retrieval":
        keys = [k for k in result if k.startswith("precision@") and not k.endswith("_std")]
        lines += [f"  {key} {_figure(result, key)}" for key in keys + (["map"] if "map" in result else [])]
    else:
        lines.append(f"  top-1 {_figure(result, 'top1')}" + (f"   top-5 {_figure(result, 'top5')}" if top5 else ""))
    return "\n".join(lines)


def _count(labels: float) -> str:
    """Labels per class: '10' for a whole number, '4.9' for a mean over uneven classes."""
    return f"{labels:.0f}" if float(labels).is_integer() else f"{labels:.1f}"
