"""The evaluation protocols: kNN, linear probe, fine-tuning and retrieval, with few labels.

Each protocol runs once per seed on that seed's labelled subset (see `subsets`), predicts every
test image, and only then reads the test labels (`reveal_test_labels`, the one place they are
read) to score the predictions. Results are fractions in [0, 1]: the mean over seeds, the
deviation over seeds as `NAME_std`, and for top-1/top-5 the 95 % Wilson interval of the mean on
the test set's size as `NAME_ci`. The public `evaluate_*` functions take an encoder spec and data
(see `data.prepare` for the options they share) and append the result to the run's evals.jsonl.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..config import load_yaml, override, ranged
from ..console import one_command, option, plural, protocol_option, warn
from ..errors import UserError, nearest
from ..outputs import atomic_path, output_file, removed_if_left_empty
from .data import Setup, check_options, prepare
from .features import extract_features, refuse_nonfinite
from .finetune import FinetuneConfig, finetune, finetune_option
from .knn import knn_scores, topk_accuracy
from .linear import SWEEP_LRS, SWEEP_WEIGHT_DECAYS, predict_linear, sweep_linear
from .record import bands_shown, checkpoint_identity, data_digests, data_name, record_result
from .retrieval import mean_average_precision, precision_at_k, retrieve
from .stats import summarise
from .subsets import (Budget, Split, check_val_fraction, listed_split, make_split, save_split, split_sha256,
                      warn_of_unused_labels)

DEFAULT_VAL_FRACTION = 0.1
KNN_TEMPERATURE = 0.07  # the protocols' defaults, also what the report calls the default
LINEAR_EPOCHS = 100
VIT_ONLY_FINETUNE_SETTINGS = ("layer_decay", "drop_path_rate")
FEATURES_LOOKED_AT = 256  # images whose features are checked before fine-tuning


def setting_defaults(protocol: str) -> dict:
    """Every setting of a protocol that changes its figure, with its default: each is written into
    the result, and the report names those that differ in the result's column (so that figures
    made otherwise never share one). k is part of kNN's column already; retrieval's ks change no
    headline (mAP). A finetune `config` is compared field by field."""
    from .linear import SWEEP_LRS, SWEEP_WEIGHT_DECAYS

    return {"knn": {"temperature": KNN_TEMPERATURE},
            "linear": {"epochs": LINEAR_EPOCHS, "lr_grid": list(SWEEP_LRS), "weight_decay_grid": list(SWEEP_WEIGHT_DECAYS),
                       "batch_size": 1024, "val_fraction": DEFAULT_VAL_FRACTION},
            "finetune": {"config": json.loads(json.dumps(asdict(FinetuneConfig()))),  # tuples as JSON gives them back
                         "val_fraction": DEFAULT_VAL_FRACTION},
            "retrieval": {}}.get(protocol, {})


@dataclass
class Ranges:
    """The valid values of the kNN, linear and retrieval options (fine-tuning's are in
    `FinetuneConfig`), checked by `config.override` like any config value. Only the ranges are
    used: the defaults are the protocol functions'."""
    k: int = ranged(20, 1, None)
    temperature: float = ranged(0.07, 1e-6, None)
    epochs: int = ranged(100, 1, None)
    lr: float = ranged(1e-3, 0.0, None)
    weight_decay: float = ranged(0.0, 0.0, None)
    batch_size: int = ranged(1024, 1, None)


def _checked(options: dict, named=protocol_option) -> Ranges:
    """`options` (Ranges' names) checked; an error names the option as the user gave it (`--lr`,
    `lr=`, a curve's `protocol_options['lr']`), not the config path `linear.lr` they never typed."""
    return override(Ranges(), options, named=named)


def _values(name: str, value, named=protocol_option) -> tuple:
    """`value`, one or several, as a tuple of checked values of the option `name`."""
    values = tuple(np.atleast_1d(value).tolist())
    if not values:
        raise UserError(f"{named(name)} needs at least one value")
    for v in values:
        _checked({name: v}, named)
    return values


def _knn_options(k, temperature: float) -> tuple[tuple[int, ...], float]:
    """(the k, one or several, the last the headline; the temperature), checked."""
    return _values("k", k), _checked({"temperature": temperature}).temperature


def _linear_options(lr, weight_decay, epochs: int, batch_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(learning rates, weight decays), each one or a grid, checked with the epochs and batch size."""
    _checked({"epochs": epochs, "batch_size": batch_size})
    return _values("lr", lr), _values("weight_decay", weight_decay)


def _finetune_options(config: FinetuneConfig | dict | str | Path | None) -> FinetuneConfig:
    """A `FinetuneConfig`, given or from a dict of its fields (or a YAML file of them), checked."""
    if isinstance(config, FinetuneConfig):
        return config
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{protocol_option('config')} takes a dict of fine-tuning options, a YAML file of them or a "
                        f"FinetuneConfig, got {type(config).__name__}")
    return override(FinetuneConfig(), dict(config or {}), "finetune", named=finetune_option)


def finetune_config_read(config) -> tuple[FinetuneConfig | dict | None, set[str]]:
    """(`config` with a YAML file read into its dict, the fine-tuning options it sets): those that a
    CNN or a ViT ignores are refused by evaluate_finetune and warned of by a curve."""
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    return config, set(config) if isinstance(config, dict) else set()


def protocol_keywords(protocol: str) -> dict:
    """The options of the knn, linear or finetune protocol function (those after its setup, budget
    and seeds), with their defaults."""
    import inspect

    function = {"knn": knn_protocol, "linear": linear_protocol, "finetune": finetune_protocol}[protocol]
    return {name: p.default for name, p in list(inspect.signature(function).parameters.items())[3:]}


def checked_protocol_options(protocol: str, options: dict) -> dict:
    """A curve's `options` for `protocol`, checked before any image is read: each one the protocol
    takes, each value in range; a fine-tuning config (a dict or a YAML file of its fields) made a
    `FinetuneConfig` once, for every point."""
    takes = protocol_keywords(protocol)
    for name in options:
        if name not in takes:
            tuned = protocol == "finetune" and name in {f.name for f in fields(FinetuneConfig)}
            where = f": fine-tuning's is {protocol_option(name, within=('config',))}" if tuned else \
                f"{nearest(name, takes)}; it takes {', '.join(takes)}"
            raise UserError(f"the {protocol} protocol takes no {protocol_option(name)}{where}")
    given = {**takes, **options}
    if "val_fraction" in given:
        check_val_fraction(given["val_fraction"])
    if protocol == "knn":
        _knn_options(given["k"], given["temperature"])
    elif protocol == "linear":
        _linear_options(given["lr"], given["weight_decay"], given["epochs"], given["batch_size"])
    else:
        return {**options, "config": _finetune_options(given["config"])}
    return options


def for_other_kind(given: set[str], encoder, config: FinetuneConfig) -> list[str]:
    """The fine-tuning options in `given` that `encoder` would ignore: ViTs' own on a CNN, the
    encoder's rate ratio on a ViT fine-tuned with layer-wise decay."""
    if encoder.backbone.kind != "vit":
        return sorted(given & set(VIT_ONLY_FINETUNE_SETTINGS))
    return ["encoder_lr_ratio"] if "encoder_lr_ratio" in given and config.layer_decay < 1 else []


def _refuse_other_kind(given: set[str], encoder, config: FinetuneConfig) -> None:
    """A fine-tuning option set for the other kind of encoder would be ignored: refused."""
    ignored = for_other_kind(given, encoder, config)
    if not ignored:
        return
    if encoder.backbone.kind != "vit":
        flag = finetune_option(ignored[0])
        raise UserError(f"{flag} is for ViT encoders and this one is a CNN ({encoder.description}), whose encoder "
                        f"learns at {finetune_option('encoder_lr_ratio')} times the head's rate; leave {flag} out")
    raise UserError(f"{finetune_option('encoder_lr_ratio')} is for CNN encoders; a ViT is fine-tuned with "
                    f"layer-wise decay ({finetune_option('layer_decay', config.layer_decay)}): leave it "
                    f"out, or add {finetune_option('layer_decay', 1)} to train every block at that ratio")


def _retrieval_options(ks, out) -> tuple[tuple[int, ...], Path | None]:
    """(the ranks of precision@k, one or several; the neighbours file or None), checked: the
    file, that it can be written."""
    return _values("k", ks, named=lambda name: option(name, python="ks")), None if out is None else output_file(out)


def reveal_test_labels(setup: Setup) -> torch.Tensor:
    """The test labels: read here only, once a protocol's test predictions are fixed."""
    return torch.from_numpy(setup.test.labels)


def _train_labels(setup: Setup) -> torch.Tensor:
    return torch.from_numpy(setup.train.labels)


def _split(setup: Setup, budget: Budget, seed: int, val_fraction: float) -> tuple[Split, str | None]:
    """The seed's labelled subset and validation split, and the JSON file that lists them
    (unlabelled training images: all of them, no file)."""
    if setup.train.labels is None:
        if not budget.everything:
            raise UserError(f"{option('fraction')}, {option('per_class')} and {option('subset')} need training images "
                            f"laid out by class")
        return Split(np.arange(len(setup.train)), np.arange(0), seed), None
    if budget.subset:
        split = listed_split(setup.train, budget, seed, val_fraction)
    else:
        split = make_split(setup.train.labels, setup.train.classes, budget, seed, val_fraction)
    return split, str(save_split(split, setup.train, budget, val_fraction, setup.cache_dir))


def run_seeds(name: str, setup: Setup, budget: Budget, seeds: int, val_fraction: float, one_seed,
              settings: dict) -> dict:
    """Run `one_seed(split) -> figures` for seeds 0..seeds-1 and summarise them."""
    if seeds < 1:
        raise UserError(f"{option('seeds')} must be at least 1, got {seeds}")
    splits = [_split(setup, budget, seed, val_fraction) for seed in range(seeds)]
    if budget.subset and setup.train.labels is not None:
        warn_of_unused_labels(setup.train, budget.subset)
    # Each seed's own (a subset JSON's seed, not the loop's index), so one seed can be rerun alone.
    figures = [one_seed(split) for split, _ in splits]
    split, classes = splits[-1][0], len(setup.train.classes)
    if classes <= 5:  # every class is in the top 5: top-5 is 1 whatever the encoder, no figure
        figures = [{k: v for k, v in f.items() if k != "top5" and not k.endswith("_top5")} for f in figures]
    # Each seed's labelled images by name: a rerun tells whether it had the same (see split_sha256).
    per_seed = [{**f, "seed": split.seed, "subset_sha256": split_sha256(split, setup.train)}
                for f, (split, _) in zip(figures, splits)]
    summary = summarise(figures, ("top1", "top5"), len(setup.test))
    interval = {"interval": "95 % Wilson score interval on the test images"} if "top1_ci" in summary else {}
    return {"protocol": name, "encoder": setup.encoder.description, "image_size": setup.encoder.image_size,
            **bands_shown(setup.encoder),
            "budget": budget.describe(), "fraction": budget.fraction, "per_class": budget.per_class,
            **({"subset": budget.subset} if budget.subset else {}), "seeds": seeds,
            "labels_per_class": len(split.train) / max(1, classes), "train_images": len(setup.train),
            "labelled_images": len(split.train), "val_images": len(split.val), "test_images": len(setup.test),
            "classes": classes, "train_data": data_name(setup.train.source),
            "test_data": data_name(setup.test.source), **data_digests(setup), **checkpoint_identity(setup.encoder),
            **summary, **settings, **interval, "subsets": [file for _, file in splits if file], "per_seed": per_seed}


def _seeds_that_differ(protocol: str, budget: Budget, seeds: int) -> int:
    """kNN and retrieval have no randomness of their own: with every label (or a listed subset),
    each seed would repeat the first one's result (and report a spread of 0), so they run once."""
    if (budget.everything or budget.subset) and seeds > 1:
        labels = f"the labels of {option('subset')}" if budget.subset else "all labels"
        warn(f"{protocol} with {labels} gives the same result for every seed: run once, not {seeds} times "
             f"({option('seeds')} draws label subsets, with {option('fraction', python=budget.fraction_keyword)} or "
             f"{option('per_class')})")
        return 1
    return seeds


def knn_protocol(setup: Setup, budget: Budget = Budget(), seeds: int = 1, k: tuple[int, ...] = (20, 200),
                 temperature: float = KNN_TEMPERATURE) -> dict:
    """Weighted kNN (Wu et al. 2018) for each k; the last k is the headline."""
    k, temperature = _knn_options(k, temperature)
    seeds = _seeds_that_differ("kNN", budget, seeds)
    train_x, test_x = setup.features()
    train_y, classes = _train_labels(setup), len(setup.train.classes)

    def one_seed(split: Split) -> dict:
        scores = {kk: knn_scores(train_x[split.train], train_y[split.train], test_x, kk, temperature, classes)
                  for kk in k}
        labels = reveal_test_labels(setup)
        by_k = {kk: topk_accuracy(s, labels, votes=True) for kk, s in scores.items()}
        return {**by_k[k[-1]], **{f"k{kk}_{m}": v for kk, acc in by_k.items() for m, v in acc.items()}}

    result = run_seeds("knn", setup, budget, seeds, 0.0, one_seed, {"k": k[-1], "temperature": temperature})
    # knn_scores votes with every labelled image when k is larger: say so. "k" is the k used (the
    # report compares results by it), by_k stays keyed by the k asked (scripts read by_k["200"]).
    used = {kk: min(kk, result["labelled_images"]) for kk in k}
    measures = [m for m in ("top1", "top5") if f"k{k[-1]}_{m}" in result]  # top-5 with more than 5 classes
    result["by_k"] = {str(kk): {"k": used[kk], **{m: result.pop(f"k{kk}_{m}") for m in measures}} for kk in k}
    for kk in k:
        for m in measures:
            result["by_k"][str(kk)][f"{m}_std"] = result.pop(f"k{kk}_{m}_std")
    result.update(k=used[k[-1]], k_asked=k[-1])
    return result


def linear_protocol(setup: Setup, budget: Budget = Budget(), seeds: int = 1,
                    val_fraction: float = DEFAULT_VAL_FRACTION, lr=SWEEP_LRS, weight_decay=SWEEP_WEIGHT_DECAYS,
                    epochs: int = LINEAR_EPOCHS, batch_size: int = 1024) -> dict:
    """Linear probe on frozen features; lr and weight decay chosen on the validation split."""
    lrs, wds = _linear_options(lr, weight_decay, epochs, batch_size)
    train_x, test_x = (x.to(setup.device) for x in setup.features())
    train_y, classes = _train_labels(setup).to(setup.device), len(setup.train.classes)

    def one_seed(split: Split) -> dict:
        t, v = torch.from_numpy(split.train).to(setup.device), torch.from_numpy(split.val).to(setup.device)
        head, mean, scale, chosen = sweep_linear(train_x[t], train_y[t], train_x[v], train_y[v], classes, lrs, wds,
                                               epochs=epochs, batch_size=batch_size, seed=split.seed)
        scores = predict_linear(head, mean, scale, test_x)
        return {**topk_accuracy(scores, reveal_test_labels(setup)), "chosen": chosen}

    return run_seeds("linear", setup, budget, seeds, val_fraction, one_seed,
                     {"epochs": epochs, "lr_grid": list(lrs), "weight_decay_grid": list(wds), "batch_size": batch_size,
                      "val_fraction": val_fraction})


def finetune_protocol(setup: Setup, budget: Budget = Budget(), seeds: int = 1,
                      val_fraction: float = DEFAULT_VAL_FRACTION, config: FinetuneConfig | dict | None = None) -> dict:
    """The whole network fine-tuned with a new head; the best state on the validation split.
    `config`: a `FinetuneConfig` or a dict of its fields (epochs, lr, freeze_stages, ...)."""
    config = _finetune_options(config)
    train_y, classes, encoder = _train_labels(setup), len(setup.train.classes), setup.encoder
    # A damaged encoder (a BatchNorm's running variance NaN) trains on batch statistics unharmed,
    # then predicts NaN for every test image: looked at first, on a few images.
    first = np.arange(min(len(setup.train.images), FEATURES_LOOKED_AT))
    features = extract_features(encoder.backbone.to(setup.device), setup.train.images, encoder.image_size,
                                setup.device, indices=first, show_progress=False)
    refuse_nonfinite(features, encoder)

    def one_seed(split: Split) -> dict:
        tuned = finetune(encoder.backbone, setup.train.images, split.train, train_y[split.train], split.val,
                         train_y[split.val], classes, encoder.image_size, config, setup.device, split.seed)
        scores = extract_features(tuned.model, setup.test.images, encoder.image_size, setup.device,
                                  show_progress=setup.show_progress, desc="test predictions")
        return {**topk_accuracy(scores, reveal_test_labels(setup)), "val_top1": tuned.val_top1,
                "steps": tuned.steps, "best_step": tuned.best_step}

    recorded = asdict(config)
    if encoder.backbone.kind != "vit":  # settings that only ViTs have: not part of this result
        recorded = {k: v for k, v in recorded.items() if k not in VIT_ONLY_FINETUNE_SETTINGS}
    return run_seeds("finetune", setup, budget, seeds, val_fraction, one_seed,
                     {"config": recorded, "val_fraction": val_fraction})


def retrieval_protocol(setup: Setup, budget: Budget = Budget(), seeds: int = 1, ks: tuple[int, ...] = (1, 10, 50),
                       out: str | Path | None = None) -> dict:
    """Each test image's nearest training images by cosine similarity; precision@k and mAP
    when labels exist; the neighbour lists written to `out` (JSON) when given."""
    ks, out = _retrieval_options(ks, out)
    seeds = _seeds_that_differ("retrieval", budget, seeds)
    train_x, test_x = setup.features()
    train_y = _train_labels(setup) if setup.train.labels is not None else None
    written = []  # the first seed's lists (a subset JSON's seed need not be 0)

    def one_seed(split: Split) -> dict:
        gallery = train_x[split.train]
        similarity, neighbours = map(torch.from_numpy, retrieve(test_x, gallery, max(ks)))
        if out is not None and not written:
            _write_neighbours(out, setup, split, similarity, neighbours)
            written.append(out)
        if not setup.labelled:
            return {}
        labels, gallery_y = reveal_test_labels(setup), train_y[split.train]
        return {**precision_at_k(gallery_y[neighbours], labels, ks),
                "map": mean_average_precision(test_x, gallery, labels, gallery_y)}

    settings = {"ks": list(ks), "neighbours_file": str(out) if out is not None else None}
    result = run_seeds("retrieval", setup, budget, seeds, 0.0, one_seed, settings)
    beyond = [k for k in ks if k > result["labelled_images"]]
    if beyond and setup.labelled:  # precision@50 of a 10-image gallery has no meaning: said, not left out silently
        result.update(ks=[k for k in ks if k not in beyond], ks_asked=list(ks))
        warn(f"retrieval: no precision@{'/'.join(map(str, beyond))}: the gallery has "
             f"{plural(result['labelled_images'], 'image')}; ask for {option('k', python='ks')} up to that")
    return result


def _write_neighbours(out, setup: Setup, split: Split, similarity: torch.Tensor, neighbours: torch.Tensor) -> None:
    names = [setup.train.names[i] for i in split.train]
    content = {"queries": setup.test.names, "gallery": data_name(setup.train.source),
               "neighbours": [[names[j] for j in row] for row in neighbours.tolist()],
               "similarity": [[round(s, 5) for s in row] for row in similarity.tolist()]}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(content))


# ---------------------------------------------------------------------------------------------
# The public functions: an encoder spec and data in, a result out (and into the run's evals.jsonl)


def _finish(setup: Setup, result: dict, record: bool) -> dict:
    if record:
        record_result(setup.spec, result, setup.device)
    return result


@one_command()
def evaluate_knn(checkpoint, train=None, test=None, data=None, *, k: int | tuple[int, ...] = (20, 200),
                 temperature: float = KNN_TEMPERATURE, fraction: float | None = None, per_class: int | None = None,
                 subset: str | None = None, seeds: int = 1, record: bool = True, **options) -> dict:
    """Weighted kNN top-1/top-5 (Wu et al. 2018) of an encoder, for each k (the last: headline)."""
    k, temperature = _knn_options(k, temperature)  # before any image is read
    check_options("evaluate_knn", options)
    budget = Budget(fraction, per_class, subset)  # checked before any image is read, as each option
    setup = prepare(checkpoint, train, test, data, **options)
    return _finish(setup, knn_protocol(setup, budget, seeds, k, temperature), record)


@one_command()
def evaluate_linear(checkpoint, train=None, test=None, data=None, *, epochs: int = LINEAR_EPOCHS, lr=SWEEP_LRS,
                    weight_decay=SWEEP_WEIGHT_DECAYS, batch_size: int = 1024, fraction: float | None = None,
                    per_class: int | None = None, subset: str | None = None, seeds: int = 1,
                    val_fraction: float = DEFAULT_VAL_FRACTION, record: bool = True, **options) -> dict:
    """Top-1/top-5 of a linear probe on frozen features (lr and weight decay: a value or a grid
    searched on the validation split)."""
    _linear_options(lr, weight_decay, epochs, batch_size)  # before any image is read
    check_val_fraction(val_fraction)
    check_options("evaluate_linear", options)
    budget = Budget(fraction, per_class, subset)
    setup = prepare(checkpoint, train, test, data, **options)
    result = linear_protocol(setup, budget, seeds, val_fraction, lr, weight_decay, epochs, batch_size)
    return _finish(setup, result, record)


@one_command()
def evaluate_finetune(checkpoint, train=None, test=None, data=None, *, fraction: float | None = None,
                      per_class: int | None = None, subset: str | None = None, seeds: int = 1,
                      val_fraction: float = DEFAULT_VAL_FRACTION, record: bool = True,
                      config: dict | FinetuneConfig | str | Path | None = None, **options) -> dict:
    """Top-1/top-5 after fine-tuning the whole encoder with a new head. `config`: a
    `FinetuneConfig`, a dict of its fields (epochs, lr, encoder_lr_ratio, freeze_stages, ...) or a
    YAML file of them."""
    config, given = finetune_config_read(config)
    config = _finetune_options(config)  # before any image is read
    check_val_fraction(val_fraction)
    check_options("evaluate_finetune", options)
    budget = Budget(fraction, per_class, subset)
    setup = prepare(checkpoint, train, test, data, check_encoder=lambda e: _refuse_other_kind(given, e, config),
                    **options)
    return _finish(setup, finetune_protocol(setup, budget, seeds, val_fraction, config), record)


@one_command()
def evaluate_retrieval(checkpoint, train=None, test=None, data=None, *, ks: int | tuple[int, ...] = (1, 10, 50),
                       fraction: float | None = None, per_class: int | None = None, subset: str | None = None,
                       seeds: int = 1, out: str | Path | None = None, record: bool = True, **options) -> dict:
    """Test images as queries, training images as the gallery: precision@k and mAP (with labels;
    unlabelled folders work too, for the neighbour lists written to `out`)."""
    # A refused evaluation leaves no empty folder behind (_retrieval_options makes the file's).
    with removed_if_left_empty(None if out is None else Path(out).expanduser().parent):
        ks, out = _retrieval_options(ks, out)  # before any image is read
        check_options("evaluate_retrieval", options)
        budget = Budget(fraction, per_class, subset)
        setup = prepare(checkpoint, train, test, data, labels_required=False, **options)
        return _finish(setup, retrieval_protocol(setup, budget, seeds, ks, out), record)
