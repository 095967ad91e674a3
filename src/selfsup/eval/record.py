"""Evaluation results kept with the run they evaluate: RUN_DIR/evals.jsonl.

An evaluation of a checkpoint that sits in its run folder (beside config.yaml) appends its
result, one JSON object per line, with the time and the data it used; `selfsup report` reads
them back. Encoders that are not runs (random:, weights:) are not recorded.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..console import warn
from ..outputs import append_json_line, read_json_lines

EVALS_FILE = "evals.jsonl"


def run_folder(spec: str) -> Path | None:
    """The run folder of a checkpoint spec, or None when it does not name one."""
    if spec.startswith(("random:", "weights:")):
        return None
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.yaml").is_file() else None


def record_result(spec: str, result: dict) -> Path | None:
    """Append `result` to the run's evals.jsonl; returns the file (None: not a run)."""
    folder = run_folder(spec)
    if folder is None:
        return None
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": spec, **result}
    path = folder / EVALS_FILE
    try:
        append_json_line(path, line)
    except OSError as e:  # a run folder shared read-only: the result is still reported
        warn(f"could not add the result to {str(path)!r} ({e.strerror}); `selfsup report` will not show it "
             f"(--no-record skips this)")
        return None
    return path


def read_evals(run_dir: str | Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / EVALS_FILE)
