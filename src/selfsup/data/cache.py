"""Decode images once into a memory-mapped uint8 cache at the working resolution.

Every image is decoded (decode.py), its shorter side resized to `size` and centre-cropped to a
square, and the pixels appended to one raw (N, size, size, 3) uint8 file. Training and evaluation
then read pixels, never files: a batch is a slice of a memory map (so a dataset larger than RAM
works), and views are made from it on the model's device. The cache is keyed by the source's
fingerprint (names, sizes and modification times of its files), so it is rebuilt when the source
changes. Files that cannot be decoded are skipped, counted and reported in one warning; so are
those decoded in part (a multi-page TIFF's first page, a multi-frame DICOM's first frame).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..console import option, progress_bar, warn
from ..errors import UserError
from ..outputs import NO_ROOM, cannot_write, current_umask, os_reason
from .decode import dicom_display_key, warn_skipped, what_to_do
from .dicom import DICOM_CODEC, DICOM_READER, dicom_readers
from .sources import SPLIT_NAMES, ImageSource
from .tiff import FIRST_PAGE, TIFF_LAYOUT, Bands, require_tiff_reader, tiff_readers
from .workers import decode_stream

# 2: EXIF orientation applied; deeper than 8 bits stretched; gray rows and median side kept.
# 3: 16-bit colour decoded in full; deep images stretched between percentiles; transparency composited.
# 4: GDAL's nodata pixels left out of the stretch, and black; MINISWHITE turned over at any depth;
#    DICOM files.
CACHE_FORMAT = 4


@dataclass
class ImageCache:
    """Decoded images of one source: pixels on disk, memory-mapped, and what is known of them."""

    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped read-only
    names: list[str]  # file of each row, relative to the source root
    labels: np.ndarray | None  # (N,) int64 class index, when the source is laid out by class
    classes: list[str]
    skipped: list[str]  # files that could not be decoded
    grayscale_rows: np.ndarray  # (G,) int64 rows whose image was gray (one channel, or three equal ones)
    source: str  # a description of where the images came from
    median_side: int | None  # the images' median shorter side before resizing (None: not known)
    # SHA-256 of images.u8, the decoded pixels: the data by content, not by file names and times
    # (None: a cache built before it was kept, or frames of videos).
    pixels_sha256: str | None = field(default=None, kw_only=True)  # keyword-only: subclasses add fields

    def __len__(self) -> int:
        return len(self.names)

    @property
    def grayscale(self) -> int:
        return len(self.grayscale_rows)

    @property
    def size(self) -> int:
        return self.images.shape[1]


def cache_remedy() -> str:
    return f"set {option('cache_dir')} or $SELFSUP_CACHE to a writable folder"


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Where decoded images (and features, label subsets) are kept: `cache_dir` when given (a
    --cache-dir), else $SELFSUP_CACHE, else ~/.cache/selfsup."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")


def _cache_key(source: ImageSource, size: int, bands: Bands = None) -> str:
    # A folder's split is named as its folder read on its own (their fingerprints agree): one cache.
    in_folder = source.split is not None and source.path.is_dir()
    named = source.path / source.split if in_folder else source.path
    # "cifar-train", not "train": a split's folder says little without the dataset's.
    name = named.name.split(".")[0]  # a tar's suffix, or a dotted folder's tail
    name = f"{named.parent.name.split('.')[0]}-{name}" if name in SPLIT_NAMES and named.parent.name else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"
    chosen = f"|bands={','.join(map(str, bands))}" if bands else ""  # no bands: the keys caches had before
    key = f"{CACHE_FORMAT}|{source.fingerprint}|{size}{chosen}{dicom_display_key(source.names)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{stem}{'-' + source.split if source.split and not in_folder else ''}-{size}px-{digest}"


STAGING = ".building-"  # the start of a cache's name while it is built (then: host, builder)


def _staging_prefix() -> str:
    # The machine and the process that builds: a folder left by a killed build (kill -9, a time
    # limit) is recognised and removed by the next build on the same machine.
    host = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname())[:40] or "host"
    return f"{STAGING}{host}-"


def _process_table() -> str:
    """Which table of processes this process's PID is looked up in, as 8 hex digits: this boot
    of this machine and this PID namespace (containers that share a host name each have their
    own). A PID is known dead only when looked up in the table it was taken from."""
    parts = []
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:  # not Linux: no namespaces, the host name alone says which machine
            parts.append("")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _builder(pid: int | None = None) -> str:
    """The process that builds (this one by default) as its staging folders name it: PID.TABLE."""
    return f"{os.getpid() if pid is None else pid}.{_process_table()}"


def _abandoned(build: Path, quiet_seconds: float = 600) -> bool:
    """Whether the build folder `build` is this machine's and its process has ended: known at once
    when its PID was taken from this table of processes (see _process_table), so that a build
    killed a moment ago does not hold its disk through the next; otherwise (another PID namespace
    under the same host name, or a folder named before tables were) only once nothing has written
    to it for `quiet_seconds`. Other machines' builds are theirs to judge: a PID says nothing here."""
    prefix = _staging_prefix()
    if not build.name.startswith(prefix):
        return False
    pid, _, its_table = build.name[len(prefix):].split("-", 1)[0].partition(".")
    if not pid.isdigit() or _alive(int(pid)):
        return False
    return its_table == _process_table() or time.time() - _last_write(build) > quiet_seconds


def _last_write(folder: Path) -> float:
    try:
        return max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
    except OSError:
        return time.time()  # changing under us: someone is at work there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def make_staging(target: Path, kind: str = "image") -> Path:
    """A new temporary folder beside `target`, to build a cache in and rename into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_builds(target.parent)  # a build killed here frees its disk for this one
        return Path(tempfile.mkdtemp(prefix=f"{_staging_prefix()}{_builder()}-", dir=target.parent))
    except OSError as e:
        raise _cannot_write_cache(target, e, kind) from None


def _cannot_write_cache(target: Path, e: OSError, kind: str) -> UserError:
    return cannot_write(f"the {kind} cache in {str(target.parent)!r}", e, cache_remedy())


@contextmanager
def building(target: Path, kind: str = "image"):
    """A staging folder (make_staging) to build the cache `target` in, removed if the block fails;
    a disk that fills up meanwhile is a UserError naming the cache folder, not a bare errno."""
    staging = make_staging(target, kind)
    try:
        yield staging
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in NO_ROOM:  # a write; reading the source fails otherwise
            raise _cannot_write_cache(target, e, kind) from None
        raise


def publish(staging: Path, target: Path, meta: dict) -> None:
    """Write the index beside the pixels and move the finished cache into place: on disk first
    (a power cut after the rename must not leave a short cache), readable by whoever may read the
    cache folder (mkdtemp makes it private)."""
    with open(staging / "index.json", "w") as f:
        f.write(json.dumps(meta))
    for written in staging.iterdir():
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        staging.rename(target)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(staging, ignore_errors=True)


def _build(source: ImageSource, size: int, target: Path, workers: int, show_progress: bool, bands: Bands) -> None:
    """Decode `source` into `target` (written to a temporary folder, then renamed into place)."""
    names, skipped, grayscale_rows, sides, notes = [], [], [], [], {}
    digest = hashlib.sha256()  # hashed as written: no second pass over a cache of many GB
    with building(target) as staging:
        with (progress_bar(len(source.names), f"decoding {source.describe()}", enabled=show_progress) as bar,
              open(staging / "images.u8", "wb") as pixels):
            parallel = len(source.names) >= 2048
            for name, decoded in decode_stream(source.read(), size, workers, parallel, notes, bands):
                if decoded is None:
                    skipped.append(name)
                else:
                    row = decoded[0].tobytes()
                    pixels.write(row)
                    digest.update(row)
                    if decoded[1]:
                        grayscale_rows.append(len(names))
                    sides.append(decoded[2])
                    names.append(name)
                bar.update(1)
        classes = source.classes
        index = {c: i for i, c in enumerate(classes)}
        meta = {"format": CACHE_FORMAT, "source": source.describe(), "fingerprint": source.fingerprint,
                "size": size, "names": names, "classes": classes, "skipped": skipped,
                "labels": [index[n.split("/", 1)[0]] for n in names] if classes else None,
                "grayscale_rows": grayscale_rows, "median_side": int(np.median(sides)) if sides else None,
                "notes": notes, "pixels_sha256": digest.hexdigest(), "tiff_readers": tiff_readers(),
                "dicom_readers": dicom_readers(), "bands": list(bands) if bands else None}
        publish(staging, target, meta)


def readable_now(meta: dict) -> str:
    """The packages installed since a cache was built that would read more than it did, and what
    ('' where none would): TIFFs it skipped, or of which it read a stack's first page alone (in
    full: a microscope's channels); DICOM files it skipped without pydicom, or without a decoder
    of their compression."""
    notes = {note: names for note, names in meta.get("notes", {}).items() if names}
    reasons = []
    tiff = sorted(set(tiff_readers()) - set(meta.get("tiff_readers", [])))
    if tiff and (TIFF_LAYOUT in notes or FIRST_PAGE in notes):
        reasons.append(f"{' and '.join(tiff)}, which read TIFFs it skipped or read in part")
    dicom = sorted(set(dicom_readers()) - set(meta.get("dicom_readers", [])))
    if dicom and any(note == DICOM_READER or note.startswith(DICOM_CODEC) for note in notes):
        reasons.append(f"{' and '.join(dicom)}, which read DICOM files it skipped")
    return "; ".join(reasons)


def load_cache(source: ImageSource, size: int, cache_dir: str | Path | None = None,
               workers: int = 0, show_progress: bool = True, bands: Bands = None) -> ImageCache:
    """The decoded images of `source` at `size` pixels (of TIFFs, `bands`), built on first use
    and reused after."""
    require_tiff_reader(bands)
    root = cache_folder(cache_dir)
    target = root / _cache_key(source, size, bands)
    return open_built(target, lambda: _build(source, size, target, workers, show_progress, bands), source.describe())


def cache_built(source: ImageSource, size: int, cache_dir: str | Path | None = None, bands: Bands = None) -> bool:
    """Whether `source` at `size` pixels (of TIFFs, `bands`) has a published cache that load_cache
    would read as it is (one that a pretraining run on it left): whole, and not outdated by a
    package installed since (see read_built), where load_cache would decode every image again."""
    target = cache_folder(cache_dir) / _cache_key(source, size, bands)
    try:
        meta = json.loads((target / "index.json").read_text())
        whole = (target / "images.u8").stat().st_size == len(meta["names"]) * meta["size"] ** 2 * 3
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return whole and not readable_now(meta)


class DamagedCache(Exception):
    """A published cache whose files do not agree (a disk that failed, a file cut short by hand)."""


class OutdatedCache(DamagedCache):
    """A cache that skipped TIFFs or DICOM files that a package installed since it was built
    reads (readable_now)."""


def open_built(target: Path, build, description: str, kind: str = "image") -> ImageCache:
    """The cache in `target`, made by `build()` when it is missing, and made again when damaged."""
    if not (target / "index.json").is_file():
        build()
    try:
        cache = read_built(target, description, kind)
        _mark_used(target)
        return cache
    except DamagedCache as e:
        state = "was built without" if isinstance(e, OutdatedCache) else "is damaged"
        warn(f"the {kind} cache {str(target)!r} {state} ({e}); decoding the {kind}s again")
        discarded = target.with_name(f"{_staging_prefix()}{_builder()}-damaged-{target.name}")
        try:
            target.rename(discarded)
        except FileNotFoundError:  # another process found it damaged too, and took it away
            pass
        except OSError as error:
            raise UserError(f"cannot remove the damaged cache {str(target)!r} ({os_reason(error)}); delete it, "
                            f"then run the same command again") from None
        shutil.rmtree(discarded, ignore_errors=True)
        build()
        try:
            return read_built(target, description, kind)
        except DamagedCache as again:
            raise UserError(f"the {kind} cache {str(target)!r} was decoded again and is still damaged ({again}); "
                            f"check the free space and the disk of the cache folder, "
                            f"or set {option('cache_dir')}") from None


def _mark_used(target: Path) -> None:
    """The index's time is the cache's last use, for `selfsup cache --remove-unused-days`."""
    try:
        os.utime(target / "index.json")
    except OSError:  # a cache on a read-only disk: used all the same
        pass


def mark_used(cache: ImageCache) -> None:
    """Say that `cache` is still in use (a run that trains for days calls it at each checkpoint)."""
    filename = getattr(cache.images, "filename", None)  # a memory map knows its file
    if filename:
        _mark_used(Path(filename).parent)


@dataclass
class CacheEntry:
    path: Path
    source: str
    images: int
    size: int  # pixels per side
    bytes: int
    last_used: float  # seconds since the epoch
    bands: list[int] | None = None  # the TIFF bands chosen (--bands), where they were


def list_caches(root: str | Path | None = None) -> list[CacheEntry]:
    """The image and video caches under `root` (default: the cache folder), most recently used
    first. Only folders that hold a cache's index and pixels are counted."""
    root = cache_folder(root)
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        index, pixels = folder / "index.json", folder / "images.u8"
        if folder.name.startswith(".") or folder.is_symlink() or not (index.is_file() and pixels.is_file()):
            continue  # a link is not counted twice, nor its target removed through it
        try:
            meta = json.loads(index.read_text())
            held = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append(CacheEntry(folder, str(meta.get("source", "?")), len(meta.get("names", [])),
                                      int(meta.get("size", 0)), held, index.stat().st_mtime, meta.get("bands")))
        except (OSError, ValueError):
            continue  # being replaced or damaged: the next run that opens it deals with it
    return sorted(entries, key=lambda e: -e.last_used)


class UnfinishedBuild(NamedTuple):
    path: Path
    bytes: int
    dead: bool  # left by a build killed on this machine (see _abandoned); else under way, or another machine's


def unfinished_builds(root: str | Path | None = None) -> list[UnfinishedBuild]:
    """Each cache being built under `root`, or left by a killed build: disk list_caches does not
    count. Only looked at: remove_dead_builds removes the dead ones, as does the next build here."""
    root = cache_folder(root)
    builds = []
    for folder in sorted(root.glob(STAGING + "*")) if root.is_dir() else []:
        try:
            held = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            builds.append(UnfinishedBuild(folder, held, _abandoned(folder)))
        except OSError:  # published or removed meanwhile
            continue
    return builds


def remove_dead_builds(root: str | Path | None = None) -> list[UnfinishedBuild]:
    """Remove the build folders under `root` left by builds killed on this machine; returns them."""
    dead = [build for build in unfinished_builds(root) if build.dead]
    for build in dead:
        shutil.rmtree(build.path, ignore_errors=True)
    return [build for build in dead if not build.path.exists()]


def remove_unused_caches(root: str | Path | None, days: float) -> list[CacheEntry]:
    """Remove the caches no run has opened or checkpointed with for `days` days, with the
    features and label subsets computed from them (named after the cache, in features/ and
    subsets/), and builds abandoned on this machine; returns the caches removed. A run that needs
    one again decodes its images again."""
    root = cache_folder(root)
    remove_dead_builds(root)
    cutoff = time.time() - days * 86400
    removed = []
    for entry in list_caches(root):
        if entry.last_used < cutoff:
            shutil.rmtree(entry.path, ignore_errors=True)
            if entry.path.exists():  # e.g. NFS keeps files a process still has open
                warn(f"could not remove all of {str(entry.path)!r} (a file still open?); try again later")
            else:
                removed.append(entry)
                for folder in ("features", "subsets"):  # a ViT-B's features of ImageNet: 4 GB per encoder
                    for derived in root.glob(f"{folder}/{entry.path.name}-*"):
                        derived.unlink(missing_ok=True)
    for folder in ("features", "subsets"):  # what a write killed midway left (.NAME.PID.*.tmp): GBs of features
        for left in root.glob(f"{folder}/.*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # another process's clean-up or rename came first
                if left.stat().st_mtime < cutoff:
                    left.unlink(missing_ok=True)
    return removed


def read_built(target: Path, description: str, kind: str = "image") -> ImageCache:
    """The cache written in `target` (images.u8 and index.json), memory-mapped, named by
    `description`: the data as this caller names it, not as whoever built the cache did (a cache
    is keyed by content, so a relative and an absolute path share one)."""
    try:
        meta = json.loads((target / "index.json").read_text())
        names, size = meta["names"], meta["size"]
        files = meta.get("files", len(names) + len(meta["skipped"]))  # a video file holds many rows
        expected, held = len(names) * size * size * 3, (target / "images.u8").stat().st_size
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise DamagedCache(f"its index cannot be read: {type(e).__name__}") from None
    if held != expected:
        raise DamagedCache(f"images.u8 holds {held:,} bytes where its index says {expected:,}")
    newly_readable = readable_now(meta)
    if newly_readable:
        raise OutdatedCache(newly_readable)
    if names:  # else the error below says it all
        warn_skipped(meta["skipped"], files, description, kind, meta.get("notes"))
    if not names:
        raise UserError(f"none of the {len(meta['skipped']):,} {kind} files in {description!r} "
                        f"could be decoded; {what_to_do(meta.get('notes') or {}, kind)}")
    images = np.memmap(target / "images.u8", dtype=np.uint8, mode="r", shape=(len(names), size, size, 3))
    labels = np.asarray(meta["labels"], dtype=np.int64) if meta["labels"] is not None else None
    return ImageCache(images=images, names=names, labels=labels, classes=meta["classes"],
                      skipped=meta["skipped"], grayscale_rows=np.asarray(meta["grayscale_rows"], dtype=np.int64),
                      source=description, median_side=meta["median_side"], pixels_sha256=meta.get("pixels_sha256"))


def open_images(path: str | Path, size: int, split: str | None = None, cache_dir=None,
                workers: int = 0, show_progress: bool = True, bands: Bands = None) -> ImageCache:
    """Shortcut: list the images under `path` and load (or build) their cache. A folder (or tar)
    of video files gives the frames of its videos, so that any image method trains on them."""
    from .sources import open_source
    try:
        source = open_source(path, split)
    except UserError as e:
        from .video import has_videos, open_clips
        if split is None and "no images found" in str(e) and has_videos(Path(path).expanduser()):
            return open_clips(path, size, cache_dir, workers, show_progress, motion=False)
        raise
    return load_cache(source, size, cache_dir, workers, show_progress, bands)
