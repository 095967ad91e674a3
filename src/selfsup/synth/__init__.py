"""Synthetic sources of the signals that cannot be recorded here: clips of a camera moving over
still images with its motor signal (motion.py), and a 2-D physics world in which an agent pushes,
pokes and grasps objects (interaction.py). Both are deterministic under a seed."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..outputs import output_folder


def new_output_folder(out: str | Path) -> Path:
    """`out` created as a folder to write into, refused unless it is new or empty: an earlier run's
    files left there would mix two datasets (a clip rewritten with fewer frames keeps the old extra ones)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} is not empty: give synth a new or empty --out folder, "
                        f"so that files from an earlier run are not mixed into this one")
    return output_folder(out)
