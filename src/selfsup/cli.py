"""The `selfsup` command line. Flag spellings are a contract that scripts rely on: keep them.

    selfsup pretrain --method simclr --data PATH --out RUN_DIR [--epochs N ...] [--resume]
    selfsup eval knn|linear|finetune|retrieval --checkpoint CKPT --train PATH --test PATH
                 [--fraction F | --per-class K | --subset FILE] [--seeds N] [--json]
    selfsup eval curve --checkpoint CKPT [CKPT ...] --data PATH [--per-class K ...]
    selfsup report RUN_DIR [RUN_DIR ...] --out report.html
    selfsup synth motion|interaction --from PATH --out DIR
    selfsup export --checkpoint CKPT --out FILE.safetensors
    selfsup embed --checkpoint CKPT --data PATH --out FILE.npy
    selfsup attention --checkpoint CKPT --images PATH --out DIR
    selfsup cluster --checkpoint CKPT --data PATH --clusters K --out DIR
    selfsup search --checkpoint CKPT --query PATH --gallery PATH --out DIR
    selfsup select --checkpoint CKPT --data PATH --budget B --out DIR [--labelled FILE ...]
    selfsup curate --pool PATH --seed-set PATH --checkpoint CKPT --out DIR
    selfsup cache [--remove-unused-days N] [--remove-dead-builds]
    selfsup demo
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import provenance
from .errors import RunStopped, UserError, nearest

# Command-line flag -> dotted key of the run config (also the keyword arguments of selfsup.pretrain).
PRETRAIN_FLAGS = {
    "method": "method",
    "data": "data.path",
    "monitor_data": "data.monitor_path",
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
    "tensorboard": "train.tensorboard",
    "cache_dir": "data.cache_dir",
    "bands": "data.bands",
    "preset": "preset",
    "small_stem": "backbone.small_stem",
    "patch_size": "backbone.patch_size",
    # "method_config.": the section of whichever method runs (e.g. dino.local_crops); a method
    # without the option refuses it as an unknown config key.
    "global_crops": "method_config.global_crops",
    "local_crops": "method_config.local_crops",
    "local_size": "method_config.local_size",
    "teacher": "method_config.teacher",
}


def parse_bands(text: str) -> tuple[int, ...]:
    """--bands 4,3,2 (red, green, blue) or --bands 2 (gray): bands numbered from 1, as GDAL's -b.
    An argparse type: its error is argparse's one line."""
    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(","))
    except ValueError:
        bands = ()
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"takes three band numbers from 1 (red, green, blue, e.g. 4,3,2) or one "
                                         f"(gray), not {text!r}")
    return bands


BANDS_HELP = ("the TIFF bands shown to the encoder as red, green and blue, from 1 (e.g. 4,3,2), or one as gray "
              "(default: those it was trained on; for random: and plain weights:, the first three)")


class Parser(argparse.ArgumentParser):
    """argparse with selfsup's errors: one line, `selfsup: error: ...` with the help to read, and
    status 2 (argparse's own prints the whole usage block first). Commands' parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"selfsup: error: {message}; see {self.prog} --help\n")

    def _check_value(self, action, value):
        # argparse lists the choices but suggests none, and none across case ('Adam' -> 'adamw').
        if action.choices is not None and value not in action.choices:
            valid = [str(choice) for choice in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{nearest(value, valid)}; "
                                                 f"valid: {', '.join(valid)}")

    def parse_known_args(self, args=None, namespace=None):
        # Everything after a command is that command's: report a stray argument with its help.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def flags_to_config(values: dict) -> dict:
    """{'epochs': 10, 'lr': 0.3} -> {'train': {'epochs': 10}, 'optim': {'lr': 0.3}} (None skipped)."""
    from .config import merge_dicts, nested

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
    from .console import first_process, launched_by_torchrun
    from .train import run_pretraining

    user = load_yaml(args.config) if args.config else {}
    for assignment in args.set or []:
        user = merge_dicts(user, parse_assignment(assignment))
    flags = {name: getattr(args, name) for name in PRETRAIN_FLAGS}
    user = merge_dicts(user, flags_to_config(flags))
    started = time.perf_counter()
    try:
        result = run_pretraining(user, resume=args.resume, show_progress=not args.no_progress)
    except (KeyboardInterrupt, RunStopped) as stop:
        out = Path(args.out).expanduser()
        launcher = "torchrun --nproc-per-node N -m selfsup" if launched_by_torchrun() else "selfsup"
        resume = f"{launcher} pretrain --out {out} --resume"
        saved = (out / "last.pt").is_file()
        if isinstance(stop, RunStopped):  # a signal asked it to stop: it did, after a checkpoint if any
            then = f"continue with: {resume}" if saved else "nothing was saved yet: run the same command again"
            raise RunStopped(stop.signal_number, f"{stop}; {then}") from None
        raise KeyboardInterrupt(f"continue from the last checkpoint with: {resume}" if saved else
                                "nothing was saved yet: run the same command again") from None
    summary = pretrain_summary(result, time.perf_counter() - started)
    if first_process():  # under torchrun: one result, not one per process (the group is left by now)
        print(json.dumps(summary) if args.json else done_line(summary, result.config.data.monitor_path))
    return 0


def pretrain_summary(result, wall_seconds: float) -> dict:
    """`pretrain --json`: what a script that launches runs would otherwise read from the run folder,
    from run_pretraining's RunResult. `knn_top1` (labelled data) is the last epoch's, which the
    monitor always measures; `wall_seconds`, this call's time, decoding the images included."""
    cfg, records = result.config, result.metrics
    last = records[-1] if records else {}
    summary = {"checkpoint": str(result.checkpoint), **{k: last[k] for k in ("epoch", "loss", "knn_top1") if k in last},
               "out": str(result.out), "method": cfg.method, "backbone": cfg.backbone.name,
               "image_size": cfg.data.image_size, "epochs": cfg.train.epochs, "epochs_done": last.get("epoch", 0),
               "training_images": result.training_images, "total_steps": result.total_steps,
               "wall_seconds": round(wall_seconds, 2),
               **{k: last[k] for k in ("images_per_s", "std_ratio", "effective_rank") if k in last}}
    monitored = [record for record in records if "knn_top1" in record]
    if monitored:
        best = max(monitored, key=lambda record: record["knn_top1"])
        summary.update(best_knn_top1=best["knn_top1"], best_knn_epoch=best["epoch"])
    files = {"config": "config.yaml", "metrics": "metrics.jsonl", "curves": "curves.png"}
    summary["outputs"] = {key: str(result.out / name) for key, name in files.items() if (result.out / name).is_file()}
    return summary


def done_line(summary: dict, monitor_path: str = "") -> str:
    """'done: epoch 30, loss 4.2860, kNN top-1 0.412 on the held-out images, checkpoint runs/x/last.pt'
    (with --monitor-data, 'on the test images of ROOT')."""
    parts = [f"epoch {summary['epoch']}"] if "epoch" in summary else []
    if "loss" in summary:
        parts.append(f"loss {summary['loss']:.4f}")
    if "knn_top1" in summary:
        parts.append(f"kNN top-1 {summary['knn_top1']:.3f} on the "
                     + (f"test images of {monitor_path}" if monitor_path else "held-out images"))
    return "done: " + ", ".join(parts + [f"checkpoint {summary['checkpoint']}"])


def _export(args) -> int:
    from .export import export_encoder, metadata_values

    metadata = export_encoder(args.checkpoint, args.out, image_size=args.image_size, small_stem=args.small_stem,
                              backbone=args.backbone)
    print(json.dumps(metadata_values(metadata)) if args.json else f"wrote {metadata['out']} ({metadata['backbone']})")
    return 0


def _embed(args) -> int:
    from .console import plural
    from .export import embed_images

    result = embed_images(args.checkpoint, args.data, args.out, device=args.device, batch_size=args.batch_size,
                          cache_dir=args.cache_dir, show_progress=not args.no_progress, image_size=args.image_size,
                          small_stem=args.small_stem, backbone=args.backbone, bands=args.bands)
    print(json.dumps(result) if args.json else
          f"wrote {plural(result['count'], 'embedding')} of dimension {result['dim']} to {result['embeddings']} "
          f"(file list: {result['files']})")
    return 0


def add_attention_parser(commands, common) -> None:
    p = commands.add_parser("attention", help="draw the class token's self-attention maps of a ViT encoder")
    p.add_argument("--checkpoint", required=True, help="a selfsup checkpoint (or run folder) with a ViT encoder")
    p.add_argument("--images", required=True, help="an image, a folder of images or a tar of one")
    p.add_argument("--out", required=True, help="folder for one PNG per image (the image, the mean of heads, each "
                                                "head) and attention.png, every image beside its mean of heads")
    p.add_argument("--image-size", type=int, help="default: the encoder's training size, a random: one's the images' "
                                                  "(any multiple of the patch size)")
    p.add_argument("--max-images", type=int, default=32, help="draw the first N images (default %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bands", type=parse_bands, help=BANDS_HELP)
    common(p)
    p.set_defaults(run=_attention)


def _attention(args) -> int:
    from .attention import save_attention_maps
    from .console import plural

    result = save_attention_maps(args.checkpoint, args.images, args.out, image_size=args.image_size,
                                 device=args.device, max_images=args.max_images, bands=args.bands)
    print(json.dumps(result) if args.json else f"wrote {plural(result['images'], 'attention picture')} "
          f"({result['heads']} heads, {result['image_size']} px) to {result['out']}, and {result['overview']}: "
          f"every image beside its mean of heads")
    return 0


def _curate(args) -> int:
    from .curate import CurateConfig, curate

    config = CurateConfig(threshold=args.threshold, k=args.k, clusters=args.clusters, per_cluster=args.per_cluster,
                          seed=args.seed)
    summary = curate(args.pool, args.seed_set, args.checkpoint, args.out, exclude=args.exclude, config=config,
                     device=args.device, backbone=args.backbone, image_size=args.image_size,
                     small_stem=args.small_stem, bands=args.bands, make_tar=args.tar,
                     show_progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    else:  # curate() has said the counts on stderr; here: what was written and what to look at
        outputs = summary["outputs"]
        print(f"wrote {summary['retrieved']:,} retrieved images to {outputs['data']}; check "
              f"{outputs['duplicates_png']} and {outputs['retrieved_png']} by eye "
              f"(every figure: {outputs['summary']})")
    return 0


def _cluster(args) -> int:
    from .explore import cluster_images

    summary = cluster_images(args.data, args.checkpoint, args.out, clusters=args.clusters, seed=args.seed,
                             shown=args.shown, device=args.device, backbone=args.backbone,
                             image_size=args.image_size, small_stem=args.small_stem, bands=args.bands,
                             show_progress=not args.no_progress)
    outputs = summary["outputs"]
    print(json.dumps(summary) if args.json else f"wrote {outputs['csv']}; look at {outputs['png']}")
    return 0


def _search(args) -> int:
    from .explore import search_images

    summary = search_images(args.query, args.gallery, args.checkpoint, args.out, k=args.k, device=args.device,
                            backbone=args.backbone, image_size=args.image_size, small_stem=args.small_stem,
                            bands=args.bands, show_progress=not args.no_progress)
    outputs = summary["outputs"]
    print(json.dumps(summary) if args.json else f"wrote {outputs['csv']}; look at {outputs['png']}")
    return 0


def _select(args) -> int:
    from .selection import select_images

    summary = select_images(args.data, args.checkpoint, args.out, budget=args.budget, strategy=args.strategy,
                            labelled=args.labelled or (), seed=args.seed, copy=args.copy, device=args.device,
                            backbone=args.backbone, image_size=args.image_size, small_stem=args.small_stem,
                            bands=args.bands, show_progress=not args.no_progress)
    outputs = summary["outputs"]
    copies = f" (the files: {outputs['copies']})" if "copies" in outputs else ""
    print(json.dumps(summary) if args.json else f"wrote {outputs['csv']}{copies}; look at {outputs['png']}")
    return 0


def _cache(args) -> int:
    from .console import plural
    from .data.cache import cache_folder, list_caches, remove_dead_builds, remove_unused_caches, unfinished_builds

    root = cache_folder(args.cache_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{str(root)!r} is a file; --cache-dir takes the folder that holds the caches")
    if not root.exists():
        print(f"no cache folder at {root}: nothing has been cached there yet")
        return 0
    if args.remove_unused_days is not None and args.remove_unused_days < 0:
        raise UserError(f"--remove-unused-days must be 0 or more, got {args.remove_unused_days:g}")
    # Removing is asked for, never done by the listing; --remove-unused-days frees dead builds too.
    cleared = remove_dead_builds(root) if args.remove_dead_builds or args.remove_unused_days is not None else []
    removed = [] if args.remove_unused_days is None else remove_unused_caches(root, args.remove_unused_days)
    kept, building = list_caches(root), unfinished_builds(root)
    if args.json:
        def described(e):
            return {"path": str(e.path), "source": e.source, "images": e.images, "size": e.size, "bytes": e.bytes,
                    "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.last_used)), "bands": e.bands}
        print(json.dumps({"cache_dir": str(root), "caches": [described(e) for e in kept],
                          "removed": [described(e) for e in removed],
                          "removed_builds": [{"path": str(b.path), "bytes": b.bytes} for b in cleared],
                          "unfinished_builds": [{"path": str(b.path), "bytes": b.bytes, "dead": b.dead}
                                                for b in building]}))
        return 0
    for e in kept:
        print(f"{_bytes(e.bytes):>9}  used {time.strftime('%Y-%m-%d', time.localtime(e.last_used))}  "
              f"{e.images:,} images of {e.size} px{_bands(e.bands)} from {e.source}  ({e.path.name})")
    if removed:
        print(f"removed {plural(len(removed), 'cache')} unused for {args.remove_unused_days:g} days: "
              f"{_bytes(sum(e.bytes for e in removed))} freed")
    if cleared:
        print(f"removed {plural(len(cleared), 'dead build')} (killed on this machine): "
              f"{_bytes(sum(b.bytes for b in cleared))} freed")
    print(f"{plural(len(kept), 'cache')}, {_bytes(sum(e.bytes for e in kept))}, in {root}")
    if building:
        print(f"and {plural(len(building), 'unfinished build')}, {_bytes(sum(b.bytes for b in building))} "
              f"({_unfinished(building, args.cache_dir)})")
    return 0


def _unfinished(building: list, cache_dir: str | None) -> str:
    """What the unfinished builds of `selfsup cache` are, and what removes them."""
    from .console import plural

    dead = [b for b in building if b.dead]
    parts = []
    if dead:
        where = f" --cache-dir {shlex.quote(cache_dir)}" if cache_dir else ""
        parts.append(f"{plural(len(dead), 'dead build')}, {_bytes(sum(b.bytes for b in dead))}, killed on this "
                     f"machine: selfsup cache{where} --remove-dead-builds removes them, as does the next build here")
    if len(dead) < len(building):
        parts.append(f"{len(building) - len(dead):,} under way, or killed on another machine, which removes it "
                     f"when it builds next")
    return ".building-*: " + "; ".join(parts)


def _bands(bands: list[int] | None) -> str:
    return f" (TIFF bands {','.join(map(str, bands))})" if bands else ""


def _bytes(count: int) -> str:
    """'193.4 GB', '12.0 MB', '800 B'."""
    for unit, power in (("GB", 30), ("MB", 20), ("KB", 10)):
        if count >= 2**power:
            return f"{count / 2**power:.1f} {unit}"
    return f"{count} B"


def _encoder_options(parser: argparse.ArgumentParser) -> None:
    """The encoder that embeds images, for the commands that embed images (embed, curate, cluster, search,
    select)."""
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint, run folder, random:BACKBONE[@seed=N] or weights:FILE")
    parser.add_argument("--backbone", help="with weights:FILE not written by selfsup export: its architecture")
    parser.add_argument("--image-size", type=int, help="with random: or weights:, the input size")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                        help="with random:/weights: ResNets: the 3x3 stem without max-pool (default: up to 64 px)")
    parser.add_argument("--device", default="auto", help="where to embed: auto, cpu, cuda, cuda:N")
    parser.add_argument("--bands", type=parse_bands, help=BANDS_HELP)


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(out=args.out, epochs=args.epochs, device=args.device, show_progress=not args.no_progress,
                      show_table=not args.json)  # --json: one JSON object on stdout, nothing else
    if args.json:
        print(json.dumps(result))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .eval.command import add_eval_parser
    from .report.command import add_report_parser
    from .synth.command import add_synth_parser

    parser = Parser(prog="selfsup", description="Self-supervised visual representation learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pretrain", help="pretrain an encoder on unlabelled images")
    p.add_argument("--method", help="simclr (default), moco-v2, moco-v3, byol, dino, mae, ibot, distill, rotation, "
                                    "relative-location, jigsaw, colorization, inpainting, temporal-order, egomotion, "
                                    "interaction")
    p.add_argument("--data", help="folder of images (searched recursively) or a .tar/.tar.gz/.tar.xz of one")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, config.yaml")
    p.add_argument("--monitor-data", help="labelled images (a root holding train/ and test/) on which to measure "
                                          "kNN accuracy while training (default: a held-out part of --data, when it "
                                          "has class subfolders)")
    p.add_argument("--backbone", help="resnet18, resnet18-half, resnet34, resnet50, vit-tiny, vit-small, vit-base, "
                                      "or timm:NAME (default: the preset's, else resnet18)")
    p.add_argument("--epochs", type=int, help="default: the preset's (e.g. simclr cifar 200), else 100")
    p.add_argument("--batch-size", type=int, help="default: the preset's, else 256")
    p.add_argument("--lr", type=float, help="base learning rate per the preset's reference batch (256 unless it "
                                            "says), scaled to --batch-size as the preset says (linear or sqrt)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"])
    p.add_argument("--image-size", type=int, help="side of the square images trained on (default 224)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML file of config values (flags override it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. optim.lr=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the backbone and the views")
    p.add_argument("--tensorboard", action="store_const", const=True,
                   help="also write the metrics as TensorBoard scalars to RUN_DIR/tensorboard (pip install tensorboard)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default $SELFSUP_CACHE or ~/.cache/selfsup)")
    p.add_argument("--bands", type=parse_bands,
                   help="of multi-band TIFFs (satellite tiles, microscopes' channels): the bands read as red, green "
                        "and blue, from 1, e.g. 4,3,2; or one, read as gray (default: the first three; needs "
                        "pip install 'selfsup[tiff]')")
    p.add_argument("--preset", help="cifar or imagenet (default: cifar up to 64 px; with a ViT, "
                                          "dino's cifar-vit/imagenet-vit, moco-v3's imagenet-vit)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="3x3 stride-1 first convolution, no max-pool (default: on up to 64 px)")
    p.add_argument("--patch-size", type=int,
                   help="ViT patch size (default: the preset's, else 16 from 64 px up, 4 below)")
    p.add_argument("--global-crops", type=int, help="multi-crop methods (dino, ibot, distill): global crops per image")
    p.add_argument("--local-crops", type=int, help="multi-crop methods (dino, ibot, distill): local crops per image")
    p.add_argument("--local-size", type=int, help="multi-crop methods (dino, ibot, distill): side of local crops in pixels")
    p.add_argument("--teacher", help="--method distill: the teacher (a checkpoint, run folder or weights:FILE)")
    _common(p)
    p.set_defaults(run=_pretrain)

    add_eval_parser(commands, _common)
    add_report_parser(commands, _common)
    add_synth_parser(commands, _common)
    add_attention_parser(commands, _common)

    p = commands.add_parser("export", help="write the encoder's weights as safetensors (or the encoder as ONNX)",
                            description="Write the encoder of a checkpoint as a safetensors file: the keys of the "
                                        "plain torchvision or timm model, with its architecture, image size and "
                                        "normalisation in the file's metadata (see the README on loading it "
                                        "without selfsup). An --out ending in .onnx writes an ONNX graph instead, "
                                        "taking RGB in [0, 1] (pip install 'selfsup[onnx]').")
    p.add_argument("--checkpoint", required=True,
                   help="a selfsup checkpoint or run folder, random:BACKBONE, or weights:FILE (with --backbone)")
    p.add_argument("--backbone", help="with weights:FILE not written by selfsup export: its architecture "
                                      "(e.g. resnet50, timm:NAME)")
    p.add_argument("--out", required=True, help="a .safetensors file, or a folder to write encoder.safetensors in, "
                                                "or an .onnx file")
    p.add_argument("--image-size", type=int, help="with random:, the input size: export has no images to take it "
                                                  "from (default 224)")
    p.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="with random: ResNets: the 3x3 stem without max-pool (default: up to 64 px)")
    _common(p)
    p.set_defaults(run=_export)

    p = commands.add_parser("embed", help="write one L2-normalised vector per image (.npy)",
                            description="Write the encoder's features of every image, each divided by its L2 "
                                        "norm (so a dot product is a cosine similarity), as a float32 .npy "
                                        "array, one row per image, and the images' names, row by row, in the "
                                        "same name with .files.txt for .npy. Without a decoded-image cache of the "
                                        "data (a pretraining run's), the images are embedded 4,096 at a time and "
                                        "saved in OUT.parts/ until the end: a killed embed resumes where it stopped.")
    _encoder_options(p)
    p.add_argument("--data", required=True, help="a folder of images, a tar of one, or a .txt list")
    p.add_argument("--out", required=True, help="a .npy file, or a folder to write embeddings.npy into")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir")
    _common(p)
    p.set_defaults(run=_embed)

    p = commands.add_parser("curate", help="deduplicate a pool of images and retrieve those near a seed set",
                            description="Embed the pool and the seed set, remove near-duplicates inside the pool "
                                        "(and copies of --exclude's images), then keep the pool images nearest the "
                                        "seed set (or, with --clusters, drawn evenly from the clusters nearest it). "
                                        "Writes OUT/curated.txt (OUT/curated.tar for a pool in a tar), which pretrain "
                                        "--data reads, pictures of duplicate groups and of retrieved neighbours, and "
                                        "OUT/summary.json. A killed "
                                        "curation resumes where it stopped.")
    p.add_argument("--pool", required=True, help="the uncurated images (folder, tar or .txt list)")
    p.add_argument("--seed-set", required=True, help="a few images of what you want more of (folder, tar, list or one image)")
    _encoder_options(p)
    p.add_argument("--out", required=True, help="folder for curated.txt, the pictures, summary.json, embeddings/")
    p.add_argument("--exclude", help="evaluation images whose near-duplicates must leave the pool")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="cosine similarity of near-duplicates (default %(default)s)")
    p.add_argument("--k", type=int, default=10, help="pool images retrieved per seed image (default %(default)s)")
    p.add_argument("--clusters", type=int, default=0, help="> 0: sample from this many k-means clusters")
    p.add_argument("--per-cluster", type=int, default=100,
                   help="images drawn per cluster near a seed (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="k-means' starts (default %(default)s)")
    p.add_argument("--tar", action="store_true", help="also write OUT/curated.tar")
    _common(p)
    p.set_defaults(run=_curate)

    p = commands.add_parser("cluster", help="group images by k-means on their embeddings; a picture of each group",
                            description="Embed every image, group them by k-means (cosine similarity, largest "
                                        "group first) and write OUT/clusters.csv (file, cluster, cosine to its "
                                        "centre) and OUT/clusters.png (the images nearest each centre). "
                                        "Embeddings are kept in OUT: another --clusters embeds nothing again.")
    p.add_argument("--data", required=True, help="a folder of images, a tar of one, or a .txt list")
    _encoder_options(p)
    p.add_argument("--out", required=True, help="folder for clusters.csv, clusters.png, summary.json, embeddings/")
    p.add_argument("--clusters", type=int, default=10, help="how many groups (default 10)")
    p.add_argument("--shown", type=int, default=8, help="images drawn per cluster in clusters.png (default 8)")
    p.add_argument("--seed", type=int, default=0, help="k-means' starts (default 0)")
    _common(p)
    p.set_defaults(run=_cluster)

    p = commands.add_parser("search", help="find the gallery images most similar to query images",
                            description="Write OUT/neighbours.csv (query, rank, file, cosine similarity of "
                                        "the encoder's features) and OUT/neighbours.png. A query that is "
                                        "itself a gallery image is not its own neighbour; --k is cut to the "
                                        "gallery's size. Embeddings are kept in OUT: other queries against "
                                        "the same gallery embed only the queries.")
    p.add_argument("--query", required=True, help="an image, a folder of images, a tar of one or a .txt list")
    p.add_argument("--gallery", required=True, help="the images to search (folder, tar or .txt list)")
    _encoder_options(p)
    p.add_argument("--out", required=True, help="folder for neighbours.csv, neighbours.png, summary.json, embeddings/")
    p.add_argument("--k", type=int, default=8, help="neighbours per query (default 8)")
    _common(p)
    p.set_defaults(run=_search)

    p = commands.add_parser("select", help="choose the images to label first, when only a few can be labelled",
                            description="Embed every image of the pool and choose --budget of them to label: "
                                        "typiclust (default) takes the most typical image of each of the largest "
                                        "k-means groups that hold no label yet, the choice that helps most when "
                                        "labels are few; kcenter spreads the choices as far apart as it can; "
                                        "random is the baseline. Writes OUT/to_label.csv in the order to label, "
                                        "and OUT/to_label.png. Evaluate a choice with selfsup eval --subset.")
    p.add_argument("--data", required=True, help="the pool: a folder of images, a tar of one, or a .txt list "
                                                 "(a dataset root with train/ and test/: its train/ images)")
    _encoder_options(p)
    p.add_argument("--out", required=True, help="folder for to_label.csv, to_label.png, summary.json, embeddings/")
    p.add_argument("--budget", type=int, required=True, help="how many images to choose")
    p.add_argument("--strategy", default="typiclust", choices=["typiclust", "kcenter", "random"])
    p.add_argument("--labelled", nargs="+", metavar="FILE",
                   help="images already labelled, never chosen again: an earlier round's to_label.csv, a .txt of "
                        "one name per line, or a label subset JSON of selfsup eval")
    p.add_argument("--copy", action="store_true", help="also copy the chosen files into OUT/to_label/")
    p.add_argument("--seed", type=int, default=0, help="k-means' starts; random's draw (default 0)")
    _common(p)
    p.set_defaults(run=_select)

    p = commands.add_parser("cache", help="list the decoded-image caches, and remove those no longer used",
                            description="List the caches of decoded images (one per dataset and image size), "
                                        "most recently used first, with their size on disk, and the unfinished "
                                        "builds; the listing removes nothing. A run that needs a removed cache "
                                        "decodes its images again.")
    p.add_argument("--cache-dir", help="default $SELFSUP_CACHE or ~/.cache/selfsup")
    p.add_argument("--remove-unused-days", type=float, metavar="DAYS",
                   help="remove the caches no run has opened or checkpointed with for this many days (and the "
                        "dead builds)")
    p.add_argument("--remove-dead-builds", action="store_true",
                   help="remove the unfinished builds left by builds killed on this machine (listed as dead)")
    _common(p)
    p.set_defaults(run=_cache)

    p = commands.add_parser("demo", help="pretrain SimCLR on the CIFAR-10 sample that ships with selfsup (CPU, minutes)")
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    p.add_argument("--epochs", type=int, help="default 30, the demo's own")
    p.add_argument("--device", default="auto")
    _common(p)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # imports tqdm: a Ctrl-C may land here too
        from .console import first_process, launched_by_torchrun, one_command

        provenance.COMMAND = ["selfsup", *(sys.argv[1:] if argv is None else argv)]  # for records and run.json

        args = build_parser().parse_args(argv)  # inside: commands import PyTorch, seconds a Ctrl-C may hit
        if args.command != "pretrain" and launched_by_torchrun():
            if not first_process():
                return 2
            raise UserError(f"selfsup {args.command} runs in one process: run it without torchrun "
                            f"(pretrain is the command that torchrun spreads over processes)")
        with one_command():
            return args.run(args)
    except UserError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # under torchrun, a collective that lost the process which stopped
        from . import dist
        from .console import launched_by_torchrun
        if not (launched_by_torchrun() and dist.is_peer_failure(e)):  # not dist.is_distributed(): the group is left
            raise
        print("selfsup: error: another process of this torchrun job stopped (its message, if it had one, is "
              "above); fix what it says and launch again (with --resume if a checkpoint was written)",
              file=sys.stderr)
        return 2
    except OSError as e:  # the disk full, a file that cannot be written, ...: a fact, not a bug
        print(f"selfsup: error: {e}; check the paths and free space, then run the same command again",
              file=sys.stderr)
        return 2
    except RunStopped as e:
        from .console import first_process

        if first_process():
            print(f"selfsup: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt as e:
        from .console import first_process

        if first_process():  # under torchrun: once, not once per process
            print("selfsup: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    finally:
        provenance.COMMAND = None  # a later call from Python, in the same process, is the API's


if __name__ == "__main__":
    sys.exit(main())
