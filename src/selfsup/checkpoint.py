"""Checkpoints: written atomically, read without unpickling anything but tensors and plain data.

A checkpoint is a dict saved with torch.save and loaded with `weights_only=True`, so a file
from elsewhere cannot run code. It is written to a temporary file in the same folder, flushed
to disk, then renamed over the old one: a run killed at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .console import named_option, option, said_as
from .errors import UserError
from .outputs import NO_ROOM, current_umask, os_reason

FORMAT = "selfsup-checkpoint"
# What torch.load(weights_only=True) raises on a file that is not a plain PyTorch save of tensors.
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
               AttributeError, TypeError, KeyError, IndexError, UnicodeDecodeError)
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write to {str(path.parent)!r} ({os_reason(e)}); "
                        f"choose a writable {named_option('out')}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _save_reporting_write_errors(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except OSError as e:  # a full disk, most often: the previous checkpoint is still there
        kept = "; the previous checkpoint is kept there" if path.exists() else ""
        free = f"free space in {str(path.parent)!r} or " if e.errno in NO_ROOM else ""
        raise UserError(f"cannot write {str(path)!r} ({os_reason(e)}{kept}); "
                        f"{free}choose a writable {named_option('out')}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_reporting_write_errors(obj: Any, f) -> None:
    """torch.save into `f`; a write that fails raises its OSError (torch turns it into a
    RuntimeError that names only positions in its zip writer)."""
    failures = []

    def write(data) -> int:
        try:
            return f.write(data)
        except OSError as e:
            failures.append(e)
            raise

    try:
        torch.save(obj, SimpleNamespace(write=write, flush=f.flush))  # the two methods torch.save uses
    except RuntimeError:
        if failures:
            raise failures[0] from None
        raise


def save_checkpoint(path: str | Path, **content: Any) -> None:
    save_atomic({"format": FORMAT, "version": VERSION, **content}, path)


def plain_weights_remedy() -> str:
    """How an encoder is given as a plain weights file instead of a checkpoint."""
    return "plain weights: " + said_as("use --checkpoint weights:FILE", "give 'weights:FILE' with backbone=NAME")


def file_sha256(file) -> str:
    """The SHA-256 of a file (a path, or one open for reading in binary), read in pieces: a
    checkpoint may be larger than memory allows twice."""
    if not hasattr(file, "read"):
        with open(file, "rb") as f:
            return file_sha256(f)
    digest = hashlib.sha256()
    while chunk := file.read(1 << 22):
        digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, method: str | None = None, plain_weights: str | None = None,
                    with_sha256: bool = False) -> dict:
    """The checkpoint at `path`, refusing files selfsup did not write (and never unpickling them).
    `plain_weights`: how the caller takes a plain weights file instead ("" where it does not; by
    default as an encoder, `plain_weights_remedy()`).
    `with_sha256`: add "file_sha256", the digest of the very bytes loaded (a run still training
    may replace last.pt between a load and a second read)."""
    path = Path(path).expanduser()
    plain_weights = plain_weights_remedy() if plain_weights is None else plain_weights
    instead = f" ({plain_weights})" if plain_weights else ""
    if path.is_dir():
        if (path / "last.pt").is_file():
            path = path / "last.pt"
        else:
            raise UserError(f"{str(path)!r} is a folder without last.pt; give a checkpoint file written by selfsup pretrain")
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        raise UserError(f"{str(path)!r} is a weights file, not a selfsup checkpoint; give a .pt file written by "
                        f"selfsup pretrain{instead}")
    try:
        with open(path, "rb") as f:  # one open file: a last.pt replaced meanwhile (by rename) is not read
            sha256 = file_sha256(f) if with_sha256 else None
            f.seek(0)
            content = torch.load(f, map_location="cpu", weights_only=True)
    except LOAD_ERRORS:
        raise UserError(f"{str(path)!r} cannot be read as a selfsup checkpoint: it is damaged or cut short, or "
                        f"another kind of file; give a .pt file written by selfsup pretrain{instead}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is a PyTorch file but not a selfsup checkpoint; give a .pt file "
                        f"written by selfsup pretrain{instead}")
    if content.get("version", 0) > VERSION:
        raise UserError(f"{str(path)!r} was written by a newer selfsup (format {content['version']}); upgrade selfsup")
    if method is not None and content.get("method") != method:
        raise UserError(f"checkpoint {str(path)!r} was written by method {content.get('method')!r}, "
                        f"not {method!r}; give a {method} checkpoint or use {option('method', content.get('method'))}")
    if with_sha256:
        content["file_sha256"] = sha256
    return content
