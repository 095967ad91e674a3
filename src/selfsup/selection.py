"""`selfsup select`: which images to label first, when only a few can be labelled.

Labelling B images drawn at random spends some labels on near-copies of each other and some on
oddities. With an encoder's embeddings one can choose better:

    typiclust (Hacohen, Dekel, Weinshall, ICML 2022; the default, best when labels are few):
        cluster every image (labelled or not) into min(labelled + B, 500) groups by k-means;
        visit the groups that hold the fewest labels, largest first, skipping groups of 5 or
        fewer; in each, label the most typical unlabelled image:
            typicality(x) = 1 / mean squared distance from x to its 20 nearest unlabelled images
                            of its group (half the group when it is smaller)
        (one departure from the official code: an exact copy of an image labelled or chosen, the
        most typical of all since its twin sits at distance 0, is passed over; a group left with
        nothing else counts as used up, and copies are taken only when no other unlabelled image
        is left in any group, small ones included, with a warning)
    kcenter (the greedy core-set of Sener and Savarese, ICLR 2018; better when labels are many):
        each next image is the one farthest from every image labelled or chosen so far
    random: the baseline every other strategy must beat

Distances are between the L2-normalised embeddings after centring them on the pool's mean (as
`selfsup cluster` does): squared euclidean distance = 2 - 2 cos. Already labelled images
(--labelled, e.g. an earlier round's to_label.csv) are never chosen again and steer the choice
away from what they cover, so rounds of labelling build on each other.
"""
from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .console import option, plural, said_as, say, warn, warnings_after_checks
from .curate.pictures import draw_rows
from .curate.search import centred, kmeans
from .data.sources import names_listed_in, open_source, rows_of_names
from .errors import UserError
from .explore import embed_sources, folder_classes, open_option, refuse_more_than_decoded, refuse_more_than_files
from .outputs import (atomic_path, distinct_copy_paths, output_folder, refuse_out_inside, removed_if_left_empty,
                      write_summary)

STRATEGIES = ("typiclust", "kcenter", "random")
TYPICALITY_NEIGHBOURS = 20
MIN_CLUSTER_SIZE = 5  # TypiClust passes over groups of this many images or fewer (outliers)
MAX_CLUSTERS = 500
DRAWN_PER_ROW = 8
ROWS_DRAWN = 8  # to_label.png shows the first 64 choices; the CSV has all
DUPLICATE_DISTANCE = 1e-6  # squared distance below which two embeddings are the same picture


@dataclass
class Choice:
    rows: np.ndarray  # (B,) pool rows to label, in the order chosen
    scores: np.ndarray  # (B,) typiclust: typicality; kcenter: squared distance to the nearest image
    #                     labelled or chosen before; random: NaN
    clusters: np.ndarray | None  # (B,) typiclust: each choice's group; else None
    small_groups: int = 0  # typiclust: groups of MIN_CLUSTER_SIZE images or fewer, passed over while others remain
    copies: int = 0  # typiclust: exact copies of labelled or chosen images taken, when nothing else was left


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared euclidean distances between rows of unit vectors: 2 - 2 cos, never below 0."""
    return (2 - 2 * a @ b.T).clamp_min(0)


def typicality(x: torch.Tensor, neighbours: int, block_bytes: int = 256 * 2**20) -> torch.Tensor:
    """(N,) 1 / (mean squared distance to the `neighbours` nearest other rows + 1e-5), a block of
    rows at a time (a group of 100,000 images would need a 40 GB distance matrix at once)."""
    rows = max(1, block_bytes // (4 * len(x)))
    out = []
    for start in range(0, len(x), rows):
        d = squared_distances(x[start:start + rows], x)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = math.inf  # not its own neighbour
        out.append(1 / (d.topk(neighbours, dim=1, largest=False).values.mean(1) + 1e-5))
    return torch.cat(out)


def typiclust_groups(labelled: int, budget: int, images: int) -> int:
    """How many k-means groups TypiClust makes: one per label there will be, 500 at most."""
    return min(labelled + budget, MAX_CLUSTERS, images)


def choose_typiclust(x: np.ndarray, budget: int, labelled: np.ndarray, seed: int = 0) -> Choice:
    """TypiClust's choice of `budget` unlabelled rows of `x` (unit vectors); `labelled`: (N,) bool."""
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    groups = typiclust_groups(int(labelled.sum()), budget, len(x))
    _, group_of = kmeans(x, groups, seed=seed, init="k-means++", restarts=3)
    sizes = np.bincount(group_of, minlength=groups)
    by_group = np.argsort(group_of, kind="stable")  # each group's rows, ascending: found once, not per choice
    members_of = np.split(by_group, np.cumsum(sizes)[:-1])
    labels_in = np.bincount(group_of[labelled], minlength=groups)
    eligible = sizes > MIN_CLUSTER_SIZE
    by_need = sorted(range(groups), key=lambda g: (labels_in[g], -sizes[g], g))  # fewest labels, then largest
    visit = [g for g in by_need if eligible[g]] or by_need
    rest = [g for g in by_need if g not in visit]  # the small groups, once the others are used up
    taken = labelled.copy()
    rows, scores, clusters = [], [], []
    copies_taken = 0
    everywhere = visit + rest  # the last resort: copies, from any group
    allow_copies = False
    while len(rows) < budget:  # a pass takes one image from each group; more passes if the budget asks
        before = len(rows)
        for g in visit:
            members = members_of[g]
            picked = _most_typical(x_t, members[~taken[members]], members[taken[members]], allow_copies)
            if picked is None:  # nothing left here but copies of what is labelled or chosen: used up
                continue
            best, score = picked
            taken[best] = True
            rows.append(best)
            scores.append(score)
            clusters.append(g)
            copies_taken += allow_copies
            if len(rows) == budget:
                break
        if len(rows) == before:
            if rest:
                visit, rest = rest, []
            elif not allow_copies:
                visit, allow_copies = everywhere, True
            else:
                raise ValueError(f"only {len(rows)} unlabelled rows for a budget of {budget}")
    return Choice(np.array(rows, dtype=np.int64), np.array(scores), np.array(clusters, dtype=np.int64),
                  small_groups=int((~eligible).sum()), copies=copies_taken)


def _most_typical(x_t: torch.Tensor, members: np.ndarray, twins: np.ndarray, allow_copies: bool):
    """(row, typicality) of the most typical of a group's unlabelled `members` (NaN when it is
    the only one), or None when none is left. An exact copy of a labelled or chosen row of the
    group (`twins`) is the most typical of all (its twin sits at distance 0) and teaches nothing
    new: it is passed over, and where nothing but such copies is left, so is the group (None),
    unless `allow_copies`."""
    if len(members) == 0:
        return None
    copies = None
    if len(twins) and not allow_copies:
        copies = squared_distances(x_t[members], x_t[twins]).min(1).values <= DUPLICATE_DISTANCE
        if copies.all():
            return None
    if len(members) == 1:
        return members[0], math.nan
    typical = typicality(x_t[members], min(TYPICALITY_NEIGHBOURS, max(1, len(members) // 2)))
    if copies is not None:
        typical[copies] = -math.inf
    return members[int(typical.argmax())], float(typical.max())


def choose_kcenter(x: np.ndarray, budget: int, labelled: np.ndarray, seed: int = 0,
                   block_bytes: int = 256 * 2**20) -> Choice:
    """Greedy k-center: each choice is the row farthest from every labelled or chosen row (the
    first, with nothing labelled, a random row drawn by `seed`)."""
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    nearest = torch.full((len(x),), math.inf)  # squared distance to the nearest labelled or chosen row
    given = np.flatnonzero(labelled)
    block = max(1, block_bytes // (4 * len(x)))
    for start in range(0, len(given), block):
        nearest = torch.minimum(nearest, squared_distances(x_t[given[start:start + block]], x_t).min(0).values)
    nearest[given] = -1.0  # labelled: never chosen, even where all else duplicates them at distance 0
    rows, scores = [], []
    for _ in range(budget):
        if not rows and len(given) == 0:
            row, score = int(np.random.default_rng(seed).integers(len(x))), math.inf
        else:
            row = int(nearest.argmax())
            score = float(nearest[row])
        rows.append(row)
        scores.append(score)
        nearest = torch.minimum(nearest, squared_distances(x_t[row:row + 1], x_t)[0])
        nearest[row] = -1.0
    return Choice(np.array(rows, dtype=np.int64), np.array(scores), None)


def choose_random(budget: int, labelled: np.ndarray, seed: int = 0) -> Choice:
    rows = np.random.default_rng(seed).permutation(np.flatnonzero(~labelled))[:budget]
    return Choice(rows.astype(np.int64), np.full(budget, math.nan), None)


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown {said_as('--strategy', 'strategy')} {strategy!r}; "
                        f"choose one of {', '.join(STRATEGIES)}")


def choose(x: np.ndarray, budget: int, labelled: np.ndarray, strategy: str = "typiclust", seed: int = 0,
           in_place: bool = False) -> Choice:
    """`budget` rows of `x` (L2-normalised embeddings of a pool) to label next, by `strategy`;
    `in_place`: `x` is centred over itself (see `centred`) by a caller that has no further use for it."""
    _check_strategy(strategy)
    unlabelled = int((~labelled).sum())
    if unlabelled == 0:
        raise UserError(f"every image of the pool is labelled already ({option('labelled')}): "
                        f"nothing is left to choose")
    if not 1 <= budget <= unlabelled:
        raise UserError(f"{option('budget')} must lie between 1 and the {plural(unlabelled, 'unlabelled image')} "
                        f"of the pool, "
                        f"got {budget}")
    if strategy == "random":
        return choose_random(budget, labelled, seed)
    vectors = centred(x, x.mean(axis=0), in_place=in_place)
    if strategy == "kcenter":
        return choose_kcenter(vectors, budget, labelled, seed)
    return choose_typiclust(vectors, budget, labelled, seed)


def select_images(data, checkpoint, out, budget: int, strategy: str = "typiclust", labelled=(), seed: int = 0,
                  copy: bool = False, device: str = "auto", backbone: str | None = None, image_size: int | None = None,
                  small_stem: bool | None = None, show_progress: bool = True, bands=None) -> dict:
    """Choose `budget` images under `data` to label (see the module's docstring); `labelled`: files
    that list images already labelled (CSV with a file column, .txt, or an eval subset JSON);
    `bands`: the TIFF bands shown to the encoder (by default those it was trained on).
    Writes OUT/to_label.csv, OUT/to_label.png, OUT/summary.json (and OUT/to_label/ with `copy`)."""
    _check_strategy(strategy)
    if budget < 1:
        raise UserError(f"{option('budget')} must be at least 1, got {budget}")
    if not 0 <= seed < 2**32:
        raise UserError(f"{option('seed')} must lie in [0, 2^32), got {seed}")
    if isinstance(labelled, (str, Path)):
        labelled = [labelled]
    listed = [name for path in labelled for name in names_listed_in(path, "labelled", allow_empty=True)]
    with removed_if_left_empty(out):
        source = open_option(data, "data", open_source)  # a dataset root gives its train/ images
        refuse_out_inside(out, source, data)
        out = output_folder(out)
        refuse_more_than_files(option("budget", budget), budget, source, "choose a smaller budget")
        with warnings_after_checks():  # refused, the error says what the warning of files skipped would
            embedded = embed_sources(checkpoint, {"pool": source}, out, device, backbone, image_size, small_stem,
                                     show_progress, bands)["pool"]
            refuse_more_than_decoded(option("budget", budget), budget, source, embedded, "choose a smaller budget")
    names = embedded.names
    is_labelled = np.zeros(len(names), dtype=bool)
    is_labelled[rows_of_names(names, listed, repr(source.describe()), source.split, "labelled")] = True
    # The embeddings are not used again: centred over themselves, not into a second (N, D) copy.
    choice = choose(embedded.vectors, budget, is_labelled, strategy, seed, in_place=True)

    csv_path = out / "to_label.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "file", "cluster", "score"])
        for rank, (row, score) in enumerate(zip(choice.rows, choice.scores), start=1):
            cluster = "" if choice.clusters is None else int(choice.clusters[rank - 1])
            writer.writerow([rank, names[row], cluster, "" if math.isnan(score) else f"{score:.4g}"])
    drawn = [(source, names[row], f"#{rank}") for rank, row in enumerate(choice.rows, start=1)]
    drawn = drawn[:DRAWN_PER_ROW * ROWS_DRAWN]
    picture = draw_rows([drawn[i:i + DRAWN_PER_ROW] for i in range(0, len(drawn), DRAWN_PER_ROW)],
                        out / "to_label.png", f"the {plural(min(budget, len(drawn)), 'image')} to label first "
                        f"({strategy}{', of ' + format(budget, ',') if budget > len(drawn) else ''})",
                        bands=embedded.bands)
    shutil.rmtree(out / "to_label", ignore_errors=True)  # an earlier choice's copies
    copied = _copy_out(source, [names[r] for r in choice.rows], out) if copy else None

    summary = {"pool": source.describe(), "images": len(names), "skipped": len(embedded.skipped),
               "checkpoint": str(checkpoint), "labelled": int(is_labelled.sum()),
               "labelled_from": [str(path) for path in labelled], "budget": budget, "strategy": strategy, "seed": seed,
               "outputs": {"csv": str(csv_path), "png": str(picture), "summary": str(out / "summary.json"),
                           **({"copies": str(copied)} if copied else {})}}
    if choice.clusters is not None:
        summary["clusters"] = typiclust_groups(int(is_labelled.sum()), budget, len(names))
        summary["clusters_too_small"] = choice.small_groups  # MIN_CLUSTER_SIZE or fewer: outliers, passed over
        summary["clusters_chosen_from"] = len(set(choice.clusters.tolist()))
        summary["copies_chosen"] = choice.copies  # exact copies of labelled or chosen images: the last resort
    classes = folder_classes(names)  # a labelled dataset (to compare strategies): how evenly they cover it
    if classes is not None:
        chosen = [classes[r] for r in choice.rows]
        summary["folders"] = {"classes": len(set(classes)), "covered": len(set(chosen)),
                              "per_class": {c: chosen.count(c) for c in sorted(set(classes))}}
    write_summary(out, summary)
    coverage = (f"; they cover {summary['folders']['covered']} of the {summary['folders']['classes']} class "
                f"folders" if classes is not None else "")
    already = f" besides the {plural(int(is_labelled.sum()), 'labelled image')}" if is_labelled.any() else ""
    say(f"select: {budget:,} of {plural(len(names), 'image')} to label{already} ({strategy}){coverage}")
    if choice.small_groups * 2 > summary.get("clusters", 0):
        say(f"select: {choice.small_groups} of the {summary['clusters']} groups hold {MIN_CLUSTER_SIZE} images or fewer, and "
            f"TypiClust leaves such outliers to last: the choices come from {summary['clusters_chosen_from']} "
            f"groups; a pool many times larger than the labels suits it better")
    if choice.copies:
        warn(f"select: {choice.copies:,} of the {budget:,} chosen images are exact copies of images labelled or "
             f"chosen before, ranked last: every other unlabelled image of the pool was chosen first")
    return summary


def _copy_out(source, names: list[str], out: Path) -> Path:
    """The chosen images' files under OUT/to_label/, in their own subfolders: a folder to hand
    out. Names that lead elsewhere (a .txt list's absolute or ../ paths, a tar's /member) are
    copied inside it too, never over the files they name, and two chosen files never onto one copy."""
    where = distinct_copy_paths(names, "to_label", said_as("--out", "the out folder"))
    for name, data in source.read(names):
        target = out / where[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return out / "to_label"
