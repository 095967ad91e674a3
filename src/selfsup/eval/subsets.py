"""Which training labels an evaluation may use: a class-balanced subset and a validation split.

For a seed, the training images of each class are put in a random order (the same order for
every encoder and protocol). The labelled subset is the start of that order: k images per class,
or a fraction f of each class (at least one); the validation split, used only to choose
hyperparameters and to stop fine-tuning early, is the end of it: `val_fraction` of each class
(at least one). The two never overlap, and neither ever includes a test image. Protocols without
anything to tune (kNN, retrieval) take no validation split, so their "all labels" is every
training image; with the same budget and seed, every protocol and every encoder sees the same
labelled images. Each subset is written as JSON (file names) beside the image cache.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..console import option, protocol_option, said_as, warn
from ..data import ImageCache
from ..data.cache import cache_folder, cache_remedy
from ..data.sources import labels_listed_in, names_listed_in, row_finder, rows_of_names
from ..errors import UserError
from ..outputs import atomic_path


@dataclass(frozen=True)
class Budget:
    """Which training labels to use: a fraction of each class, k per class, those of the images a
    file lists (`subset`: e.g. `selfsup select`'s to_label.csv), or all (all three None)."""

    fraction: float | None = None
    per_class: int | None = None
    subset: str | None = None
    # The keyword that gave `fraction` from Python: evaluate_*'s fraction=, or the curve's
    # fractions= (one of several); the command line's --fraction either way.
    fraction_keyword: str = field(default="fraction", compare=False, repr=False)

    def __post_init__(self):
        given = [option(name) for name, value in (("fraction", self.fraction), ("per_class", self.per_class),
                                                  ("subset", self.subset)) if value is not None]
        if len(given) > 1:
            raise UserError(f"give {' or '.join(given)}, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"{option('fraction', python=self.fraction_keyword)} must lie in (0, 1], "
                            f"got {self.fraction}")
        if self.per_class is not None and self.per_class < 1:
            raise UserError(f"{option('per_class')} must be at least 1, got {self.per_class}")

    @property
    def everything(self) -> bool:
        return self.per_class is None and self.subset is None and (self.fraction is None or self.fraction == 1)

    def python_fraction(self) -> str:
        """The fraction as a Python caller gave it: `fraction=0.1`, or `0.1 of fractions=`."""
        if self.fraction_keyword == "fraction":
            return f"fraction={self.fraction:g}"
        return f"{self.fraction:g} of {self.fraction_keyword}="

    def describe(self) -> str:
        if self.everything:
            return "all labels"
        if self.subset:  # the count and a digest of the names: two lists never share a report column
            import hashlib
            names = sorted(set(names_listed_in(self.subset, "subset")))
            digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:8]
            return f"the {len(names):,} labels listed in {Path(self.subset).name} ({digest})"
        return f"{self.per_class} per class" if self.per_class else f"{self.fraction:g} of the labels"


@dataclass
class Split:
    train: np.ndarray  # indices of the labelled subset, sorted
    val: np.ndarray  # indices of the validation split (empty when nothing is tuned), sorted
    seed: int


def class_orders(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """For each class, its training indices in a random order fixed by `seed` (and the class)."""
    return [np.random.default_rng([seed, c]).permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _validation_count(n: int, val_fraction: float) -> int:
    return 0 if val_fraction <= 0 or n == 0 else min(n - 1, max(1, round(val_fraction * n)))


def _subset_count(n: int, pool: int, budget: Budget, class_name: str, val: int) -> int:
    if budget.everything:
        return pool
    k = budget.per_class if budget.per_class else max(1, round(budget.fraction * n))
    if k > pool:
        held = (f" ({pool} after the {val} held out for validation; {protocol_option('val_fraction', 0)} holds none)"
                if val else "")
        asked = option("per_class", k) if budget.per_class else \
            said_as(f"--fraction {budget.fraction:g}", budget.python_fraction()) + f" ({k} images)"
        if n == 0:
            raise UserError(f"{asked} needs images of class {class_name!r}, which has no training image; "
                            f"add some, or remove its folder")
        raise UserError(f"{asked} is more than class {class_name!r} has: {n} training images{held}; "
                        f"lower the budget")
    return k


def check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction <= 0.5:
        raise UserError(f"{protocol_option('val_fraction')} must lie in [0, 0.5], got {val_fraction}")


def make_split(labels: np.ndarray, classes: list[str], budget: Budget, seed: int, val_fraction: float) -> Split:
    """The labelled subset and validation split for `seed` (see the module's docstring)."""
    check_val_fraction(val_fraction)
    train, val = [], []
    for c, order in enumerate(class_orders(labels, len(classes), seed)):
        n = len(order)
        n_val = _validation_count(n, val_fraction)  # a class of one image keeps it for training
        k = _subset_count(n, n - n_val, budget, classes[c], n_val)
        train.append(order[:k])
        val.append(order[n - n_val:])
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)).astype(np.int64), seed)


def listed_split(cache: ImageCache, budget: Budget, seed: int, val_fraction: float) -> Split:
    """The labelled images are those `budget.subset` lists; the validation split is cut from them
    as from a class-balanced subset (`val_fraction` of each class, a class of one image keeps it),
    except in a subset JSON that eval saved, whose own validation images are taken as they are,
    and whose seed is the split's (a probe seeds its generator with it: one seed of --seeds N,
    rerun from its file, gives that seed's figure)."""
    check_val_fraction(val_fraction)

    def rows(names: list[str]) -> np.ndarray:
        return np.array(rows_of_names(cache.names, names, repr(cache.source), "train", "subset"), dtype=np.int64)

    if budget.subset.lower().endswith(".json"):  # a split eval saved: its own training and validation images
        train = rows(names_listed_in(budget.subset, "subset", json_lists=("train",)))
        val = rows(names_listed_in(budget.subset, "subset", allow_empty=True, json_lists=("val",)))
        _warn_of_absent_classes(cache, np.concatenate([train, val]), budget.subset)
        content = json.loads(Path(budget.subset).expanduser().read_text(encoding="utf-8-sig"))
        saved = content.get("seed") if isinstance(content, dict) else None
        # `seed` counts the --seeds asked (0, 1, ...): the file's own seed first, then the ones after it.
        return Split(train, val, saved + seed if isinstance(saved, int) else seed)
    listed = rows(names_listed_in(budget.subset, "subset"))
    train, val = [], []
    for c in range(len(cache.classes)):
        order = np.random.default_rng([seed, c]).permutation(listed[cache.labels[listed] == c])
        n_val = _validation_count(len(order), val_fraction)
        train.append(order[:len(order) - n_val])
        val.append(order[len(order) - n_val:])
    _warn_of_absent_classes(cache, listed, budget.subset)
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)).astype(np.int64), seed)


def _warn_of_absent_classes(cache: ImageCache, rows: np.ndarray, subset: str) -> None:
    absent = [name for c, name in enumerate(cache.classes) if not (cache.labels[rows] == c).any()]
    if absent:
        warn(f"{option('subset', subset)} holds no image of {len(absent)} of the {len(cache.classes)} classes "
             f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): they count as errors on the test set")


def warn_of_unused_labels(cache: ImageCache, subset: str) -> None:
    """A --subset CSV's own `label` column would read as the labels used: say once that the class
    folders' are, and how many of its rows name another class than their folder."""
    listed = labels_listed_in(subset)
    if listed is None:
        return
    row = row_finder(cache.names, "train")
    folders = [(cache.classes[cache.labels[r]], label) for r, label in ((row(f), label) for f, label in listed)
               if r is not None]
    disagree = sum(folder != label for folder, label in folders)
    verb = "names" if disagree == 1 else "name"
    differ = f"; {disagree:,} of its {len(folders):,} labelled rows {verb} another class than their folder" \
        if disagree else ""
    warn(f"{option('subset', subset)}: its 'label' column is not used, the labels come from the class folders{differ}")


def split_sha256(split: Split, cache: ImageCache) -> str:
    """The SHA-256 of the file names of a split's labelled images and of its validation images:
    equal for two evaluations that used the same labels, whichever JSON file listed them (a
    subset file is rewritten in place by the next evaluation of the same budget and seed)."""
    import hashlib

    listed = "\n".join(["train", *(cache.names[i] for i in split.train), "val", *(cache.names[i] for i in split.val)])
    return hashlib.sha256(listed.encode()).hexdigest()


def save_split(split: Split, cache: ImageCache, budget: Budget, val_fraction: float, cache_dir=None) -> Path:
    """Write the split's file names as JSON beside the image cache; returns the file."""
    data_key = Path(getattr(cache.images, "filename", None) or "unknown/x").parent.name
    if budget.subset:
        import hashlib
        tag = "subset-" + hashlib.sha256("\n".join(cache.names[i] for i in split.train).encode()).hexdigest()[:12]
    else:
        tag = f"per-class-{budget.per_class}" if budget.per_class else \
            "all" if budget.everything else f"fraction-{budget.fraction:g}"
    root = cache_folder(cache_dir)
    path = root / "subsets" / f"{data_key}-{tag}-val{val_fraction:g}-seed{split.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"source": cache.source, "budget": budget.describe(), "seed": split.seed,
               "val_fraction": val_fraction, "train": [cache.names[i] for i in split.train],
               "val": [cache.names[i] for i in split.val]}
    with atomic_path(path, cache_remedy()) as tmp:
        tmp.write_text(json.dumps(content, indent=0))
    return path
