"""Where a result came from: the command, the software versions, the machine and the device.

One small block, written into every evaluation record (RUN_DIR/evals.jsonl) and into a run's
run.json, so that a figure can be traced to what made it without asking anyone.
"""
from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

# Set by `selfsup.cli.main` to the command line it runs; anything else is a call from Python.
COMMAND: list[str] | None = None


def git_commit(start: Path = Path(__file__).resolve().parent) -> str | None:
    """The commit of the selfsup checkout this code runs from (None for an installed wheel), read
    from .git itself: no subprocess, and no git needed on the machine. Only the checkout's own
    root (src/selfsup's parent's parent) is looked at: a wheel installed in a virtual environment
    inside some other repository must not report that repository's commit."""
    checkout = start.parent.parent
    if start.parent.name != "src" or not (checkout / "pyproject.toml").is_file():
        return None
    try:
        git = checkout / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: PATH"
            git = (checkout / git.read_text().split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            return None
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # a detached HEAD is the commit itself
        return _ref_commit(git, head[5:])
    except (OSError, IndexError):
        return None


def _ref_commit(git: Path, ref: str) -> str | None:
    """The commit a branch `ref` names: its file, or its line in packed-refs, in the git folder or
    (a worktree) in the folder it shares with the main checkout."""
    shared = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else None
    for folder in (git, shared) if shared else (git,):
        if (folder / ref).is_file():
            return (folder / ref).read_text().strip()
        packed = folder / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(device=None) -> dict:
    """The block: command line (or "python API"), versions, host, device and selfsup's commit."""
    from . import __version__  # the code that runs, not whatever copy pip installed elsewhere

    # numpy draws the label subsets and Pillow decodes the images: a rerun needs theirs too.
    versions = {"selfsup": __version__, **{name: _version(name) for name in ("torch", "torchvision", "timm", "numpy",
                                                                              "pillow")}}
    return {"command": COMMAND if COMMAND is not None else "python API",
            "versions": {**versions, "python": platform.python_version()}, "host": socket.gethostname(),
            "device": None if device is None else str(device),
            "processes": int(os.environ.get("WORLD_SIZE", "1")),  # torchrun's: a run over 8 GPUs says so
            "git_commit": git_commit()}
