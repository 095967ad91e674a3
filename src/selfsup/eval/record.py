"""Evaluation results kept with the run they evaluate: RUN_DIR/evals.jsonl.

An evaluation of a checkpoint that sits in its run folder (beside config.yaml) appends its
result, one JSON object per line, with the time, the data it used, the checkpoint's identity
(its file's SHA-256 and position) and where it was made (`provenance`); `selfsup report` reads
them back. Encoders that are not runs (random:, weights:) are not recorded.
"""
from __future__ import annotations

import hashlib
import re
import time
from functools import lru_cache
from pathlib import Path

import torch

from ..console import said_as, warn
from ..outputs import append_json_line, os_reason, read_json_lines

EVALS_FILE = "evals.jsonl"


def run_folder(spec: str) -> Path | None:
    """The run folder of a checkpoint spec, or None when it does not name one."""
    if spec.startswith(("random:", "weights:")):
        return None
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.yaml").is_file() else None


def data_name(source: str) -> str:
    """One name per set of images: a folder's split ("/d/small [test]", from --data) is named as
    the folder it is ("/d/small/test", from --test), so the report puts both in one column. A
    split inside a tar keeps its bracket."""
    from ..data.sources import SPLIT_NAMES, is_tar_path

    match = re.fullmatch(r"(.*) \[([^\]/]+)\]", source)  # "scans [2019]" is a folder's own name
    if match is None or match[2] not in SPLIT_NAMES or is_tar_path(Path(match[1])):
        return source
    return f"{match[1]}/{match[2]}"


def data_digests(setup) -> dict:
    """The SHA-256 of the decoded pixels of the training and test images (None: a cache built
    before it was kept), which change when any image does, whatever its name, size or time."""
    return {"train_pixels_sha256": setup.train.pixels_sha256, "test_pixels_sha256": setup.test.pixels_sha256}


def checkpoint_identity(encoder) -> dict:
    """The evaluated checkpoint, for a record: its file's SHA-256 (what tells it from a later
    last.pt of the same run; a copied run keeps it, unlike a modification time) and its position
    (epoch, batch, step), which the report shows, and the pixels' SHA-256 of the images it was
    pretrained on. A random: baseline's seed and weights' SHA-256 (which also change with the
    torch or timm that drew them); a weights: baseline's file's SHA-256 (the same file under any
    name, and not a file replaced under the same name). Each holds the SHA-256 of the weights
    evaluated, so a run's exported encoder, evaluated as weights:FILE, matches its checkpoint."""
    if encoder.init_seed is not None:
        return {"init_seed": encoder.init_seed, "encoder_weights_sha256": weights_sha256(encoder.backbone)}
    if encoder.weights_file_sha256 is not None:
        return {"weights_file_sha256": encoder.weights_file_sha256,
                "encoder_weights_sha256": weights_sha256(encoder.backbone)}
    if encoder.checkpoint is None:
        return {}
    return {"checkpoint_sha256": encoder.checkpoint["sha256"], "checkpoint_position": encoder.checkpoint["position"],
            "encoder_weights_sha256": weights_sha256(encoder.backbone),
            "pretrain_pixels_sha256": pretrain_pixels_sha256(encoder)}


def pretrain_pixels_sha256(encoder) -> str | None:
    """The SHA-256 of the decoded pixels the checkpoint was pretrained on (None: not a checkpoint,
    or one written before it was kept)."""
    return ((encoder.checkpoint or {}).get("data") or {}).get("pixels_sha256")


def weights_sha256(network) -> str:
    """The SHA-256 of a network's weights and buffers (names, types, shapes, values): the same
    for two runs that trained the same weights, whose checkpoints differ in what else they hold
    (their run folder, the optimizer's state)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{values.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())  # bytes, so bfloat16 is hashed as stored
    return digest.hexdigest()


def bands_shown(encoder) -> dict:
    """The TIFF bands the encoder was shown (--bands), for a record; {} for the default, the first three."""
    return {"bands": list(encoder.bands)} if encoder.bands else {}


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    from ..checkpoint import file_sha256
    return file_sha256(path)


def current_checkpoint_sha256(run_dir: str | Path) -> str | None:
    """The SHA-256 of the run's last.pt now (None: none), hashed once per file version."""
    path = Path(run_dir) / "last.pt"
    try:
        st = path.stat()
    except OSError:
        return None
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


def is_current(record: dict, current_sha256: str | None) -> bool:
    """Whether a record evaluated the run's last.pt as it is now; records made before the
    checkpoint's digest was kept, and runs whose last.pt is gone (removed to save space), cannot
    tell, and count as current."""
    saved = record.get("checkpoint_sha256")
    return saved is None or current_sha256 is None or saved == current_sha256


def record_result(spec: str, result: dict, device=None) -> Path | None:
    """Append `result` to the run's evals.jsonl, with its provenance; returns the file (None: not a run)."""
    from ..provenance import provenance

    folder = run_folder(spec)
    if folder is None:
        return None
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": spec, **result,
            "provenance": provenance(device)}
    path = folder / EVALS_FILE
    try:
        append_json_line(path, line)
    except OSError as e:  # a run folder shared read-only: the result is still reported
        warn(f"could not add the result to {str(path)!r} ({os_reason(e)}); `selfsup report` will not show it "
             f"({said_as('--no-record', 'record=False')} skips this)")
        return None
    return path


def read_evals(run_dir: str | Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / EVALS_FILE)
