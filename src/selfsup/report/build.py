"""The report's assembly: see the package's docstring."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import numpy as np

from ..config import override, ranged
from ..console import one_command, option, plural
from ..errors import UserError
from ..outputs import atomic_path, named_output, output_file
from . import figures, html
from .tables import (EVAL_HEADERS, comparison_rows, current_lines, curve_titles, eval_rows, latest_curves,
                     read_run_config, run_evals)

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt")


@dataclass
class Ranges:
    """The valid values of the pictures' options, checked by `config.override` like any config
    value. Only the ranges are used: the defaults are `build_report`'s."""
    queries: int = ranged(6, 1, None)
    neighbours: int = ranged(8, 1, None)
    max_points: int = ranged(2000, figures.MIN_MAP_POINTS, None)


def _check_run(path: str | Path) -> Path:
    """The run folder `path` names: itself, or the folder of a checkpoint in it (RUN/last.pt)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".pt" and _is_run(path.parent):
        return path.parent
    if path.is_dir() and not _is_run(path):
        runs = sorted(str(p) for p in path.iterdir() if _is_run(p))[:3]
        hint = f"it holds runs: give them (e.g. {' '.join(runs)})" if runs else "give folders written by selfsup pretrain"
        raise UserError(f"{str(path)!r} is not a run folder (it has none of {', '.join(RUN_FILES)}); {hint}")
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is not a run folder, nor a checkpoint in one; give folders written by "
                        f"selfsup pretrain")
    return path


def _is_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def _names(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    return [str(r) if names.count(r.name) > 1 else r.name for r in runs]


def _base_lr(optim: dict):
    """'0.1200 per 256 images': presets state their rate per their own reference batch (rotation's
    per 128), so the bare number does not compare across methods."""
    lr, reference = optim.get("lr"), optim.get("lr_reference_batch")
    if not isinstance(lr, (int, float)) or not isinstance(reference, int) or optim.get("lr_scaling") == "none":
        return lr
    return f"{html.number(float(lr))} per {reference:,} images"


def _config(run: Path) -> tuple[dict, str]:
    path = run / "config.yaml"
    if not path.is_file():
        return {}, html.note("no config.yaml in this run folder")
    text, cfg = path.read_text(errors="replace"), read_run_config(run)
    if cfg is None:
        return {}, html.note("config.yaml cannot be read as a run config (cut short or edited?)") + \
            f"<details><summary>config.yaml</summary>{html.preformatted(text)}</details>"
    section = lambda name: cfg.get(name) or {}  # noqa: E731
    rows = [["method", cfg.get("method")], ["backbone", section("backbone").get("name")],
            ["image size", section("data").get("image_size")], ["epochs", section("train").get("epochs")],
            ["batch size", section("train").get("batch_size")], ["optimizer", section("optim").get("name")],
            ["base lr", _base_lr(section("optim"))], ["data", section("data").get("path")]]
    summary = html.table(["setting", "value"], rows, "config")
    return cfg, summary + f"<details><summary>config.yaml</summary>{html.preformatted(text)}</details>"


def _curves(run: Path, metrics: list[dict]) -> str:
    """The training curves: the run's curves.png when drawn after the last metrics line (as
    training leaves it), else drawn afresh from metrics.jsonl."""
    from ..viz import plot_training_curves

    if not metrics:
        return html.note("no metrics.jsonl yet")
    drawn = run / "curves.png"
    if drawn.is_file() and drawn.stat().st_mtime >= (run / "metrics.jsonl").stat().st_mtime:
        png = drawn.read_bytes()
    else:
        png = figures.via_file(plot_training_curves, metrics)
    return html.image(png, "training curves")


def _label_efficiency(evals: list[dict]) -> str:
    curves = latest_curves(evals)
    if not curves:
        return html.note("no label-efficiency curve recorded (selfsup eval curve --checkpoint RUN_DIR ...)")
    return "".join(_curve_image(c, title) for c, title in zip(curves, curve_titles(curves)))


def _curve_image(curve: dict, title: str) -> str:
    from ..eval.curve import plot_label_efficiency

    shown, stale = current_lines(curve)
    caption = title + (f"; left out (not last.pt now): {'; '.join(stale)}" if stale else "")
    return html.image(figures.via_file(plot_label_efficiency, shown), f"label-efficiency curve, {title}", caption)


def _labelled_data(cfg: dict, given: dict) -> dict | None:
    """Where the labelled pictures' images come from (None: nowhere), with their sources when listed
    already (each listed once, so that what cannot be used in them is said once)."""
    from ..data import open_splits

    if given["data"] is not None or (given["train"] is not None and given["test"] is not None):
        return given
    path = (cfg.get("data") or {}).get("path")
    if path and Path(path).exists():
        splits = open_splits(path)
        test = "test" if "test" in splits else "val"
        if "train" in splits and test in splits:
            return {"data": path, "sources": (splits["train"], splits[test])}
    return None


def _embedding_pictures(run: Path, cfg: dict, where: dict | None, options: dict) -> tuple[str, str]:
    """(nearest-neighbour grid, embedding map) as HTML, or notes saying why not."""
    from ..eval.data import prepare
    from ..eval.retrieval import retrieve

    if where is None:
        missing = html.note("no labelled data: give --data ROOT (with train/ and test/ class folders)")
        return missing, missing
    try:  # a run whose features are NaN (diverged) still has its report: its curves show where it went wrong
        setup = prepare(run, **where, device=options["device"], cache_dir=options["cache_dir"],
                        show_progress=options["show_progress"])
        train_x, test_x = setup.features()
    except UserError as e:
        return html.note(str(e)), html.note(str(e))
    test_y, train_y, classes = setup.test.labels, setup.train.labels, setup.train.classes
    queries = figures.fixed_queries(test_y, options["queries"])
    _, idx = retrieve(test_x[queries], train_x, options["neighbours"])
    grid = figures.neighbour_grid(setup.test.images[queries], test_y[queries], setup.train.images, idx,
                                  train_y, classes)
    caption = (f"each row: a test image of {setup.test.source} (black) and its nearest training images of "
               f"{setup.train.source} by cosine similarity (green: same class; red: another)")
    return html.image(grid, "nearest neighbours", caption), _embedding_map(test_x, test_y, classes, options)


def _embedding_map(test_x, test_y, classes: list[str], options: dict) -> str:
    if len(test_x) < figures.MIN_MAP_POINTS:
        return html.note(f"{plural(len(test_x), 'test image')}: a 2-D map needs at least {figures.MIN_MAP_POINTS}")
    shown = np.unique(np.linspace(0, len(test_x) - 1, min(len(test_x), options["max_points"])).astype(int))
    coords, method = figures.project_2d(test_x[shown])
    return html.image(figures.embedding_map(coords, test_y[shown], classes, method), "embedding map", method)


def _pictures(run: Path, skip: set[str]) -> str:
    """The run folder's PNGs, and those one folder down (e.g. `selfsup attention --out RUN/attention`)."""
    pngs = [p for p in sorted([*run.glob("*.png"), *run.glob("*/*.png")]) if p.name not in skip or p.parent != run]
    if not pngs:
        return html.note("the method drew no pictures")
    names = [p.relative_to(run).as_posix() for p in pngs]
    return "".join(html.image(p.read_bytes(), name, name) for p, name in zip(pngs, names))


def _run_section(run: Path, name: str, index: int, where_given: dict, options: dict) -> str:
    from ..train import read_metrics

    cfg, config_html = _config(run)
    metrics, evals = read_metrics(run), run_evals(run)
    rows = eval_rows(evals)
    grid, embedding = _embedding_pictures(run, cfg, _labelled_data(cfg, where_given), options)
    parts = [f'<section class="run" id="run-{index}"><h2>{escape(name)}</h2>{html.note(str(run.resolve()))}',
             "<h3>Configuration</h3>", config_html,
             "<h3>Training curves</h3>", _curves(run, metrics),
             "<h3>Evaluations</h3>", html.table(EVAL_HEADERS, rows, "evals") if rows else
             html.note("no evaluations recorded (selfsup eval ... --checkpoint RUN_DIR appends them)"),
             "<h3>Label efficiency</h3>", _label_efficiency(evals),
             "<h3>Nearest neighbours</h3>", grid, "<h3>Embedding map</h3>", embedding,
             "<h3>Pictures from the method</h3>", _pictures(run, {"curves.png"} if metrics else set()),
             "</section>"]
    return "".join(parts)


@one_command()
def build_report(run_dirs, out: str | Path = "report.html", data=None, train=None, test=None,
                 device: str = "auto", cache_dir=None, queries: int = 6, neighbours: int = 8,
                 max_points: int = 2000, show_progress: bool = True) -> Path:
    """Write the report of `run_dirs` to `out` (one HTML file, images embedded); returns its path."""
    from ..eval.data import labelled_sources

    runs = [_check_run(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not runs:
        raise UserError("give at least one run folder")
    # Named as typed (--queries, queries=), not by the config path report.queries the user never wrote.
    counts = override(Ranges(), {"queries": queries, "neighbours": neighbours, "max_points": max_points},
                      named=option)
    out = output_file(named_output(out, ".html", "report.html"))  # before the pictures are drawn, not after
    names = _names(runs)
    options = dict(device=device, cache_dir=cache_dir, show_progress=show_progress, **asdict(counts))
    where = {"data": data, "train": train, "test": test}
    if data is not None or (train is not None and test is not None):
        try:  # listed once for all the runs; a refusal is each run's note, from prepare
            where["sources"] = labelled_sources(train, test, data)
        except UserError:
            pass
    sections = [_run_section(run, name, i, where, options) for i, (run, name) in enumerate(zip(runs, names))]
    headers, rows = comparison_rows(runs, names)
    nav = "".join(f'<a href="#run-{i}">{escape(n)}</a>' for i, n in enumerate(names))
    written = html.note(f"{plural(len(runs), 'run')}, written {time.strftime('%Y-%m-%d %H:%M')}")
    body = (f"<h1>selfsup report</h1>{written}<nav>{nav}</nav>"
            f"<h2>Comparison</h2>{html.table(headers, rows, 'comparison')}" + "".join(sections))
    with atomic_path(out) as tmp:
        tmp.write_text(html.page("selfsup report", body), encoding="utf-8")
    return out
