"""Embed every image of a source, chunk by chunk, so that a killed run resumes where it stopped.

Each finished chunk of `chunk_size` files is saved (atomically) as an .npz of names, L2-normalised
float32 vectors and the names that could not be decoded; a rerun loads finished chunks and embeds
only the rest. The folder is keyed by the encoder and the source's fingerprint, so a changed pool
or encoder starts afresh. Pixels are decoded straight from the files: a pool of a million images
is never held as a pixel cache.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..console import progress_bar
from ..data.cache import CACHE_FORMAT
from ..data.decode import dicom_display_key, readers_for, warn_skipped, what_to_do
from ..data.sources import ImageSource
from ..data.workers import decode_stream
from ..encoder import Encoder
from ..errors import UserError
from ..eval.features import extract_features, nonfinite_rows, refuse_nonfinite
from ..outputs import atomic_path


@dataclass
class Embedded:
    names: list[str]  # the files that were embedded, in source order
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    skipped: list[str]  # files that could not be decoded
    bands: tuple[int, ...] | None = None  # the TIFF bands the encoder was shown: pictures show the same


def embedding_dir(root: Path, encoder: Encoder, source: ImageSource) -> Path:
    # The readers installed decide what decodes: embeddings made without tifffile (or pydicom) are
    # not reused with it, where the pool holds files it reads.
    key = hashlib.sha256(f"{encoder.key or encoder.description}|{encoder.image_size}|{source.fingerprint}"
                         f"|decoding {CACHE_FORMAT}|{'+'.join(readers_for(source.names))}"
                         f"{dicom_display_key(source.names)}".encode()).hexdigest()[:16]
    return root / f"{source.path.name.split('.')[0]}-{key}"


def _embed_chunk(encoder: Encoder, files, names: list[str], device, workers: int, bar, batch_size: int = 256):
    """(names, vectors, skipped, notes) of the files `names`, which `files` yields as (name, bytes)."""
    notes: dict[str, list[str]] = {}  # what was decoded in part, or why not (see decode_noting)
    decoded = list(decode_stream(files, encoder.cache_size, workers, parallel=len(names) >= 512, notes=notes,
                                 bands=encoder.bands))
    kept = [(n, d[0]) for n, d in decoded if d is not None]
    skipped = [n for n, d in decoded if d is None]
    bar.update(len(skipped))
    if kept:  # the bar moves with each batch embedded: a chunk of 4,096 images takes minutes on a CPU
        pixels = np.stack([p for _, p in kept])
        features = extract_features(encoder.backbone, pixels, encoder.image_size, device, batch_size=batch_size,
                                    bar=bar)
        vectors = torch.nn.functional.normalize(features, dim=1).numpy().astype(np.float32)
    else:
        vectors = np.zeros((0, encoder.backbone.feature_dim), np.float32)
    return [n for n, _ in kept], vectors, skipped, notes


def _read_in_runs(source: ImageSource, runs: list[list[str]]):
    """For each of `runs` (lists of names, each and all together in `source.read_order()`), an
    iterator over its files' (name, bytes), to be used up before the next: one `source.read` for
    all, so a tar is read once however many runs it is cut into."""
    with contextlib.closing(source.read([name for run in runs for name in run])) as files:
        for run in runs:
            yield itertools.islice(files, len(run))


def _load_chunk(path: Path, wanted: list[str]):
    """(names, vectors, skipped, notes) saved in `path` when they are those of the files `wanted`."""
    if not path.exists():
        return None
    try:  # a chunk cut short or not ours (objects are never unpickled) is embedded again
        with np.load(path) as saved:
            names, skipped, vectors = saved["names"].tolist(), saved["skipped"].tolist(), saved["vectors"]
            notes = json.loads(str(saved["notes"])) if "notes" in saved.files else {}  # older chunks: none
    except (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile):
        return None
    if sorted(names + skipped) != sorted(wanted) or vectors.ndim != 2 or len(vectors) != len(names):
        return None
    if nonfinite_rows(vectors):  # saved before they were refused: embedded again, and refused
        return None
    return names, vectors, skipped, notes


def embed_source(encoder: Encoder, source: ImageSource, work_dir: Path, device, chunk_size: int = 4096,
                 workers: int = 0, show_progress: bool = True, desc: str = "embedding",
                 batch_size: int = 256) -> Embedded:
    """The L2-normalised embeddings of every file of `source`, in the source's order, made
    `chunk_size` files at a time (`batch_size` images a forward pass) and each chunk saved in
    `work_dir`, from which a rerun takes the chunks already done. Chunks are cut in the order the
    source reads its files (a tar's archive order), so the chunks still to embed read it in one pass."""
    work_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(len(source.names), f"{desc} ({source.describe()})", enabled=show_progress)
    encoder.backbone.to(device)
    order = source.read_order()
    wanted = [order[start:start + chunk_size] for start in range(0, len(order), chunk_size)]
    paths = [work_dir / f"chunk-{number:06d}.npz" for number in range(len(wanted))]
    chunks = [_load_chunk(path, names) for path, names in zip(paths, wanted)]
    with contextlib.closing(_read_in_runs(source, [names for names, c in zip(wanted, chunks) if c is None])) as runs:
        for number, names in enumerate(wanted):
            if chunks[number] is None:  # not embedded yet, or in chunks of another size
                chunks[number] = _embed_chunk(encoder, next(runs), names, device, workers, bar, batch_size)
                # Before it is saved, or a rerun would resume from it; the chunks before were checked.
                refuse_nonfinite(chunks[number][1], encoder, sum(len(chunk[0]) for chunk in chunks[:number + 1]))
                _save_chunk(paths[number], *chunks[number])
            else:
                bar.update(len(names))
    bar.close()
    names, vectors, skipped, notes = _in_source_order(source, chunks)
    if not names:  # its chunks hold only names that failed: nothing worth resuming from
        shutil.rmtree(work_dir, ignore_errors=True)
        said = source.none_decoded()  # and, as a cache's build says, what would make them decode
        raise UserError(said if source.one_file else f"{said}; {what_to_do(notes, 'image')}")
    warn_skipped(skipped, len(source.names), repr(source.describe()), notes=notes)
    return Embedded(names, vectors, skipped, encoder.bands)


def _save_chunk(path: Path, names: list[str], vectors: np.ndarray, skipped: list[str], notes: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, names=np.array(names, dtype=str), vectors=vectors, skipped=np.array(skipped, dtype=str),
                 notes=np.array(json.dumps(notes)))


def _in_source_order(source: ImageSource, chunks: list) -> tuple[list[str], np.ndarray, list[str], dict]:
    """(names, vectors, skipped, notes) of all the embedded `chunks`, in the source's order whatever
    order the files were read in (a tar's is its archive order): the same images in a folder or a
    tar give the same rows, so the same choices, and the same warnings. Each chunk is let go once its
    vectors are placed (its place in `chunks` set to None): a concatenation, then a reordering, would
    be two more (N, D) copies (2 GB each for a million 512-d vectors)."""
    position = {name: i for i, name in enumerate(source.names)}
    read = [name for chunk in chunks for name in chunk[0]]  # in the order read
    order = np.argsort(np.fromiter(map(position.__getitem__, read), np.int64, len(read)), kind="stable")
    row_of = np.empty_like(order)  # (N,) the row of each name read
    row_of[order] = np.arange(len(order))
    vectors, placed = np.empty((len(read), chunks[0][1].shape[1]), np.float32), 0
    skipped, notes = [], {}
    for number, (names, chunk_vectors, chunk_skipped, chunk_notes) in enumerate(chunks):
        vectors[row_of[placed:placed + len(names)]] = chunk_vectors
        placed += len(names)
        skipped += chunk_skipped
        for note, noted in chunk_notes.items():
            notes.setdefault(note, []).extend(noted)
        chunks[number] = None
    in_order = functools.partial(sorted, key=position.__getitem__)
    return [read[i] for i in order], vectors, in_order(skipped), {note: in_order(n) for note, n in notes.items()}
