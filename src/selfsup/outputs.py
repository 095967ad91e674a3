"""Where commands write: output folders and files, checked before the work, written atomically.

A command calls `output_folder` or `output_file` on its --out before computing anything, so a
mistyped path costs a second, not the run.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from .console import named_option, option, path_option
from .errors import UserError

NO_ROOM = {errno.ENOSPC, errno.EDQUOT}  # a full disk or quota (EFBIG, a size limit, is not helped by freeing space)


def os_reason(e: OSError) -> str:
    """Why `e` happened, in words: its strerror, else its errno's text, else its message (an
    OSError made by hand, or by a library, may carry no strerror)."""
    return e.strerror or (os.strerror(e.errno) if e.errno else "") or str(e) or type(e).__name__


def cannot_write(what: str, e: OSError, remedy: str) -> UserError:
    """'cannot write WHAT (REASON); REMEDY', where the reason is no room left: 'free space there
    or REMEDY'."""
    return UserError(f"cannot write {what} ({os_reason(e)}); {'free space there or ' if e.errno in NO_ROOM else ''}"
                     f"{remedy}")


def output_folder(path: str | Path) -> Path:
    """`path` as a folder that exists, created with its parents; a UserError when it cannot be."""
    path = Path(path).expanduser()
    if path.is_file():
        raise UserError(f"{str(path)!r} is a file; {option('out')} takes a folder (a new name will do)")
    return _make_folder(path)


def _make_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {str(path)!r} ({os_reason(e)}); "
                        f"choose a writable {named_option('out')}") from None
    return path


def output_file(path: str | Path) -> Path:
    """`path` as a file that can be written: not a folder, its folder created, and a trial file
    written there (os.access trusts permissions that root ignores, and knows nothing of read-only
    or virtual file systems such as /proc). A UserError otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a folder; {option('out')} takes a file name (one inside it will do)")
    folder = _make_folder(path.parent)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as e:
        raise cannot_write(f"in {str(folder)!r}", e, f"choose a writable {named_option('out')}") from None
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, remedy: str | None = None):
    """A temporary path beside `path` to write to; renamed to `path` when the block ends without
    an error, removed otherwise, so a failed or killed write leaves neither half a file nor the
    temporary one behind. A write that fails is a UserError ending with `remedy` (by default,
    choose another --out)."""
    remedy = remedy or f"choose another {named_option('out')}"
    # A fresh name, created here (O_EXCL): a link planted under a predictable name in a folder
    # others can write to (a shared cache) cannot redirect the write.
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise cannot_write(repr(str(path)), e, remedy) from None
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # an ordinary file, whatever the writer chose (safetensors: 0600)
        os.replace(tmp, path)
    except OSError as e:
        raise cannot_write(repr(str(path)), e, remedy) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_npy(path: Path, array) -> None:
    """np.save(path, array), with no .npy added to the name, written through a Python file object:
    numpy's own fwrite to a real file fails with an OSError that has no reason ('N requested and M
    written'), where Python's says which (No space left on device)."""
    import numpy as np

    with open(path, "wb") as f:
        np.save(SimpleNamespace(write=f.write), array)  # not a file to numpy: written in chunks by f.write


def lies_inside(path: str | Path, folder: str | Path) -> bool:
    """`path` is `folder` or lies under it, links and relative spellings resolved."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def refuse_out_inside(out, source, given) -> None:
    """An output folder inside the folder of images read (`given`, a folder, read as `source`, an
    ImageSource) would add its own files (pictures, copies) to them the next time. A tar, a list or
    one image file: nothing grows."""
    if not Path(given).expanduser().is_dir():
        return
    root = (source.path / source.split if source.split else source.path).resolve()
    if lies_inside(out, root):
        raise UserError(f"{path_option('out', str(out))} lies inside the images read from {str(root)!r}: "
                        f"its pictures and "
                        f"copies would become images of them; choose a folder outside")


def named_output(out: str | Path, suffix: str, default_name: str, or_else: str = "") -> Path:
    """The file `--out` names: inside it (`default_name`) when it is a folder or ends in '/';
    else `out` itself, which must end in `suffix`. Without a suffix would be a file name that
    no other tool recognises, and another suffix a file that its readers reject. `or_else`: the
    other suffixes the command takes, for the message ("or .onnx")."""
    text = str(out)
    path = Path(out).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / default_name
    if path.suffix != suffix:
        raise UserError(f"{path_option('out', text)} must end in {suffix}{' ' + or_else if or_else else ''}, or name a "
                        f"folder (end it in '/') to write "
                        f"{default_name} in")
    return path


def write_text_atomically(path: Path, text: str, remedy: str | None = None) -> None:
    """`path` holds `text`, whole, or what it held before (see atomic_path)."""
    with atomic_path(path, remedy) as tmp:
        tmp.write_text(text)


def write_summary(out: Path, summary: dict) -> None:
    """OUT/summary.json: what a command's --json prints, kept beside its outputs (a text file: it
    ends with a newline)."""
    write_text_atomically(out / "summary.json", json.dumps(summary, indent=1) + "\n")


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file (none if it is missing); a line that does not parse (cut
    short by a kill, a full disk or a hand edit) is skipped, the rest kept."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_json_line(path: Path, record: dict) -> None:
    """Add `record` as one line; after a line cut short, on a line of its own (not glued to it)."""
    with open(path, "a+b") as f:  # appends wherever it has read
        size = f.seek(0, os.SEEK_END)
        cut_short = size > 0 and f.seek(size - 1) >= 0 and f.read(1) != b"\n"
        f.write((("\n" if cut_short else "") + json.dumps(record) + "\n").encode())


@contextmanager
def removed_if_left_empty(out: str | Path | None, keep_on: tuple[type[BaseException], ...] = ()):
    """The output folder `out`, and any parents, that the block creates are removed again if it
    fails before writing into them, so a refused start leaves no empty folder behind. A folder
    that existed before, or that holds anything, stays (rmdir refuses a folder with files), and so
    do all on the errors `keep_on` (another process's folder, made at the same moment)."""
    new = []  # folders that do not exist yet, deepest first
    path = Path(out).expanduser().absolute() if out else None
    while path is not None and not path.exists() and path != path.parent:
        new.append(path)
        path = path.parent
    try:
        yield
    except BaseException as e:
        for folder in new if not isinstance(e, keep_on) else ():
            _remove_empty_folders_below(folder)  # e.g. OUT/embeddings/pool-KEY/, made before a refusal
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break  # it holds something: keep it and the folders above
        raise


def _remove_empty_folders_below(folder: Path) -> None:
    """The folders under `folder` that hold nothing, deepest first (files, and their folders, stay)."""
    for below, _, _ in os.walk(folder, topdown=False):
        if Path(below) != folder:
            try:
                os.rmdir(below)
            except OSError:  # it holds something
                pass


def relative_copy_path(name: str) -> PurePosixPath:
    """Where a copy of the image `name` goes inside a folder or a tar's top folder: a relative
    path that stays inside it. A .txt list names its images as given, absolute or ../ paths
    included, and joined as they are those would land on the file they name, or leave a tar that
    selfsup then cannot read. Here each `..` becomes `__up__` and an absolute path's root
    `_root`, and `.` parts are dropped, so that names of different files stay apart. Two names
    can still meet (one file written two ways, 'a/./b' and 'a/b', or a name that itself holds
    `__up__` or `_root`): a caller that needs distinct copies checks."""
    parts = []
    for part in PurePosixPath(name).parts:  # without the '.' and empty parts of 'a/./b' or 'a//b'
        if part.startswith("/"):  # the root: '/' or, kept apart by POSIX, '//'
            parts.append("_root")
        elif part == "..":
            parts.append("__up__")
        else:
            parts.append(part)
    return PurePosixPath(*parts)


def distinct_copy_paths(names: list[str], folder: str, where: str) -> dict[str, str]:
    """{name: FOLDER/relative_copy_path(name)} for each name, one path per name; a UserError when
    two names would meet (one image listed two ways, d.png and ./d.png)."""
    paths, named = {}, {}
    for name in names:
        path = f"{folder}/{relative_copy_path(name)}"
        if named.setdefault(path, name) != name:
            raise UserError(f"the pool names {named[path]!r} and {name!r} would both be {path!r} in {where}; "
                            f"rename one of them, or in a .txt list give it by another path")
        paths[name] = path
    return paths
