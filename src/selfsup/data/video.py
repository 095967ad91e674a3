"""Video → the same uint8 cache as images, with the clip and frame index of every row.

Two layouts are read (a folder, or a .tar/.tar.gz/.tar.xz of one):

- video files (mp4, webm, avi, mkv, mov), decoded once with PyAV (`pip install selfsup[video]`);
  a frame's index is its position in decoding order, from 0;
- folders of frames (`clip/000000.jpg`, `clip/000001.jpg`, ...): every folder that holds images
  directly is one clip; a frame's index is the last number in its file name (else its position).

Clips inside class folders (`CLASS/CLIP.mp4` or `CLASS/CLIP/000000.jpg`) give per-frame labels,
used only to monitor and evaluate. Every frame is resized (shorter side) and centre-cropped into
the memory-mapped cache, so training never decodes video. A video that cannot be decoded is
skipped and counted, as a corrupt image is; so is a frame of a folder, and its clip is then
left out of training (`views.temporal.usable_clips`), since its frames and motion rows no longer match.

Motion signals (optional): `CLIP.csv` beside a clip (beside `CLIP.mp4` or the folder `CLIP/`),
with a header line, a `frame` column holding the clip's frame indices (one row per frame, all of
them) and one numeric column per motor reading, e.g. `frame,yaw,pitch,roll,forward`. Row t
describes the motion from frame t-1 to frame t (rates), so the ego-motion between frames i < j is
the sum of rows i+1..j. `selfsup synth motion` writes such files (see synth/motion.py).
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import shutil
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from ..console import progress_bar, warn
from ..errors import UserError
from .cache import ImageCache, building, cache_folder, load_cache, open_built, publish
from .decode import fit_square
from .sources import (_common_folder, _member_name, _open_tar, _stat_key, _tar_members, _warn_left_out, is_image_name,
                      is_tar_path, is_unnamed_dicom, last_copies, open_source, tar_image_files, walk_folder)

VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mkv", ".mov"}
VIDEO_CACHE_FORMAT = 3  # 2: names in a tar relative to its common folder; 3: grayscale_rows, median_side
FLOAT32_MAX = float(np.finfo(np.float32).max)
SPOOL_BYTES = 16 * 2**20  # a tar's video up to this size is decoded from memory, a larger one from disk


@dataclass
class VideoCache(ImageCache):
    """Decoded frames of many clips; one row per frame."""

    clip: np.ndarray  # (N,) int64: index into clip_names
    frame: np.ndarray  # (N,) int64: the frame's index inside its clip
    clip_names: list[str]  # relative path of each clip (a video file or a folder of frames)
    motion: np.ndarray | None  # (N, M) float32 motor readings per frame (NaN: clip without a CSV)
    motion_columns: list[str]
    incomplete: set[int]  # clips with a frame that could not be decoded
    gapped: set[int] = frozenset()  # frame folders whose frame numbers skip some (frames missing)

    def clip_rows(self) -> list[np.ndarray]:
        """Cache rows of every clip, ordered by frame index."""
        order = np.lexsort((self.frame, self.clip))
        bounds = np.searchsorted(self.clip[order], np.arange(len(self.clip_names) + 1))
        return [order[bounds[c]:bounds[c + 1]] for c in range(len(self.clip_names))]


def is_video_name(name: str) -> bool:
    path = PurePosixPath(name)
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


def open_clips(path: str | Path, size: int, cache_dir=None, workers: int = 0, show_progress: bool = True,
               motion: bool = True, **_) -> VideoCache:
    """The frames of the videos (or frame folders) under `path`, with clip, frame and, with
    `motion`, the motion CSVs (a method that does not use them leaves them unread)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data path {str(path)!r} does not exist; give a folder (or tar) of videos or of frame folders")
    left_out = []  # the files the listing of videos cannot use, said once below
    videos, prefix, fingerprint = _video_listing(path, left_out)
    if videos:
        _warn_left_out(left_out, path)
        _warn_of_frames_beside_videos(path, len(videos))
        frames = _open_videos(path, videos, prefix, fingerprint, size, cache_dir, show_progress)
        clip_of, broken = [n.rsplit("/", 1)[0] for n in frames.names], []  # "CLIP.mp4/000012"
    else:
        # Read as frame folders: their listing says the folders it cannot read; the video files are said here.
        _warn_left_out([(name, why) for name, why in left_out if is_video_name(name)], path)
        source = open_source(path)
        frames = load_cache(source, size, cache_dir, workers, show_progress)
        prefix = source.archive_prefix if not path.is_dir() else (f"{source.split}/" if source.split else "")
        # The folder of every frame, decoded or not (a skipped one leaves its clip incomplete).
        folders = [n.rsplit("/", 1)[0] if "/" in n else "." for n in frames.names + frames.skipped]
        if set(folders) == {"."} and prefix:  # a tar of one clip: its folder was taken as the root
            prefix, _, clip_name = prefix.rstrip("/").rpartition("/")
            prefix, folders = prefix + "/" if prefix else "", [clip_name] * len(folders)
        clip_of, broken = folders[:len(frames.names)], folders[len(frames.names):]
    clip_names = sorted(set(clip_of))
    index = {c: i for i, c in enumerate(clip_names)}
    clip = np.asarray([index[c] for c in clip_of], dtype=np.int64)
    frame, gapped = _frame_indices(frames.names, clip, bool(videos))
    classes = _clip_classes(clip_names)
    labels = None
    if classes:
        class_index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([class_index[clip_names[c].split("/", 1)[0]] for c in clip], dtype=np.int64)
    cache = VideoCache(images=frames.images, names=frames.names, labels=labels, classes=classes,
                       skipped=frames.skipped, grayscale_rows=frames.grayscale_rows, source=frames.source,
                       median_side=frames.median_side,
                       clip=clip, frame=frame, clip_names=clip_names, motion=None, motion_columns=[],
                       incomplete={index[c] for c in broken if c in index}, gapped=gapped)
    if motion:
        _attach_motion(cache, path, prefix)
    return cache


def _warn_of_frames_beside_videos(path: Path, videos: int) -> None:
    """Frame folders are read only where there is no video file: say so when both are there."""
    images = len(_frame_names(path))
    if images:
        warn(f"{str(path)!r} holds {videos:,} video files and {images:,} images; the images (frame folders) are "
             f"left out, since a folder is read as videos when it has any: keep the two kinds in separate "
             f"folders", once=True)


# ---------------------------------------------------------------------------------------------
# Layout


def _clip_classes(clip_names: list[str]) -> list[str]:
    """Class names when every clip sits in a class folder (CLASS/CLIP), else []."""
    tops = {c.split("/", 1)[0] for c in clip_names}
    if len(tops) < 2 or any("/" not in c for c in clip_names):
        return []
    return sorted(tops)


def _frame_indices(names: list[str], clip: np.ndarray, decoded: bool) -> tuple[np.ndarray, set[int]]:
    """(frame index of every row, clips whose numbers skip some: unevenly spaced, where frames
    taken every k-th are evenly). Decoded videos: the number after the clip name. Frame folders:
    the last number in each file name when the frames of the clip all have distinct ones, else the
    position in the clip."""
    if decoded:
        return np.asarray([int(n.rsplit("/", 1)[1]) for n in names], dtype=np.int64), set()
    numbers = [re.findall(r"\d+", PurePosixPath(n).stem) for n in names]
    frame = np.zeros(len(names), dtype=np.int64)
    unnumbered, gapped = [], set()
    for c in np.unique(clip):
        rows = np.flatnonzero(clip == c)  # sorted names: the listing order
        found = [int(numbers[r][-1]) if numbers[r] else None for r in rows]
        if None not in found and len(set(found)) == len(found):
            frame[rows] = found
            if len(set(np.diff(sorted(found)))) > 1:  # uneven steps: a missing frame would join its neighbours
                gapped.add(int(c))
        else:
            frame[rows] = np.arange(len(rows))
            unnumbered.append(names[rows[0]].rpartition("/")[0] or ".")
    if unnumbered:  # e.g. a folder of photos by class, taken for clips by a video method
        warn(f"{len(unnumbered):,} of {len(np.unique(clip)):,} frame folders have frames without distinct numbers "
             f"in their names (e.g. {unnumbered[0]!r}), so their order is the names' order; check that they "
             f"are frames of videos", once=True)
    return frame, gapped


def has_videos(path: Path) -> bool:
    """Whether the folder or tar `path` holds video files."""
    # Quietly: what it cannot use, open_clips says when it lists the folder again.
    return path.exists() and (path.is_dir() or is_tar_path(path)) and bool(_video_listing(path, [])[0])


def _video_listing(path: Path, left_out: list[tuple[str, str]]) -> tuple[list[str], str, str]:
    """(sorted video names relative to `prefix`, `prefix`, fingerprint of the files); `prefix` is
    the folder every member of a tar shares (a tar of DIR holds DIR/...), as for images. Files of a
    folder that cannot be used: added to `left_out`, for the caller to say."""
    digest = hashlib.sha256()
    if path.is_dir():
        return walk_folder(path, is_video_name, digest, left_out), "", digest.hexdigest()
    if is_tar_path(path):
        digest.update(repr(_stat_key(path)).encode())
        videos = [n for n, _ in _tar_members(path) if is_video_name(n)]
        prefix = _common_folder(videos)
        return sorted(n[len(prefix):] for n in videos), prefix, digest.hexdigest()
    raise UserError(f"data path {str(path)!r} is a file, not a folder (or tar) of videos or frame folders")


def typical_frame_side(path: str | Path, sample: int = 16) -> int | None:
    """The median shorter side of the frames of the clips under `path`, as `decode.typical_side` reads
    images': from the headers of a few videos (their streams', no frame decoded) or frames (spread
    over a folder's; a tar's first, read in one pass that stops there); None when none tells it, or
    `path` is not a folder or tar (open_clips says why)."""
    path = Path(path).expanduser()
    if not (path.is_dir() or is_tar_path(path)):
        return None
    videos, prefix, _ = _video_listing(path, [])  # quietly: open_clips says what it cannot use
    if videos:
        names, side_of = videos, _video_side
    else:  # frame folders
        names, prefix, side_of = _frame_names(path), "", _image_side
    if path.is_dir():
        files = [path / prefix / name for name in names[::max(1, len(names) // sample)][:sample]]
        sides = [side_of(file) for file in files]
    else:  # each member read while it is spooled: one at a time in memory, not `sample` whole videos
        with closing(_member_files(path, set(names), prefix)) as members:
            sides = [side_of(file) for _, file in itertools.islice(members, sample)]
    sides = [side for side in sides if side]
    return int(np.median(sides)) if sides else None


def _frame_names(path: Path) -> list[str]:
    """The images of a folder or tar, as open_source finds them (DICOM files without a suffix by
    content); quietly: what cannot be used is said by the listing that reads them (for a folder
    of videos, the listing of videos)."""
    if path.is_dir():
        return walk_folder(path, is_image_name, hashlib.sha256(), [], keep_by_content=is_unnamed_dicom)
    return tar_image_files(path)


def _image_side(file) -> int | None:
    try:
        with Image.open(file) as img:
            return min(img.size)
    except (OSError, ValueError, Image.DecompressionBombError):  # not an image Pillow reads: open_clips says so
        return None


def _video_side(file) -> int | None:
    av = _av()
    try:
        with av.open(_av_input(file), "r") as container:
            stream = container.streams.video[0] if container.streams.video else None
            return min(stream.width, stream.height) if stream is not None and stream.width else None
    except Exception:  # noqa: BLE001 - as decode_video: any failure means "not a video we can use"
        return None


def _member_files(path: Path, wanted: set[str], prefix: str = "", spool_dir: Path | None = None):
    """(name, file) of the wanted files of a folder or a tar, in one pass; names are relative to
    the folder `prefix` inside `path`. A folder's file is its path, read as the reader needs. A tar
    is streamed, so its member cannot seek, as PyAV must (an mp4's index is often at its end): each
    is copied into a temporary file, held in memory up to SPOOL_BYTES, else unnamed in `spool_dir`
    (gone with the process, however it ends), and closed when the next is read."""
    if path.is_dir():
        for name in sorted(wanted):
            if (path / prefix / name).is_file():
                yield name, path / prefix / name
        return
    with _open_tar(path) as tar:
        for member in last_copies(path, tar):
            name = _member_name(member)
            if name.startswith(prefix) and name[len(prefix):] in wanted:
                with tempfile.SpooledTemporaryFile(SPOOL_BYTES, dir=spool_dir) as spool:
                    handle = tar.extractfile(member)
                    if handle:
                        shutil.copyfileobj(handle, spool)
                    spool.seek(0)
                    yield name[len(prefix):], spool


def _read_members(path: Path, wanted: set[str], prefix: str = ""):
    """(name, bytes) of the wanted files of a folder or a tar (small ones: motion CSVs), as _member_files."""
    for name, file in _member_files(path, wanted, prefix):
        yield name, file.read_bytes() if isinstance(file, Path) else file.read()


# ---------------------------------------------------------------------------------------------
# Decoding video files


def _av():
    try:
        import av
    except ImportError:
        raise UserError("reading video files needs PyAV: pip install 'selfsup[video]' "
                        "(or give folders of frames instead)") from None
    return av


def _av_input(file: Path | BinaryIO):
    """What av.open reads `file` from: a path, which PyAV reads as it needs, made absolute, since FFmpeg
    takes the head of a relative one such as `run:1/clip.mp4` for a protocol; else the open file (to
    be opened with mode "r": PyAV takes a file's own mode, a temporary file's "w+b", for writing)."""
    return str(file.absolute()) if isinstance(file, Path) else file


class UndecodableVideo(Exception):
    """A video PyAV cannot decode to its end (not a video, damaged, truncated)."""


def decode_video(file: Path | BinaryIO, size: int) -> Iterator[np.ndarray]:
    """Every frame of the video `file` (a path, or a file that can seek) as (size, size, 3) uint8,
    one at a time as it is decoded: an hour of frames never sits in memory. No frame when it has no
    video stream; UndecodableVideo where decoding fails, perhaps after some frames."""
    av = _av()
    try:
        with av.open(_av_input(file), "r") as container:
            if not container.streams.video:
                return
            for frame in container.decode(container.streams.video[0]):
                yield fit_square(frame.to_image(), size)
    except Exception as e:  # noqa: BLE001 - any failure to decode means "not a video we can use"
        raise UndecodableVideo(str(e)) from e


def _append_video(file: Path | BinaryIO, size: int, pixels: BinaryIO) -> int:
    """Write the frames of the video `file` to the end of `pixels` as they are decoded; how many,
    or 0 where there are none or decoding fails part-way, and then nothing is left written (no part
    of a clip in the cache)."""
    start, written = pixels.tell(), 0
    try:
        for frame in decode_video(file, size):
            pixels.write(frame.tobytes())
            written += 1
    except UndecodableVideo:
        written = 0
    if not written:
        pixels.truncate(start)
        pixels.seek(start)
    return written


def _open_videos(path: Path, videos: list[str], prefix: str, fingerprint: str, size: int, cache_dir,
                 show_progress: bool) -> ImageCache:
    root = cache_folder(cache_dir)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name.split(".")[0])[:40] or "video"
    digest = hashlib.sha256(f"video{VIDEO_CACHE_FORMAT}|{fingerprint}|{size}".encode()).hexdigest()[:16]
    target = root / f"{stem}-video-{size}px-{digest}"
    return open_built(target, lambda: _build_videos(path, videos, prefix, size, target, show_progress), str(path),
                      kind="video")


def _build_videos(path: Path, videos: list[str], prefix: str, size: int, target: Path, show_progress: bool) -> None:
    names, skipped = [], []
    with building(target, "video") as staging:
        with (progress_bar(len(videos), f"decoding videos in {path}", unit="video", enabled=show_progress) as bar,
              open(staging / "images.u8", "wb") as pixels,
              closing(_member_files(path, set(videos), prefix, spool_dir=staging)) as files):
            for name, file in files:
                frames = _append_video(file, size, pixels)
                if frames:
                    names.extend(f"{name}/{i:06d}" for i in range(frames))
                else:
                    skipped.append(name)
                bar.update(1)
        meta = {"format": VIDEO_CACHE_FORMAT, "source": str(path), "size": size, "names": names, "classes": [],
                "labels": None, "skipped": sorted(skipped), "grayscale_rows": [], "median_side": None,
                "files": len(videos)}
        publish(staging, target, meta)


# ---------------------------------------------------------------------------------------------
# Motion signals


def motion_file_of(clip_name: str) -> str:
    """`a/clip.mp4` -> `a/clip.csv`; the frame folder `a/clip` -> `a/clip.csv`."""
    path = PurePosixPath(clip_name)
    return str(path.with_suffix(".csv") if path.suffix.lower() in VIDEO_SUFFIXES else path.parent / (path.name + ".csv"))


def read_motion_csv(text: str, where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(reading columns, (T,) frame indices, (T, M) readings) of one motion CSV."""
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(reader.line_num, r) for r in reader if r and any(cell.strip() for cell in r)]
    except csv.Error as e:
        raise UserError(f"motion file {where} is not a readable CSV ({e}); write plain comma-separated "
                        f"rows: a header 'frame,READING,...', then one row of numbers per frame") from None
    header = rows[0][1] if rows else []
    if len(header) < 2 or header[0].strip().lower() != "frame":
        raise UserError(f"motion file {where} must start with a header 'frame,READING,...' "
                        f"(e.g. frame,yaw,pitch,roll,forward)")
    columns = [c.strip() for c in header[1:]]
    values = []
    for line, row in rows[1:]:
        try:
            numbers = [float(v) for v in row]
        except ValueError:
            numbers = []
        if len(numbers) != len(columns) + 1:
            raise UserError(f"motion file {where} line {line} is not {len(columns) + 1} numbers; "
                            f"write one row per frame: the frame index, then {', '.join(columns)}")
        # Readings are kept as float32, where 1e39 is inf; NaN fails the test too. Any of them would
        # turn the clip's sums and the motion clustering into NaN.
        if not all(abs(v) <= FLOAT32_MAX for v in numbers):
            raise UserError(f"motion file {where} line {line} holds a value that is not a finite number "
                            f"({','.join(row)}); give every frame a measured reading (e.g. interpolate gaps)")
        if numbers[0] != int(numbers[0]):
            raise UserError(f"motion file {where} line {line} gives frame {row[0]}; a frame index is a whole number "
                            f"(0, 1, 2, ... as the clip's frames)")
        values.append(numbers)
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(columns) + 1)
    return columns, values[:, 0].astype(np.int64), values[:, 1:].astype(np.float32)


def _attach_motion(cache: VideoCache, path: Path, prefix: str) -> None:
    """Read CLIP.csv beside each clip into `cache.motion` (checked against the clip's frames);
    `prefix` is the folder inside `path` that clip names are relative to."""
    wanted = {motion_file_of(c): i for i, c in enumerate(cache.clip_names)}
    texts = {name: data.decode("utf-8-sig", errors="replace")  # -sig: spreadsheets write a byte-order mark
             for name, data in _read_members(path, set(wanted), prefix)}
    if not texts:
        return
    rows_of_clip = cache.clip_rows()
    columns_seen, motion = None, None
    for name, text in sorted(texts.items()):
        clip = wanted[name]
        columns, frames, values = read_motion_csv(text, repr(name))
        if columns_seen is None:
            columns_seen, motion = columns, np.full((len(cache), len(columns)), np.nan, dtype=np.float32)
        elif columns != columns_seen:
            raise UserError(f"motion file {name!r} has columns {columns}, other clips {columns_seen}; "
                            f"give every clip the same columns")
        if clip in cache.incomplete or clip in cache.gapped:  # rows cannot match; skipped (and counted) in training
            continue
        rows = rows_of_clip[clip]
        clip_frames = cache.frame[rows]
        if len(frames) != len(clip_frames) or not np.array_equal(np.sort(frames), clip_frames):
            raise UserError(f"motion file {name!r} lists {len(frames)} frames ({_span(frames)}) but clip "
                            f"{cache.clip_names[clip]!r} has {len(clip_frames)} ({_span(clip_frames)}); "
                            f"write one row per frame of the clip")
        motion[rows] = values[np.argsort(frames, kind="stable")]
    cache.motion, cache.motion_columns = motion, columns_seen


def _span(frames: np.ndarray) -> str:
    return f"{int(frames.min())}..{int(frames.max())}" if len(frames) else "none"
