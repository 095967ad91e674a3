"""The report's tables: a run's recorded evaluations, and runs compared side by side."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import yaml

from ..console import plural

EVAL_HEADERS = ["time", "checkpoint", "protocol", "labels", "image size", "seeds", "top-1", "95 % interval", "top-5",
                "other", "test data"]


def _mean_std(result: dict, key: str) -> str:
    if key not in result:
        return ""
    std = result.get(f"{key}_std", 0.0)
    return f"{result[key]:.4f}" + (f" ± {std:.4f}" if result.get("seeds", 1) > 1 else "")


def _settings(result: dict) -> list[str]:
    """The protocol settings of a result that differ from the protocol's defaults (so that results
    made otherwise are told apart): kNN's temperature, the probe's epochs, grids, batch size and
    validation fraction, fine-tuning's config, ... (`protocols.setting_defaults`). A record made
    before a setting was written counts as made with its default."""
    from ..eval.protocols import setting_defaults

    protocol = result.get("curve_protocol") if result["protocol"] == "curve" else result["protocol"]
    parts = []
    for key, default in setting_defaults(protocol).items():
        if isinstance(default, dict):  # finetune's config, field by field
            parts += [f"{k.replace('_', ' ')} {v}" for k, v in (result.get(key) or {}).items()
                      if k in default and v != default[k]]
        elif result.get(key, default) != default:
            parts.append(f"T={result[key]}" if key == "temperature" else f"{key.replace('_', ' ')} {result[key]}")
    return parts


def _position(result: dict) -> str:
    """The evaluated checkpoint's place in its run: '2 epochs', or '0 epochs + 2 batches' for one
    written mid-epoch; '(not last.pt now)' when the run has moved on since (see `is_current`)."""
    at = result.get("checkpoint_position")
    text = "" if not at else plural(at["epoch"], "epoch") + (f" + {plural(at['batch'], 'batch', 'batches')}"
                                                             if at.get("batch") else "")
    return text + ("" if result.get("current", True) else " (not last.pt now)")


def _other(result: dict) -> str:
    """What a protocol reports beside top-1 (kNN's k, retrieval's precision@k and mAP), and its
    settings that are not the defaults."""
    if result["protocol"] == "knn":  # its one setting, the temperature, is always shown
        return f"k={result.get('k')}, T={result.get('temperature')}"
    parts = []
    if result["protocol"] == "retrieval":
        parts = [f"mAP {result['map']:.4f}"] if "map" in result else []
        parts += [f"{k} {v:.4f}" for k, v in result.items() if k.startswith("precision@")
                  and not k.endswith(("_std", "_ci"))]
    return ", ".join(parts + _settings(result))


def eval_rows(evals: list[dict]) -> list[list]:
    rows = []
    for r in evals:
        if r.get("protocol") == "curve":
            continue
        ci = r.get("top1_ci")
        size = r.get("image_size")  # not in records made before 2026-11-26
        rows.append([r.get("time", ""), _position(r), r["protocol"], r.get("budget", ""), f"{size} px" if size else "",
                     r.get("seeds", 1),
                     _mean_std(r, "top1"), f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "", _mean_std(r, "top5"),
                     _other(r), r.get("test_data", "")])
    return rows


def latest_curves(evals: list[dict]) -> list[dict]:
    """The last label-efficiency curve recorded for each protocol (kNN, linear, fine-tuning), its
    settings and its data (their paths and images: a curve on other images is not a newer one),
    of the run's current checkpoint."""
    latest = {_curve_column(r): r for r in evals if r.get("protocol") == "curve" and r.get("current", True)}
    return list(latest.values())


def _curve_column(curve: dict) -> Column:
    """What a curve is comparable with, as a column of the comparison is (see `_column`)."""
    return Column(", ".join([str(curve.get("curve_protocol")), *_settings(curve)]), *_data_of(curve))


def _data_of(record: dict) -> tuple:
    """(training data, test data, their pixels' SHA-256) of a result or a curve: one name for a
    folder however it was given."""
    from ..eval.record import data_name

    train, test = (data_name(d) if d else d for d in (record.get("train_data"), record.get("test_data")))
    return train, test, record.get("train_pixels_sha256"), record.get("test_pixels_sha256")


def curve_titles(curves: list[dict]) -> list[str]:
    """Each curve's protocol, settings and test data: 'linear, epochs 20 on /d/test', naming its
    images and training data where another curve shown has the same name with others."""
    columns = [_curve_column(c) for c in curves]
    return [_header(c, columns, {}) for c in columns]


def current_lines(curve: dict) -> tuple[dict, list[str]]:
    """(the curve with only its current lines, the encoders of those left out): a line of a
    checkpoint its run has moved on from is not the run's, as in the comparison table."""
    lines = curve.get("lines", [])
    stale = [line["encoder"] for line in lines if not line.get("current", True)]
    return {**curve, "lines": [line for line in lines if line.get("current", True)]}, stale


def _headline(result: dict) -> float | None:
    return result.get("map") if result["protocol"] == "retrieval" else result.get("top1")


class Column(NamedTuple):
    """What a figure is comparable with (see `_column`)."""
    name: str  # protocol, k, budget, image size, seeds, settings: 'knn k=200 (all labels, 32 px)'
    train: str | None
    test: str | None
    train_pixels: str | None  # the SHA-256 of the images' pixels (None: a record made before it was kept)
    test_pixels: str | None


def _column(result: dict) -> Column:
    """What a result's figure is comparable with: the same protocol (and k for kNN), label budget,
    image size, number of seeds, settings, training and test data (one name however the folder
    was given) and the same images in them (a folder replaced in place is other data). Results
    that differ in any of these never share a column."""
    k = f" k={result.get('k')}" if result["protocol"] == "knn" else ""
    size = [f"{result['image_size']} px"] if result.get("image_size") else []
    seeds = [f"{result['seeds']} seeds"] if result.get("seeds", 1) > 1 else []  # a mean over seeds is another figure
    details = ", ".join([result.get("budget", "all labels"), *size, *seeds, *_settings(result)])
    return Column(f"{result['protocol']}{k} ({details})", *_data_of(result))


def read_run_config(run: Path) -> dict | None:
    """RUN/config.yaml as a dict: {} when there is none, None when it cannot be read (cut short,
    edited by hand, or holding tags a safe loader refuses): the report says so and goes on."""
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def run_evals(run: Path) -> list[dict]:
    """The run's records, each marked "current": whether it evaluated the run's last.pt as it is
    now (a result of a checkpoint written before a --resume finished is not the run's result)."""
    from ..eval.record import current_checkpoint_sha256, is_current, read_evals

    now = current_checkpoint_sha256(run)
    records = [{**r, "current": is_current(r, now)} for r in read_evals(run)]
    return [{**r, "lines": _lines_marked(r)} if r.get("protocol") == "curve" else r for r in records]


def _lines_marked(curve: dict) -> list[dict]:
    """A curve's lines, each marked "current" against its own run's last.pt: a curve recorded into
    several runs holds the others' lines, which go stale when one of them trains on. The record's
    own line is as current as the record; a line whose run cannot be found (moved, or an older
    record's relative path) cannot tell, and counts as current."""
    from ..eval.record import current_checkpoint_sha256, is_current, run_folder

    marked = []
    for line in curve.get("lines", []):
        if line.get("checkpoint") == curve.get("checkpoint"):
            current = curve["current"]
        else:
            folder = line.get("run_dir") or run_folder(line.get("checkpoint", "random:"))
            current = folder is None or is_current(line, current_checkpoint_sha256(folder))
        marked.append({**line, "current": current})
    return marked


def _run_facts(run: Path) -> tuple[dict, dict, list[tuple[dict, dict]]]:
    """(what the run is, its latest figure in each column, its current curves' baseline lines
    with their curve). A curve's points are figures like any evaluation's: a linear probe at 10
    labels per class over 3 seeds, from `eval curve` or `eval linear`, is one column."""
    from ..train import read_metrics

    cfg = read_run_config(run) or {}
    metrics = read_metrics(run)
    knn = [m["knn_top1"] for m in metrics if "knn_top1" in m]
    data = _section(cfg, "data")
    facts = {"method": cfg.get("method"), "backbone": _backbone(_section(cfg, "backbone")),
             "preset": cfg.get("preset"), "image size": data.get("image_size"),
             "batch size": _section(cfg, "train").get("batch_size"),
             "epochs": metrics[-1]["epoch"] if metrics else None,
             "pretraining data": data.get("path") or None,  # runs on other images are not alike
             "final loss": metrics[-1].get("loss") if metrics else None, "online kNN": knn[-1] if knn else None,
             # kNN on a held-out part of the run's images, or on labelled images of the user's (--monitor-data)
             "online kNN on": (data.get("monitor_path") or "held-out images") if knn else None}
    records = [r for r in run_evals(run) if r["current"]]
    results = [p for r in records for p in (_own_points(r) if r.get("protocol") == "curve" else [r])]
    latest = {_column(r): r for r in results if _headline(r) is not None}  # in time order: the latest stays
    baselines = [(r, line) for r in records if r.get("protocol") == "curve" for line in r["lines"]
                 if str(line.get("checkpoint", "")).startswith(BASELINES)]
    return facts, latest, baselines


BASELINES = ("random:", "weights:")  # encoders that are not runs: a curve's lines are their only records


def _own_points(curve: dict) -> list[dict]:
    """The curve's points of the run it was recorded into, as results (see `_points`)."""
    return [p for line in curve.get("lines", []) if line.get("checkpoint") == curve.get("checkpoint")
            for p in _points(curve, line)]


def _points(curve: dict, line: dict) -> list[dict]:
    """A line's points as the results a single evaluation at each budget gives: the curve's
    protocol and settings, the line's image size and images, each point's budget, seeds and k.
    A kNN point of a record made before points kept their k (which a small budget cuts) has no
    column it surely belongs to: left out."""
    from ..eval.protocols import setting_defaults

    protocol = curve.get("curve_protocol")
    settings = {k: curve[k] for k in setting_defaults(protocol) if k in curve}
    images = {k: line.get(k, curve.get(k)) for k in ("train_pixels_sha256", "test_pixels_sha256")}
    return [{"protocol": protocol, "budget": p.get("budget", "all labels"), "k": p.get("k"),
             "image_size": line.get("image_size"), "seeds": p.get("seeds", len(p.get("per_seed") or [None])),
             **settings, "top1": p.get("top1"), "time": curve.get("time"), "train_data": curve.get("train_data"),
             "test_data": curve.get("test_data"), **images}
            for p in line.get("points", []) if protocol != "knn" or "k" in p]


def _baseline_rows(found: list[tuple[dict, dict]], keys: list[str]) -> list[tuple[str, dict, dict]]:
    """(name, facts, latest figure per column) of each random: or weights: encoder in the runs'
    curves: one row per baseline (see `_baseline_key`), the latest figure of each column from
    whichever run's curve holds it; rows of one name are told apart by what differs (see `_told_apart`)."""
    rows: dict[BaselineKey, tuple[str, dict, dict]] = {}
    for curve, line in sorted(found, key=lambda f: f[0].get("time", "")):
        spec, key = line["checkpoint"], _baseline_key(line)
        facts = {**dict.fromkeys(keys), "method": "random init" if spec.startswith("random:") else "weights",
                 "backbone": key.backbone, "image size": line.get("image_size")}
        _, _, latest = rows.setdefault(key, (line.get("encoder", spec), facts, {}))
        latest.update({_column(r): r for r in _points(curve, line) if _headline(r) is not None})
    named = [(key, name) for key, (name, _, _) in rows.items()]
    return [(_told_apart(key, name, named), facts, latest) for key, (name, facts, latest) in rows.items()]


class BaselineKey(NamedTuple):
    """What one baseline is (see `_baseline_key`)."""
    encoder: str | None  # random:NAME, or the weights: spec; None: a weights file known under any path by its digests
    backbone: str | None
    init_seed: int | None
    image_size: int | None
    bands: tuple[int, ...]
    weights_sha256: str | None  # of the network evaluated (None: a record made before it was kept)
    file_sha256: str | None  # a weights: file's


def _baseline_key(line: dict) -> BaselineKey:
    """What one baseline is: a random: one's backbone and seed (random:resnet18 and
    random:resnet18@seed=0 are one draw), a weights: one's file and its SHA-256 (a file replaced
    under the same name is another baseline), and for both the image size, the bands and the
    weights' SHA-256 (the same seed draws other weights with another torch or timm). A weights:
    file is one baseline under any path where its line holds the network's weights' SHA-256 too,
    which changes with the backbone's layers (--small-stem, a ViT's patch size); an older line,
    without it, cannot tell how the file was loaded, and keeps its path."""
    from ..encoder import random_spec

    spec = line["checkpoint"]
    weights, file = line.get("encoder_weights_sha256"), line.get("weights_file_sha256")
    if spec.startswith("random:"):
        backbone = random_spec(spec)[0]
        encoder = f"random:{backbone}"
    else:
        backbone = _weights_backbone(line)
        encoder = None if weights and file else spec
    return BaselineKey(encoder, backbone, line.get("init_seed"), line.get("image_size"),
                       tuple(line.get("bands") or ()), weights, file)


def _weights_backbone(line: dict) -> str | None:
    """The backbone a weights: line's encoder was loaded as, from its name: 'resnet18 weights (w.safetensors)'."""
    backbone, loaded, _ = line.get("encoder", "").partition(" weights (")
    return backbone if loaded else None


# What tells apart baselines of one name, in the order shown; the seed and the backbone, which
# the name holds, only where all these leave two alike (a line of a record made before the seed was kept).
_TOLD_BY = ("encoder", "image_size", "bands", "file_sha256", "weights_sha256")
_TOLD_LAST_BY = ("init_seed", "backbone")


def _told_apart(key: BaselineKey, name: str, named: list[tuple[BaselineKey, str]]) -> str:
    """The baseline's name, followed, where other rows have the same name, by what differs: 'at 32
    px', 'bands 4,3,2', its path, its file's or its weights' SHA-256. Each field of the key that
    differs is shown, so two rows are never named alike."""
    rivals = [k for k, n in named if n == name]
    if len(rivals) == 1:
        return name
    fields = [f for f in _TOLD_BY if len({getattr(k, f) for k in rivals}) > 1]
    if len({tuple(getattr(k, f) for f in fields) for k in rivals}) < len(rivals):
        fields += [f for f in _TOLD_LAST_BY if len({getattr(k, f) for k in rivals}) > 1]
    shown = (_field_named(f, getattr(key, f)) for f in fields)
    return ", ".join([name, *(text for text in shown if text)])


def _field_named(field: str, value) -> str:
    """A field of a baseline's key for a person: one text per value (a weights file known under any
    path shows none)."""
    if field == "encoder":
        return value or ""
    if field == "image_size":
        return f"at {value} px" if value else "image size not recorded"
    if field == "bands":
        return f"bands {','.join(map(str, value))}" if value else "bands 1,2,3"  # the default: the first three
    if field == "init_seed":
        return f"seed {value}" if value is not None else "seed not recorded"
    if field == "backbone":
        return f"backbone {value}" if value else "backbone not recorded"
    kind = "file" if field == "file_sha256" else "weights"
    return f"{kind} sha256 {value[:8]}" if value else f"{kind} sha256 not recorded"


def _section(cfg: dict, name: str) -> dict:
    """A section of a run's config; {} where it is missing or empty (a hand-written config.yaml)."""
    return cfg.get(name) or {}


def _backbone(section: dict) -> str | None:
    """The backbone's name, with a ViT's patch size: 'vit-small/16' (its config holds the size
    training used; a ResNet's is None)."""
    name, patch = section.get("name"), section.get("patch_size")
    return f"{name}/{patch}" if name and patch else name


def _images(digest: str | None, seen: dict[str, str]) -> str:
    """Which images a column's data were, for a person: '(images as of 2026-11-27 14:03, sha256
    1a2b3c4d)', the time of the first result shown that was made on them."""
    if digest is None:
        return "(images not recorded: an older eval)"
    when = seen.get(digest, "").replace("T", " ")[:16]
    return f"(images as of {when}, sha256 {digest[:8]})" if when else f"(images sha256 {digest[:8]})"


def _header(column: Column, columns: list[Column], seen: dict[str, str]) -> str:
    """'knn k=200 (all labels) on TEST', naming the training data too where another column has the
    same name with other training data, and telling the images apart where another column has the
    same data path with other images (a folder replaced in place between two evaluations)."""
    rivals = [c for c in columns if c.name == column.name and c.test == column.test]
    header = f"{column.name} on {column.test}" if column.test else column.name
    if any(c.test_pixels != column.test_pixels for c in rivals):
        header += " " + _images(column.test_pixels, seen)
    rivals = [c for c in rivals if c.test_pixels == column.test_pixels]
    if any(c.train != column.train or c.train_pixels != column.train_pixels for c in rivals):
        header += f", labels from {column.train}"
        if any(c.train == column.train and c.train_pixels != column.train_pixels for c in rivals):
            header += " " + _images(column.train_pixels, seen)
    return header


def comparison_rows(runs: list[Path], names: list[str]) -> tuple[list[str], list[list]]:
    """(headers, one row per run, then one per baseline in their curves): what each is, and its
    latest figure per protocol, label budget and data (top-1; mAP for retrieval)."""
    facts, latest, found = zip(*(_run_facts(run) for run in runs))
    baselines = _baseline_rows([f for fs in found for f in fs], list(facts[0]))
    names = [*names, *(name for name, _, _ in baselines)]
    facts, latest = [*facts, *(f for _, f, _ in baselines)], [*latest, *(g for _, _, g in baselines)]
    columns = list(dict.fromkeys(c for f in latest for c in f))
    seen = {}  # the pixels' digest: when the first result shown on those images was made
    for r in sorted((r for f in latest for r in f.values() if "time" in r), key=lambda r: r["time"], reverse=True):
        seen.update({r[k]: r["time"] for k in ("train_pixels_sha256", "test_pixels_sha256") if r.get(k)})
    headers = list(facts[0]) + [_header(c, columns, seen) for c in columns]
    rows = [[name, *f.values(), *(_headline(g[c]) if c in g else None for c in columns)]
            for name, f, g in zip(names, facts, latest)]
    return ["run"] + headers, rows
