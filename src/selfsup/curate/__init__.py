"""`selfsup curate`: build a clean pretraining set from a messy pool (the DINOv2 data engine).

    pool, seed set (and evaluation sets to exclude) --embed--> vectors
      -> drop near-duplicates inside the pool (keep one per group)
      -> drop pool images that are near-duplicates of an excluded (evaluation) image
      -> retrieve: each seed's k nearest pool images, or evenly from the k-means clusters of the
         pool nearest the seeds
      -> OUT/curated.txt (one path per line: `selfsup pretrain --data OUT/curated.txt`; for a tar
         pool, member names, and OUT/curated.tar is the data), OUT/summary.json, and picture grids
         to check the result.

Embeddings are centred on the pool's mean before comparing (so the direction all images share
does not make unrelated images look alike) and L2-normalised: similarity is cosine similarity.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import override, ranged
from ..console import flag, named_option, path_option, plural, said_as, say
from ..data.sources import open_file_or_source
from ..encoder import load_encoder
from ..errors import UserError
from ..outputs import (atomic_path, distinct_copy_paths, output_folder, refuse_out_inside, removed_if_left_empty,
                       write_summary, write_text_atomically)
from .dedup import duplicate_groups, duplicates_to_drop, kept_similarities, near_any
from .embedding import embed_source, embedding_dir
from .pictures import draw_rows
from .retrieve import from_nearest_clusters, nearest_to_seeds
from .search import centred


@dataclass
class CurateConfig:
    threshold: float = ranged(0.95, -1.0, 1.0)  # cosine similarity at which two images are near-duplicates
    k: int = ranged(10, 1, None)  # pool images retrieved per seed image (nearest-neighbour mode)
    clusters: int = ranged(0, 0, None)  # > 0: cluster mode, with this many k-means clusters of the pool
    per_cluster: int = ranged(100, 1, None)  # images drawn from each cluster nearest a seed (cluster mode)
    center: bool = True
    chunk_size: int = ranged(4096, 1, None)
    seed: int = 0
    backend: Literal["auto", "faiss", "exact"] = "auto"  # auto: faiss when installed and the pool is large

    @classmethod
    def checked(cls, **values) -> "CurateConfig":
        """A config from `values`, each checked against its range (a UserError naming it as the user
        gave it: the flag in a command, the field of `config=CurateConfig(...)` from Python)."""
        return override(cls(), values, named=config_option)


def config_option(name: str) -> str:
    """A CurateConfig field as the reader sets it: `--k` in a command, `k in config=CurateConfig(...)`
    from Python (where curate() takes the fields in its `config`, not as keywords)."""
    return said_as(flag(name), f"{name} in config=CurateConfig(...)")


@dataclass
class Summary:
    pool: int
    pool_skipped: int
    seeds: int
    duplicate_groups: int
    removed_as_duplicates: int
    excluded: int
    retrieved: int
    per_seed_or_cluster: dict = field(default_factory=dict)
    mode: str = "nearest"
    outputs: dict = field(default_factory=dict)


OPTIONS = {"pool": "pool", "seed set": "seed_set", "excluded set": "exclude"}  # what: its option's name
OUTPUT_FILES = ("curated.txt", "curated.tar", "summary.json", "duplicates.txt", "excluded.txt", "duplicates.png",
                "retrieved.png")  # what a run writes in --out, replacing what was there


def _open(path, what: str):
    try:
        return open_file_or_source(path)  # a folder, a tar, a list or one image
    except UserError as e:
        if "no images found" in str(e):
            raise UserError(f"the {what} {str(path)!r} holds no images; give at least one") from None
        name = OPTIONS[what]
        raise UserError(f"{said_as(flag(name), name)}: {e}") from None


def curate(pool, seed_set, checkpoint, out, exclude=None, config: CurateConfig | None = None,
           device: str = "auto", backbone: str | None = None, image_size: int | None = None,
           small_stem: bool | None = None, make_tar: bool = False, show_progress: bool = True,
           bands: tuple[int, ...] | None = None) -> dict:
    """Run the whole curation; returns the summary (also written to OUT/summary.json). `bands`:
    the TIFF bands shown to the encoder (by default those it was trained on)."""
    from ..train import resolve_device

    config = CurateConfig.checked(**asdict(config or CurateConfig()))
    with removed_if_left_empty(out):  # a refused start (no pool, a bad checkpoint) leaves no folder
        out = output_folder(out)
        _check_inputs_are_not_outputs(out, {"pool": pool, "seed set": seed_set, "excluded set": exclude})
        device = resolve_device(device)
        sources = {"pool": _open(pool, "pool"), "seed set": _open(seed_set, "seed set")}
        if exclude:
            sources["excluded set"] = _open(exclude, "excluded set")
        encoder = load_encoder(checkpoint, image_size=image_size, small_stem=small_stem, backbone=backbone,
                               bands=bands, images=sources["pool"])  # a random: encoder: the pool's size
        for what, given in (("pool", pool), ("seed set", seed_set), ("excluded set", exclude)):
            if what in sources:  # its pictures would join the pool, or the seed set
                refuse_out_inside(out, sources[what], given)
        if make_tar or sources["pool"].file_path(sources["pool"].names[0]) is None:
            distinct_copy_paths(sources["pool"].names, "curated", "curated.tar")  # names that would meet in curated.tar: refused before the work
        # The pool last: a seed set that cannot be read is said before hours of embedding the pool.
        embedded = {}
        for what in sorted(sources, key=lambda what: what == "pool"):
            work_dir = embedding_dir(out / "embeddings", encoder, sources[what])
            embedded[what] = embed_source(encoder, sources[what], work_dir, device, config.chunk_size,
                                          show_progress=show_progress, desc=f"embedding {what}")
    pool_e = embedded["pool"]
    mean = pool_e.vectors.mean(axis=0) if config.center else None
    # Centred over the embeddings, and the kept rows moved to the front of the pool's below: a
    # million 512-d vectors are 2 GB, held once (a centred copy and a copy of the kept rows were 6 GB).
    vectors = {what: centred(e.vectors, mean, in_place=True) for what, e in embedded.items()}

    groups = duplicate_groups(vectors["pool"], config.threshold, pool_e.names, backend=config.backend, device=device)
    dropped = duplicates_to_drop(groups)
    excluded = set()
    if exclude:
        excluded = set(np.flatnonzero(near_any(vectors["pool"], vectors["excluded set"], config.threshold,
                                               config.backend, device)).tolist())
    kept = np.array(sorted(set(range(len(pool_e.names))) - dropped - excluded), dtype=np.int64)
    if len(kept) == 0:
        raise UserError(f"every pool image was removed as a duplicate or excluded; lower "
                        f"{config_option('threshold')}")
    similarities = kept_similarities(vectors["pool"], groups[:8])  # shown under the duplicates
    candidates = rows_to_front(vectors["pool"], kept)  # the pool's rows are no longer in order past here
    selected, per, rows = _retrieve(vectors["seed set"], candidates, kept, config)

    summary = Summary(pool=len(pool_e.names), pool_skipped=len(pool_e.skipped), seeds=len(embedded["seed set"].names),
                      duplicate_groups=len(groups), removed_as_duplicates=len(dropped), excluded=len(excluded),
                      retrieved=len(selected), per_seed_or_cluster=per,
                      mode="clusters" if config.clusters else "nearest")
    summary.outputs = _write_outputs(out, sources, embedded, selected, groups, similarities, rows, make_tar,
                                     encoder.bands)
    summary.outputs.update(_write_removed(out, pool_e.names, groups, excluded))
    summary.outputs["summary"] = str(out / "summary.json")
    write_summary(out, asdict(summary))
    say(f"curate: {plural(summary.pool, 'pool image')}, {plural(summary.removed_as_duplicates, 'near-duplicate')} "
        f"removed ({plural(summary.duplicate_groups, 'group')}), {summary.excluded:,} excluded, "
        f"{summary.retrieved:,} retrieved "
        f"-> selfsup pretrain --data {summary.outputs['data']}")
    return asdict(summary)


def rows_to_front(vectors: np.ndarray, rows: np.ndarray, block: int = 65_536) -> np.ndarray:
    """`vectors[rows]` for ascending `rows`, without a copy: each row moved to the front, over the
    rows before it that are not taken, a block at a time (row rows[i] >= i: a block reads nothing
    that an earlier block wrote). `vectors` is left with the rows taken first and the rest after."""
    if len(rows) == len(vectors):  # every row, already in order
        return vectors
    for start in range(0, len(rows), block):
        taken = rows[start:start + block]
        vectors[start:start + len(taken)] = vectors[taken]
    return vectors[:len(rows)]


def _check_inputs_are_not_outputs(out: Path, inputs: dict) -> None:
    """A UserError when an input is a file this run rewrites in `out`: curated.tar would be
    emptied before the pool is read from it, and a .txt list replaced by the curated one."""
    for what, given in inputs.items():
        for name in OUTPUT_FILES if given else ():
            if _same_file(Path(given).expanduser(), out / name):
                raise UserError(f"{path_option(OPTIONS[what], given)} is the "
                                f"{name} this run writes in {named_option('out')}; choose another "
                                f"{named_option('out')}, or copy it elsewhere and give the copy")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _retrieve(seeds: np.ndarray, candidates: np.ndarray, kept: np.ndarray, config: CurateConfig):
    """(selected pool indices, count per seed or cluster, picture rows of ("seed"|"pool", index))."""
    if config.clusters:
        drawn = from_nearest_clusters(seeds, candidates, config.clusters, config.per_cluster, config.seed)
        per = {str(c): len(idx) for c, idx in drawn.items()}
        rows = [kept[idx] for idx in drawn.values()]
        selected = sorted(set(np.concatenate(rows).tolist())) if rows else []
        return selected, per, [[("pool", j) for j in row[:9]] for row in rows[:6]]
    neighbours = kept[nearest_to_seeds(seeds, candidates, config.k, config.backend)]  # (S, k)
    per = {str(i): int(len(row)) for i, row in enumerate(neighbours)}
    pictures = [[("seed", i)] + [("pool", j) for j in row[:8]] for i, row in enumerate(neighbours[:6])]
    return sorted(set(neighbours.ravel().tolist())), per, pictures


def _write_outputs(out: Path, sources: dict, embedded: dict, selected: list[int], groups: list[list[int]],
                   similarities: list[list[float]], picture_rows: list, make_tar: bool, bands) -> dict:
    pool_src, pool_names = sources["pool"], embedded["pool"].names
    names = [pool_names[i] for i in selected]
    on_disk = pool_src.file_path(names[0]) is not None
    listing = out / "curated.txt"
    lines = [str(pool_src.file_path(n).resolve()) for n in names] if on_disk else names
    write_text_atomically(listing, "".join(line + "\n" for line in lines))
    outputs = {"list": str(listing)}
    if make_tar or not on_disk:  # inside a tar, the list alone cannot be read back
        outputs["tar"] = str(write_tar(pool_src, names, out / "curated.tar"))
    outputs["data"] = outputs["list"] if on_disk else outputs["tar"]  # what `pretrain --data` reads
    by_kind = {"pool": (pool_src, pool_names), "seed": (sources["seed set"], embedded["seed set"].names)}
    duplicates = [[(pool_src, pool_names[i], "kept" if n == 0 else f"cos {s:.3f}")
                   for n, (i, s) in enumerate(zip(group[:9], sims))] for group, sims in zip(groups[:8], similarities)]
    outputs["duplicates_png"] = str(draw_rows(duplicates, out / "duplicates.png",
                                              "near-duplicate groups (first kept; cos to it)", bands=bands,
                                              first_marked=True))
    rows = [[(by_kind[kind][0], by_kind[kind][1][i]) for kind, i in row] for row in picture_rows]
    seeded = any(kind == "seed" for row in picture_rows for kind, _ in row[:1])  # by seed, not by cluster
    outputs["retrieved_png"] = str(draw_rows(rows, out / "retrieved.png", "retrieved images (seed first)",
                                             bands=bands, first_marked=seeded))
    return outputs


def _write_removed(out: Path, names: list[str], groups: list[list[int]], excluded: set[int]) -> dict:
    """OUT/duplicates.txt: one group per line, tab-separated, the kept image first;
    OUT/excluded.txt: the pool images that were near-duplicates of excluded images."""
    lines = []
    for group in groups:
        members = sorted(names[i] for i in group)
        lines.append("\t".join(members))
    write_text_atomically(out / "duplicates.txt", "".join(line + "\n" for line in lines))
    write_text_atomically(out / "excluded.txt", "".join(names[i] + "\n" for i in sorted(excluded)))
    return {"duplicates": str(out / "duplicates.txt"), "excluded": str(out / "excluded.txt")}


def write_tar(source, names: list[str], path: Path) -> Path:
    """The files `names` of `source` in an uncompressed tar under curated/ (read by --data),
    written whole or not at all: a short tar would read back as a smaller, valid one."""
    members = distinct_copy_paths(names, "curated", "curated.tar")
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for name, data in source.read(names):
            info = tarfile.TarInfo(members[name])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
