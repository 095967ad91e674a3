"""The label-efficiency curve: accuracy against the number of labels per class, per encoder.

One few-label protocol (kNN, linear probe or fine-tuning) is run at each label budget, over the
same seeds, hence on the same labelled images, for every encoder; the plot has one line per
encoder (mean over seeds, bars one deviation) on a log scale of labels per class.
"""
from __future__ import annotations

from pathlib import Path

from ..console import one_command, option, plural, protocol_options_in, warn
from ..errors import UserError, unknown_choice
from ..outputs import output_file, removed_if_left_empty
from ..viz import pyplot, save_figure
from .data import Setup, check_options, prepare
from .finetune import finetune_option
from .protocols import (DEFAULT_VAL_FRACTION, VIT_ONLY_FINETUNE_SETTINGS, checked_protocol_options,
                        finetune_config_read, finetune_protocol, for_other_kind, knn_protocol, linear_protocol,
                        protocol_keywords, setting_defaults)
from .record import bands_shown, checkpoint_identity, data_digests, data_name, record_result, run_folder
from .subsets import Budget, make_split

PROTOCOLS = {"knn": knn_protocol, "linear": linear_protocol, "finetune": finetune_protocol}
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # what matplotlib writes that suits a plot
# A point's own seeds (kNN with every label runs once), kNN's k used and asked, and the subset
# files with each seed's subset_sha256 (in per_seed): what a single evaluation's record holds.
POINT_KEYS = ("budget", "labels_per_class", "labelled_images", "val_images", "seeds", "k", "k_asked", "top1",
              "top1_std", "top1_ci", "top5", "top5_std", "subsets", "per_seed")


@one_command()
def label_efficiency_curve(checkpoints, train=None, test=None, data=None, *, protocol: str = "linear",
                           per_class: tuple[int, ...] | None = None, fractions: tuple[float, ...] | None = None,
                           seeds: int = 3, out: str | Path = "label_efficiency.png",
                           protocol_options: dict | None = None, record: bool = True, **options) -> dict:
    """Run `protocol` at each budget (`per_class` counts, or `fractions`, default 1 %, 10 %,
    100 %) for each encoder in `checkpoints`; plot top-1 against labels per class to `out`.
    `small_stem` is for the random: and weights: encoders among them: a run's checkpoint keeps the
    stem its weights were trained with."""
    if protocol not in PROTOCOLS:
        raise unknown_choice("protocol for the curve", protocol, PROTOCOLS)
    _refuse_protocol_keywords(protocol, options)
    check_options("label_efficiency_curve", options)
    if per_class and fractions:
        raise UserError(f"give label budgets as {option('per_class')} "
                        f"or as {option('fraction', python='fractions')}, not both")
    if seeds < 1:
        raise UserError(f"{option('seeds')} must be at least 1, got {seeds}")
    # From Python, a message names a protocol's option as the key of protocol_options it is.
    with removed_if_left_empty(_plot_path(out).parent), protocol_options_in("protocol_options"):
        protocol_options, tuned = _finetune_settings_read(protocol, protocol_options or {})
        protocol_options = checked_protocol_options(protocol, protocol_options)  # before any image is read
        output_file(_plot_path(out))  # before the protocols run, not after
        budgets = [Budget(per_class=k) for k in per_class] if per_class else \
            [Budget(fraction=f, fraction_keyword="fractions") for f in (fractions or DEFAULT_FRACTIONS)]
        lines, setup, runs = _curve_lines(checkpoints, train, test, data, protocol, budgets, seeds,
                                          protocol_options, options, tuned)
        settings = {k: runs[0][k] for k in setting_defaults(protocol) if k in runs[0]}  # the same for every point
        result = {"protocol": "curve", "curve_protocol": protocol, "seeds": seeds, "test_images": len(setup.test),
                  "classes": len(setup.test.classes), "train_data": data_name(setup.train.source),
                  "test_data": data_name(setup.test.source), **data_digests(setup), **settings, "lines": lines}
        result["plot"] = str(plot_label_efficiency(result, out))
    if record:
        for line in lines:  # each run's record names its own checkpoint and images, as its own line does
            own = {k: v for k, v in line.items() if k.startswith("checkpoint_") or k.endswith("_pixels_sha256")}
            record_result(line["checkpoint"], {**result, **own}, setup.device)
    return result


def _refuse_protocol_keywords(protocol: str, options: dict) -> None:
    """A protocol's option given as the curve's own keyword (val_fraction=0.2): said where it goes."""
    for name in options:
        if name in protocol_keywords(protocol):
            raise TypeError(f"label_efficiency_curve() takes the {protocol} protocol's options in protocol_options: "
                            f"protocol_options={{{name!r}: {options[name]!r}}}, not {name}=")


def _finetune_settings_read(protocol: str, protocol_options: dict) -> tuple[dict, set[str]]:
    """(`protocol_options` with a fine-tuning config's YAML file read into a dict, the fine-tuning
    options it sets): an option that some encoders of the curve ignore is warned of."""
    if protocol != "finetune" or "config" not in protocol_options:
        return protocol_options, set()
    config, given = finetune_config_read(protocol_options["config"])  # read once, here
    return {**protocol_options, "config": config}, given


def _warn_of_settings_ignored(ignored_by: dict[str, list[str]]) -> None:
    """One warning for the curve: a curve may mix ViTs and CNNs, so a fine-tuning option of one
    kind is not refused (as evaluate_finetune does), but the encoders it does not apply to are named."""
    if not ignored_by:
        return
    said = []
    for name, encoders in ignored_by.items():
        kind = "ViT encoders" if name in VIT_ONLY_FINETUNE_SETTINGS else \
            f"CNN encoders (and ViTs with {finetune_option('layer_decay', 1)})"
        said.append(f"{finetune_option(name)} is for {kind}; {' and '.join(encoders)} "
                    f"{'is' if len(encoders) == 1 else 'are'} fine-tuned without it")
    warn("; ".join(said))


def _curve_lines(checkpoints, train, test, data, protocol: str, budgets: list[Budget], seeds: int,
                 protocol_options: dict, options: dict, tuned: set[str]) -> tuple[list[dict], Setup, list[dict]]:
    """Each encoder's line of points (in the order given), the last encoder's setup and results.
    `tuned`: the fine-tuning options given, to warn of those an encoder does not use."""
    specs = [str(s) for s in (checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints])]
    # Runs first: their image size is the one a random: baseline should be drawn at (not 224).
    order = sorted(range(len(specs)), key=lambda i: specs[i].startswith("random:"))
    setups = _prepared(specs, order, train, test, data, budgets, protocol, protocol_options, options, tuned)
    lines = [None] * len(specs)
    for i in order:
        setup = setups[i]
        # kNN has no randomness of its own: with every label, one run is each seed's (said quietly
        # here, where the seeds are for the other budgets).
        runs = [PROTOCOLS[protocol](setup, budget, 1 if protocol == "knn" and budget.everything else seeds,
                                    **protocol_options) for budget in budgets]
        lines[i] = {"encoder": setup.encoder.description, "checkpoint": setup.spec,
                    "image_size": setup.encoder.image_size, **bands_shown(setup.encoder),
                    **checkpoint_identity(setup.encoder), **_run_dir(specs[i]), **data_digests(setup),
                    "points": [{k: r[k] for k in POINT_KEYS if k in r} for r in runs]}  # top-5: > 5 classes
    return lines, setup, runs


def _prepared(specs: list[str], order: list[int], train, test, data, budgets: list[Budget], protocol: str,
              protocol_options: dict, options: dict, tuned: set[str]) -> dict[int, Setup]:
    """Every encoder loaded and its images read before any protocol runs, so what is wrong with one
    of them, or ignored by it, is said at the start of a curve that may take hours. The labelled
    data is listed once, for all of them (and what is wrong with it said once: warn's once=True)."""
    setups, run_sizes, run_bands = {}, set(), set()
    ignored_by: dict[str, list[str]] = {}  # a fine-tuning option: the encoders that do not use it
    sources = options.get("sources")
    for i in order:
        spec, spec_options = specs[i], {**options, "sources": sources}
        is_run = not spec.startswith(("random:", "weights:"))
        if is_run:
            spec_options["small_stem"] = None  # a run keeps the stem it was trained with
        elif spec.startswith("random:"):
            if spec_options.get("image_size") is None:
                spec_options["image_size"] = _baseline_size(spec, run_sizes)
            if spec_options.get("bands") is None and len(run_bands) == 1:  # shown what the runs were
                spec_options["bands"] = next(iter(run_bands))
        setup = setups[i] = prepare(spec, train, test, data, **spec_options)
        sources = setup.sources
        if i == order[0]:  # a budget a class cannot meet: said before hours of the smaller ones
            _check_budgets(setup, budgets, protocol, protocol_options)
        for name in for_other_kind(tuned, setup.encoder, protocol_options["config"]) if tuned else ():
            ignored_by.setdefault(name, []).append(setup.encoder.description)
        if is_run:
            run_sizes.add(setup.encoder.image_size)
            run_bands.add(setup.encoder.bands)
    _warn_of_settings_ignored(ignored_by)
    return setups


def _run_dir(spec: str) -> dict:
    """The line's run folder, whole (the report checks each line against its run's last.pt, from
    whatever folder it is written); {} for encoders that are not runs."""
    folder = run_folder(spec)
    return {"run_dir": str(folder.resolve())} if folder else {}


def _check_budgets(setup, budgets: list[Budget], protocol: str, protocol_options: dict) -> None:
    if setup.train.labels is None:
        return  # the protocol says what it needs
    val_fraction = 0.0 if protocol == "knn" else protocol_options.get("val_fraction", DEFAULT_VAL_FRACTION)
    for budget in budgets:
        make_split(setup.train.labels, setup.train.classes, budget, 0, val_fraction)


def _baseline_size(spec: str, run_sizes: set[int]) -> int | None:
    """The image size of a random: encoder without --image-size: the runs' size when they share
    one, else the images' own (see encoder.random_size), said in a warning when the runs differ."""
    if len(run_sizes) == 1:
        return next(iter(run_sizes))
    if run_sizes:
        warn(f"the runs were trained at different image sizes ({', '.join(map(str, sorted(run_sizes)))} px): "
             f"{spec} is evaluated at the images' own size (224 px for a timm: model); give {option('image_size')} "
             f"to choose its size")
    return None


def plot_label_efficiency(curve: dict, out: str | Path) -> Path:
    """A plot (PNG, SVG or PDF, by the suffix of `out`) of a curve result: top-1 against labels
    per class (log x), one line per encoder."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for line in curve["lines"]:
        points = sorted(line["points"], key=lambda p: p["labels_per_class"])
        ax.errorbar([p["labels_per_class"] for p in points], [p["top1"] for p in points],
                    yerr=[p["top1_std"] for p in points], marker="o", capsize=3,
                    label=f"{line['encoder']}, {line['image_size']} px" if "image_size" in line else line["encoder"])
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class (log scale)")
    ax.set_ylabel(f"top-1 on {curve['test_images']:,} test images")
    ax.set_title(f"label efficiency: {curve['curve_protocol']}, mean of {plural(curve['seeds'], 'seed')}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = _plot_path(out)
    output_file(out)
    return save_figure(fig, out, dpi=100, fmt=out.suffix[1:].lower())


def _plot_path(out: str | Path) -> Path:
    """`out`, with .png added when it has no suffix: matplotlib would add it itself, and the path
    reported would not exist. Other suffixes are refused here, before hours of evaluation, not by
    matplotlib after them."""
    out = Path(out).expanduser()
    if out.suffix and out.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"cannot write the plot as {out.suffix!r} ({str(out)!r}); "
                        f"give {option('out')} a {', '.join(PLOT_SUFFIXES[:-1])} or {PLOT_SUFFIXES[-1]} file")
    return out if out.suffix else out.with_suffix(".png")
