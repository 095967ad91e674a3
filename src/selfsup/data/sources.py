"""Where images come from: a folder searched recursively, a .tar/.tar.gz/.tar.xz of one, or a
.txt file listing image paths one per line (what `selfsup curate` writes).

A source lists its image files in a fixed (sorted) order and yields their bytes. Class labels come
from the first level of subfolders when every image sits inside one (the ImageFolder layout). A
folder (or tar) holding `train/` and `test/` is a dataset with splits: pick one with `split`.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple

from ..console import option as console_option, path_option, plural, warn
from ..errors import UserError
from ..outputs import os_reason
from .dicom import DICOM_MAGIC_AT, is_dicom_start

DICOM_SUFFIXES = (".dcm", ".dicom")  # DICOM, with pydicom (selfsup[dicom]): its first frame
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",  # a GIF: its first frame
                  *DICOM_SUFFIXES}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
SPLIT_NAMES = ("train", "val", "test")
SKIPPED_FOLDERS = {"__MACOSX"}  # the resource forks macOS puts into archives; like hidden folders
# First parts of a .txt list's absolute or ../ names ('/srv/x.jpg' -> ''): no class folders.
NOT_FOLDER_NAMES = frozenset({"", ".", ".."})


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def is_unnamed_dicom(path: Path) -> bool:
    """A file without a suffix that is a DICOM file by its first bytes (a preamble and "DICM", or
    a data set from its first byte, as older software wrote them): scanners and PACS exports name
    their files IM0001 or 1.2.840.113619.2.55... (a UID, whose dots are no suffix). DICOMDIR, the
    index of a DICOM folder, holds no picture."""
    if not may_be_unnamed_dicom(path.name):
        return False
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a pipe would wait for ever to be read
            return False
        with open(path, "rb") as f:
            return is_dicom_start(f.read(DICOM_MAGIC_AT + 4), status.st_size)
    except OSError:
        return False


def may_be_unnamed_dicom(name: str) -> bool:
    """Whether a file of this name (its last part) is looked into for a DICOM file's first bytes."""
    name = name.rpartition("/")[2]
    return not name.startswith(".") and name.upper() != "DICOMDIR" and without_suffix(name)


def may_be_read_as_dicom(name: str) -> bool:
    """Whether a tar's listing looks into a member's first bytes: a file without a suffix may be an
    image by its content, and a link without a suffix to one named as DICOM is an image where what it
    reads is DICOM, as in a folder, where is_unnamed_dicom opens the file the link reads."""
    return without_suffix(name) or suffix_of(name).lower() in DICOM_SUFFIXES


def suffix_of(name: str) -> str:
    """PurePosixPath(name).suffix of a listed file's name, without building a path: the keys of a
    pool look at each of its names (a million)."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return base[dot:] if 0 < dot < len(base) - 1 else ""


def without_suffix(name: str) -> bool:
    """A file name without a file type's suffix: none, or a number (a UID's last part)."""
    suffix = suffix_of(name)
    return suffix == "" or suffix[1:].isdigit()  # "1.2.840.10008.5" ends in a number, not a file type


def is_tar_path(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def is_list_path(path: Path) -> bool:
    return path.suffix.lower() == ".txt"


def _listed_files(path: Path, digest, identities: dict | None = None) -> list[str]:
    """Image paths from a .txt list (absolute, or relative to the list's folder), as given;
    `identities`: as walk_folder's."""
    names, seen, repeated = [], set(), 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{str(path)!r} is not UTF-8 text; a list of images holds one path per line") from None
    for line in text.splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:  # one image, one row: twice, it would be trained on, chosen, counted twice
            repeated += 1
            continue
        seen.add(name)
        full = Path(name) if Path(name).is_absolute() else path.parent / name
        try:
            st = full.stat()
        except OSError:
            raise UserError(f"{str(path)!r} lists {name!r}, which does not exist; fix the list or "
                            f"re-create it") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{str(path)!r} lists {name!r}, which is not a regular file (a device, a pipe or a "
                            f"socket); list image files only")
        names.append(name)
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
        if identities is not None:
            identities[name] = (st.st_dev, st.st_ino)
    if repeated:
        warn(f"{str(path)!r} lists {plural(repeated, 'image')} more than once; each is used once", once=True)
    return names


@dataclass
class ImageSource:
    """The image files of one dataset (or one split of it), in a fixed order."""

    path: Path  # the folder or tar file given by the user
    split: str | None  # "train"/"test"/... inside a dataset with splits, else None
    names: list[str]  # posix paths relative to the split's root, sorted
    fingerprint: str  # changes whenever the files change (names, sizes, mtimes)
    archive_prefix: str = ""  # inside a tar: the folder all members share, plus the split
    one_file: bool = False  # a single image file given by itself: `path` is its folder, `names` its name
    # Inside a tar: {archive name of a link member: archive name of the regular member it reads}.
    tar_links: dict[str, str] = field(default_factory=dict)
    # Opened with identify=True: {listed name: (device, inode)} of a folder's or a list's files.
    file_ids: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names from first-level subfolders; [] when the images are not laid out by class."""
        tops = {n.split("/", 1)[0] for n in self.names}
        # A .txt list's ../x.jpg or /abs/x.jpg: not class folders (and never folders to write into).
        if len(tops) < 2 or any("/" not in n for n in self.names) or tops & NOT_FOLDER_NAMES:
            return []
        return sorted(tops)

    def why_no_classes(self) -> str:
        """Why `classes` is empty, in words a user can act on."""
        loose = [n for n in self.names if "/" not in n]
        if loose and len(loose) < len(self.names):
            return (f"{len(loose)} of its images sit beside the class folders, in none (e.g. {loose[0]!r}); "
                    f"move each into its class folder or remove it")
        tops = {n.split("/", 1)[0] for n in self.names}
        if tops & NOT_FOLDER_NAMES:
            return "its list names images by absolute or ../ paths, which hold no class folders"
        if len(tops) == 1 and not loose:
            return f"it has one class folder ({next(iter(tops))!r}); classes need at least 2"
        return "its images lie in no subfolders"

    @property
    def labels(self) -> list[int] | None:
        classes = self.classes
        if not classes:
            return None
        index = {c: i for i, c in enumerate(classes)}
        return [index[n.split("/", 1)[0]] for n in self.names]

    def describe(self) -> str:
        if self.one_file:  # the file given, not its folder, whose other files were never read
            return str(self.path / self.names[0])
        return str(self.path) + (f" [{self.split}]" if self.split else "")

    def none_decoded(self) -> str:
        """The error when not one of the files decodes, saying what to give instead."""
        if self.one_file:
            return (f"{self.describe()!r} cannot be decoded as an image (damaged, or not an image under an "
                    f"image's name); give an image file that opens in a viewer, or a folder of images")
        return f"none of the {len(self.names):,} files in {self.describe()!r} could be decoded as images"

    def file_path(self, name: str) -> Path | None:
        """Where the image `name` lies on disk (None inside a tar)."""
        if is_tar_path(self.path):
            return None
        if is_list_path(self.path):
            return self.path.parent / name
        return (self.path / self.split if self.split else self.path) / name

    def read(self, names: list[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """(name, file bytes) for every listed image (or only `names`), in listing order for
        folders, archive order for tars (one streaming pass: random access into a compressed tar
        is quadratic)."""
        if not is_tar_path(self.path):
            for name in self.names if names is None else names:
                try:
                    yield name, self.file_path(name).read_bytes()
                except OSError as e:
                    # A file that is gone is not a corrupt image: skipping it would be remembered
                    # (caches, curation chunks) after it is back.
                    gone = self.path if not self.path.exists() else self.file_path(name)
                    if not gone.exists():
                        raise UserError(f"{str(gone)!r} disappeared while reading it; restore it and run the "
                                        f"same command again (finished work is kept)") from None
                    yield name, f"unreadable: {os_reason(e)}".encode()
            return
        readers: dict[str, list[str]] = {}  # archive name of a regular member: the listed names that read it
        for name in self.names if names is None else names:
            readers.setdefault(self.archive_name(name), []).append(name)
        with _open_tar(self.path) as tar:
            for member in last_copies(self.path, tar):
                # A link member is read at its target, before or after it in the archive: one pass.
                if _member_name(member) in readers:
                    handle = tar.extractfile(member)
                    data = handle.read() if handle else b""
                    for name in readers[_member_name(member)]:
                        yield name, data

    def read_order(self) -> list[str]:
        """`names` in the order `read` yields them: as listed for a folder, in archive order for a
        tar (a link member at the place of the member it reads). Work cut in runs of this order
        reads a tar in one pass; runs of `names` would each read it from its start."""
        if not is_tar_path(self.path):
            return list(self.names)
        place: dict[str, int] = {}
        for number, (member, _) in enumerate(_tar_members(self.path)):  # listed when the source was opened
            place.setdefault(member, number)
        return sorted(self.names, key=lambda name: place.get(self.archive_name(name), len(place)))

    def file_id(self, name: str) -> tuple[int, int]:
        """(device, inode) of the file `name` (links followed): what tells one file under two names.
        From the stat that listed it when the source was opened with identify=True; else stat'd now."""
        listed = self.file_ids.get(f"{self.split}/{name}" if self.split else name)
        if listed is not None:
            return listed
        st = self.file_path(name).stat()
        return st.st_dev, st.st_ino

    def archive_name(self, name: str) -> str:
        """Inside a tar: the archive name of the regular member that the image `name` reads."""
        full = self.archive_prefix + name
        return self.tar_links.get(full, full)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{str(path)!r} is not a readable tar archive ({e}); give a folder of images "
                        f"or a .tar/.tar.gz/.tar.xz of one") from None


def _member_name(member: tarfile.TarInfo) -> str:
    return member.name[2:] if member.name.startswith("./") else member.name


def last_copies(path: Path, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The regular members of the open tar at `path`, in archive order, each name's last copy only:
    a file archived again under its name (`tar -r` of a changed file) is extracted as its last
    copy, and listed once (_read_tar_members)."""
    copies_to_come = dict(_tar_listing(path).copies)
    for member in tar:
        if not member.isfile():
            continue
        name = _member_name(member)
        if copies_to_come.get(name, 1) > 1:
            copies_to_come[name] -= 1
            continue
        yield member


class TarListing(NamedTuple):
    """What one pass over a tar tells (_read_tar_members), remembered per (path, size, mtime), since
    listing a compressed tar means decompressing all of it."""
    files: list[tuple[str, int]]  # (name, size) of the regular members, a name archived twice at its last copy
    others: dict[str, str | None]  # members neither files nor folders: the member each links to (None: a device)
    copies: dict[str, int]  # {name: copies} of the names archived more than once
    dicom_starts: frozenset[str]  # names that may_be_read_as_dicom whose (last copy's) content is a DICOM file's


_TAR_LISTINGS: dict[tuple, TarListing] = {}


def _tar_members(path: Path) -> list[tuple[str, int]]:
    """(name, size) of every file in the archive."""
    return _tar_listing(path).files


def _tar_listing(path: Path) -> TarListing:
    key = _stat_key(path)
    if key not in _TAR_LISTINGS:
        _TAR_LISTINGS[key] = _read_tar_members(path)
    return _TAR_LISTINGS[key]


def _read_tar_members(path: Path) -> TarListing:
    """(name, size) of each regular member, a name archived more than once at its last copy; the
    other members' link targets; {name: copies} of the names archived more than once; the members
    without a suffix or named as DICOM that are DICOM files, by their first bytes read in this same
    pass (a second pass would decompress the whole archive again; a link may come before or after the
    member it reads). Other named members are not read: a tar of JPEGs is listed as before."""
    out, others, dicom = [], {}, {}
    try:
        with _open_tar(path) as tar:
            for member in tar:
                if member.isfile():
                    out.append((_member_name(member), member.size))
                    if may_be_read_as_dicom(out[-1][0]):  # a later copy of the name overwrites: tar extracts it
                        dicom[out[-1][0]] = _starts_as_dicom(tar, member)
                elif not member.isdir():
                    others[_member_name(member)] = _link_target(member)
            # A damaged header ends a streamed tar early without an error; after a real end only
            # zero padding follows (reading it also runs the decompressor's own checks).
            while chunk := tar.fileobj.read(1 << 20):
                if chunk.strip(b"\0"):
                    raise tarfile.ReadError(f"its listing stops after {len(out):,} files, before the end")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{str(path)!r} is a damaged tar archive ({e}); re-create it or give a folder") from None
    return TarListing(*_at_last_copies(path, out, others), frozenset(name for name, yes in dicom.items() if yes))


def _starts_as_dicom(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bool:
    """Whether the member being streamed starts as a DICOM file; the stream then skips its rest."""
    handle = tar.extractfile(member)
    return handle is not None and is_dicom_start(handle.read(DICOM_MAGIC_AT + 4), member.size)


def _at_last_copies(path: Path, out: list[tuple[str, int]], others: dict[str, str | None]):
    """`_read_tar_members`' lists with each name archived more than once at its last copy, as tar
    extracts it (said in one warning), where it was listed, read and trained on once per copy."""
    copies: dict[str, int] = {}
    for name, _ in out:
        copies[name] = copies.get(name, 0) + 1
    copies = {name: count for name, count in copies.items() if count > 1}
    if not copies:
        return out, others, copies
    example = next(iter(copies))
    warn(f"{str(path)!r} holds {plural(len(copies), 'file')} archived more than once under one name "
         f"(e.g. {example!r}, {copies[example]} copies, as `tar -r` appends a changed file); each is read "
         f"from its last copy, as tar extracts it", once=True)
    last = {name: number for number, (name, _) in enumerate(out)}
    return [(name, size) for number, (name, size) in enumerate(out) if last[name] == number], others, copies


def _link_target(member: tarfile.TarInfo) -> str | None:
    """The archive name a link member points to (a symbolic link's target is relative to its own
    folder, a hard link's to the archive's root); None for a device or a pipe."""
    if member.issym():
        return posixpath.normpath(posixpath.join(posixpath.dirname(_member_name(member)), member.linkname))
    if member.islnk():
        return member.linkname[2:] if member.linkname.startswith("./") else member.linkname
    return None


def _linked_member(name: str, files: set[str], others: dict[str, str | None]) -> tuple[str | None, str | None]:
    """(the regular member that the member `name`, a link, reads, None), or (None, why it cannot
    be used): what a folder's link would give, where the archive holds its target."""
    seen, target = {name}, others[name]
    while target in others and target not in seen:  # a link to a link
        seen.add(target)
        target = others[target]
    if target is None:
        return None, "it is not a regular file (a device, a pipe or a socket)"
    if target in seen:
        return None, "it is one of a loop of links"
    if target not in files:
        return None, f"it links to {target!r}, which is not a file in the archive"
    return target, None


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _common_folder(names: list[str]) -> str:
    prefix = ""
    parts = [n.split("/") for n in names]
    while parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        prefix += parts[0][0] + "/"
        parts = [p[1:] for p in parts]
    return prefix


def unusable_name(name: str) -> str | None:
    """Why a file name cannot go into the lists, caches and CSV files a run writes, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if "\n" in name or "\r" in name:
        return "its name holds a line break"
    return None


def _skipped_folder(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


def _in_skipped_folder(member: str) -> bool:
    """Whether a tar member's path passes through a folder that a folder's listing skips."""
    return any(_skipped_folder(part) for part in member.split("/")[:-1])


def _warn_left_out(left_out: list[tuple[str, str]], where: Path) -> None:
    if left_out:
        name, why = left_out[0]
        warn(f"left out {plural(len(left_out), 'file or folder', 'files or folders')} under {str(where)!r} that "
             f"cannot be used (e.g. {name!r}: {why}); rename them, mend the links or fix the permissions to include "
             f"them", once=True)


def walk_folder(path: Path, keep, digest, left_out: list[tuple[str, str]] | None = None,
                keep_by_content=None, identities: dict | None = None) -> list[str]:
    """Sorted posix names, relative to `path`, of the files under it whose file name `keep`s, or
    whose content `keep_by_content(file path)` keeps (DICOM files without a suffix; hidden folders
    skipped); each file's name, size, mtime and permissions go into `digest`, so
    that a changed file (or one made readable) changes the fingerprint. Files that cannot be used
    (a dangling link, a name that is not UTF-8, a folder that cannot be read) are left out, said
    in one warning, or, given `left_out`, added to it as (name, why) for the caller to say: a
    folder listed twice (for videos, then for frames) says each file once. Given `identities`, each
    listed file's (device, inode) goes into it by name, from the same stat: `selfsup search`
    needs them, and a second stat of a million files is a second walk's time."""
    listed, seen = [], set()
    say_left_out = left_out is None
    left_out = [] if left_out is None else left_out

    def unreadable_folder(error: OSError) -> None:
        left_out.append((os.path.relpath(error.filename or path, path),
                         f"the folder cannot be read ({os_reason(error)})"))

    for dirpath, dirnames, filenames in os.walk(path, followlinks=True, onerror=unreadable_folder):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already listed: a cycle, or the same files twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _skipped_folder(d))
        for filename in filenames:
            if not keep(filename) and not (keep_by_content and keep_by_content(Path(dirpath) / filename)):
                continue
            full = Path(dirpath) / filename
            rel = full.relative_to(path).as_posix()
            why = unusable_name(rel)
            if why is None:
                try:
                    st = full.stat()
                    if not stat.S_ISREG(st.st_mode):  # a link to /dev/zero reads forever, a FIFO waits forever
                        why = "it is not a regular file (a device, a pipe or a socket)"
                except OSError as e:  # a dangling link, a loop of links
                    why = f"it cannot be opened ({os_reason(e)})"
            if why is not None:
                left_out.append((rel, why))
                continue
            listed.append(rel)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
            if identities is not None:
                identities[rel] = (st.st_dev, st.st_ino)
    if say_left_out:
        _warn_left_out(left_out, path)
    return sorted(listed)


class FolderDigests:
    """walk_folder's digest of a folder's files, and one of each top folder's files named
    relative to it: D/train read on its own then has the fingerprint of D's train split, and the
    same images share one cache."""

    def __init__(self) -> None:
        self.whole, self.tops = hashlib.sha256(), {}

    def update(self, line: bytes) -> None:  # "name\0size\0mtime\0mode\n", the name relative to the folder
        self.whole.update(line)
        top, slash, rest = line.partition(b"/")
        if slash and b"\0" not in top:
            self.tops.setdefault(top.decode(), hashlib.sha256()).update(rest)

    def hexdigests(self) -> dict[str | None, str]:
        return {None: self.whole.hexdigest(), **{top: d.hexdigest() for top, d in self.tops.items()}}


def _listing(path: Path, identities: dict | None = None
             ) -> tuple[list[str], str, dict[str | None, str], dict[str, str]]:
    """(sorted image names, tar prefix, digests of the files, a tar's followed links) for a folder
    or a tar: the digest of all files (None) and, for a folder, of each top folder's; `identities`:
    as walk_folder's, for a folder or a list."""
    if not path.exists():
        raise UserError(f"data path {str(path)!r} does not exist; give a folder of images or a tar of one")
    if path.is_dir():
        digests = FolderDigests()
        return walk_folder(path, is_image_name, digests, keep_by_content=is_unnamed_dicom, identities=identities), "", \
            digests.hexdigests(), {}
    digest = hashlib.sha256()
    if is_list_path(path) and path.is_file():
        return _listed_files(path, digest, identities), "", {None: digest.hexdigest()}, {}
    if is_tar_path(path):
        members, links = _tar_images(path)
        prefix = _common_folder(members)
        digest.update(repr(_stat_key(path)).encode())
        if links:  # the images they add: a cache of the same archive listed without them is not this one
            digest.update(repr(sorted(links.items())).encode())
        if _tar_listing(path).copies:  # a cache built before repeated names were read once held each copy
            digest.update(b"last copies")
        # A cache built before members without a suffix were found by content lacks them.
        if any(may_be_unnamed_dicom(name) for name in _tar_listing(path).dicom_starts):
            digest.update(b"unnamed dicoms")
        return sorted(n[len(prefix):] for n in members), prefix, {None: digest.hexdigest()}, links
    raise UserError(f"data path {str(path)!r} is a file, not a folder of images, a .tar/.tar.gz/.tar.xz "
                    f"or a .txt list of image paths" + (" (put a single image in a folder of its own)"
                                                       if is_image_name(path.name) else ""))


def _tar_images(path: Path) -> tuple[list[str], dict[str, str]]:
    """(the image members of a tar, {link member: the regular member it reads}); links are
    followed as in a folder, and members that cannot be used (a link to nothing or in a loop, a
    device, a name that is not UTF-8) are left out, said in one warning. Members without a suffix
    are images where they are DICOM files by content, as in a folder (is_unnamed_dicom), a link
    where the member it reads is (named as DICOM or not)."""
    listing = _tar_listing(path)
    files, others, dicom = listing.files, listing.others, listing.dicom_starts
    regular = {name for name, _ in files}
    members, links, left_out = [], {}, []
    # A name archived both as a file and as a link (a tar appended to) is listed once, as the file.
    for name in [name for name, _ in files] + [name for name in others if name not in regular]:
        unnamed = not is_image_name(name) and may_be_unnamed_dicom(name)
        if not (is_image_name(name) or unnamed) or _in_skipped_folder(name):
            continue
        why = unusable_name(name)
        if why is None and name in others:
            target, why = _linked_member(name, regular, others)
            if target is not None:
                links[name] = target
        if unnamed and links.get(name, name) not in dicom:  # not a DICOM file, nor one that cannot be read
            links.pop(name, None)
            continue
        if why is None:
            members.append(name)
        else:
            left_out.append((name, why))
    _warn_left_out(left_out, path)
    return members, links


def tar_image_files(path: Path) -> list[str]:
    """The regular members of the tar at `path` that are images: by name, or without a suffix, by
    content (DICOM), outside the folders a listing skips, as _tar_images takes them; links are not
    followed."""
    listing = _tar_listing(path)
    return [name for name, _ in listing.files
            if (is_image_name(name) or (may_be_unnamed_dicom(name) and name in listing.dicom_starts))
            and not _in_skipped_folder(name)]


def splits_in(names: list[str]) -> list[str]:
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if "train" in tops and tops & {"test", "val"} and tops <= set(SPLIT_NAMES):
        return sorted(tops)
    return []


def _make_source(path: Path, split: str | None, names: list[str], prefix: str, digests: dict[str | None, str],
                 tar_links: dict[str, str] | None = None) -> ImageSource:
    if split is not None:
        names = [n[len(split) + 1:] for n in names if n.startswith(split + "/")]
    if not names:
        where = f"{path}/{split}" if split else str(path)
        raise UserError(f"no images found in {where!r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if split in digests:  # a folder's split: the fingerprint of its folder read on its own
        fingerprint = hashlib.sha256(f"{digests[split]}|split=None".encode()).hexdigest()[:20]
    else:
        fingerprint = hashlib.sha256(f"{digests[None]}|split={split}".encode()).hexdigest()[:20]
    return ImageSource(path=path, split=split, names=names, fingerprint=fingerprint,
                       archive_prefix=prefix + (f"{split}/" if split else ""), tar_links=tar_links or {})


def open_source(path: str | Path, split: str | None = None, whole: bool = False,
                identify: bool = False, prefer: str = "train") -> ImageSource:
    """List the images under `path` (a folder or a tar); non-image files are ignored.

    A dataset root holding train/ and test/ (or val/) gives its train/ split unless `split` names
    another (or `prefer` one it holds: eval's --test takes test/), so that test images never leak
    into pretraining by accident; `whole=True` lists
    every image under `path` whatever its layout. `identify=True` keeps each file's (device, inode)
    from the stat that listed it (see ImageSource.file_id).
    """
    path = Path(path).expanduser()
    identities = {} if identify else None
    names, prefix, digests, links = _listing(path, identities)
    splits = [] if whole or is_list_path(path) else splits_in(names)
    if split is None and splits:
        split = prefer if prefer in splits else "train"
    if split is not None and split not in splits:
        raise UserError(f"{str(path)!r} has no {split}/ folder next to train/ and test/ "
                        f"(it holds: {', '.join(sorted({n.split('/', 1)[0] for n in names})[:8])})")
    source = _make_source(path, split, names, prefix, digests, links)
    source.file_ids = identities or {}
    return source


def open_file_or_source(path: str | Path, identify: bool = False) -> ImageSource:
    """`open_source(path, whole=True, identify=identify)`, or, for a single image file, a source of
    that one image."""
    path = Path(path).expanduser()
    if path.is_file() and (is_image_name(path.name) or is_unnamed_dicom(path)):
        digest = hashlib.sha256(repr(_stat_key(path)).encode())
        source = _make_source(path.parent, None, [path.name], "", {None: digest.hexdigest()})
        source.one_file = True
        return source
    if not path.exists():  # one image is as good an answer as a folder here
        raise UserError(f"data path {str(path)!r} does not exist; give an image, a folder of images or a tar of one")
    return open_source(path, whole=True, identify=identify)


def open_splits(path: str | Path) -> dict[str, ImageSource]:
    """Every split of a dataset root holding train/ and test/ (or val/); {} for any other layout."""
    path = Path(path).expanduser()
    names, prefix, digests, links = _listing(path)
    return {split: _make_source(path, split, names, prefix, digests, links) for split in splits_in(names)}


def names_listed_in(path: str | Path, option: str, allow_empty: bool = False,
                    json_lists: tuple[str, ...] = ("train", "val")) -> list[str]:
    """The image names a file lists, for options that name some images of a source (eval's
    --subset, select's --labelled): a CSV with a `file` column (what `selfsup select`, `cluster`
    and `search` write), a JSON label subset as eval saves them (the names of its `json_lists`:
    all its labelled images, training and validation) or a text file of one name per line; each
    name relative to the source's root. `option`: the option's name (subset), named in errors as
    the reader gives it (--subset FILE, subset=FILE)."""
    path = Path(path).expanduser()
    option = path_option(option, path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{option} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{option} cannot be read as text ({e})") from None
    kind = path.suffix.lower()
    if kind == ".json":
        import json
        try:
            subset = json.loads(text)
            names = [name for key in json_lists for name in subset[key]]
            if not all(isinstance(subset[key], list) for key in json_lists):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{option} is not a label subset written by selfsup eval (JSON with a "
                            f"'train' and a 'val' list of file names)") from None
    elif kind == ".csv":
        import csv
        rows = list(csv.reader(text.splitlines()))
        if not rows or "file" not in rows[0]:
            raise UserError(f"{option} has no 'file' column in its first line; give a CSV with a "
                            f"header such as selfsup select's to_label.csv, or a .txt of one name per line")
        column = rows[0].index("file")
        names = [row[column] for row in rows[1:] if len(row) > column and row[column]]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not all(isinstance(n, str) for n in names) or not (names or allow_empty):
        raise UserError(f"{option} lists no file names")
    return names


def labels_listed_in(path: str | Path) -> list[tuple[str, str]] | None:
    """(file, label) of each row of a CSV with a `label` column (a user's own labels, which eval's
    --subset does not use), rows without a label left out; None for any other file."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".csv":
        return None
    import csv
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    header = rows[0] if rows else []
    columns = [column.strip().lower() for column in header]  # "Label", "File" too: a person's own columns
    if "file" not in columns or "label" not in columns:
        return None
    file, label = columns.index("file"), columns.index("label")
    return [(row[file], row[label].strip()) for row in rows[1:] if len(row) > max(file, label) and row[label].strip()]


def _resolved(name: str, row_of: dict[str, int], split: str | None) -> str:
    """`name` as `row_of` (a source's images) holds it, where a listed name differs: a listed name
    may also carry the split's folder (train/cat/1.jpg for cat/1.jpg in a dataset's train/)."""
    if name not in row_of:  # a backslash may be part of a name; else a Windows separator
        name = name.replace("\\", "/").removeprefix("./")
    if name not in row_of and split and name.startswith(split + "/"):
        name = name[len(split) + 1:]
    return name


def row_finder(names: list[str], split: str | None):
    """A function from a listed name to its row in `names` (a source's images), or None."""
    row_of = {n: i for i, n in enumerate(names)}
    return lambda name: row_of.get(_resolved(name, row_of, split))


def rows_of_names(names: list[str], listed: list[str], source: str, split: str | None, option: str) -> list[int]:
    """The rows of `names` (a source's images) that `listed` names, each once, sorted (see _resolved);
    `option`: the name of the option that listed them (subset)."""
    row_of = {n: i for i, n in enumerate(names)}
    rows, unknown = set(), []
    for name in (_resolved(n, row_of, split) for n in listed):
        if name in row_of:
            rows.add(row_of[name])
        else:
            unknown.append(name)
    if unknown:
        raise UserError(f"{console_option(option)} names {plural(len(unknown), 'file')} not among the decoded "
                        f"images of {source}, "
                        f"e.g. {unknown[0]!r}; names are relative to its root, as in {names[0]!r}")
    return sorted(rows)
