"""Frozen features: the encoder applied once to every image, in eval mode, without gradients,
and kept on disk beside the image cache so that the next evaluation of the same encoder on the
same data reads them instead of running the encoder again."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..console import option, plural, progress_bar, warn
from ..data import ImageCache
from ..data.cache import cache_folder, cache_remedy
from ..errors import UserError
from ..outputs import atomic_path, os_reason, save_npy
from ..views import eval_view


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, image_size: int, device: torch.device,
                     indices: np.ndarray | None = None, batch_size: int = 256,
                     show_progress: bool = False, desc: str = "features", bar=None) -> torch.Tensor:
    """(N, D) float32 features on the CPU of `images[indices]` ((N, S, S, 3) uint8), each centre-
    cropped to `image_size`. The encoder is put in eval mode and returned to its previous mode.
    `bar`: a caller's open progress bar, advanced a batch at a time, in place of one of its own."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    was_training = encoder.training
    encoder.eval()
    device = torch.device(device)
    bf16 = device.type == "cuda"
    out = []
    own_bar = bar is None
    bar = progress_bar(len(indices), desc, enabled=show_progress) if own_bar else bar
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                features = encoder(eval_view(batch, image_size))
            out.append(features.float().cpu())
            bar.update(len(idx))
    finally:
        if own_bar:
            bar.close()
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(encoder, "feature_dim", 0))


def nonfinite_rows(features: torch.Tensor | np.ndarray) -> int:
    """How many rows of (N, D) `features` (on the CPU) hold a NaN or an infinity. A NaN or an infinity
    makes its row's sum one, so the row sums find the rows to look at, in a pass about as fast as
    reading the features (torch's isfinite over them all: 15 times slower on a CPU, and an (N, D)
    mask); the rows found are looked at whole, a piece at a time (finite values can sum to inf)."""
    features = torch.as_tensor(features)
    suspect = torch.isfinite(features.sum(dim=1)).logical_not().nonzero().flatten()  # (S,) row numbers
    return sum(int(torch.isfinite(features[rows]).all(dim=1).logical_not().sum())
               for rows in suspect.split(1 << 16))


def refuse_nonfinite(features: torch.Tensor | np.ndarray, encoder, embedded: int | None = None) -> None:
    """Refuse (N, D) `features` of `encoder` (an `Encoder`) of which any is NaN or infinite: every
    distance, vote, ranking and cluster drawn from them would be silently wrong. `embedded`: how many
    images were embedded in all, where `features` are the last of several pieces (those before were
    checked). Counted on the CPU copy extract_features returns: no device sync is added."""
    bad = nonfinite_rows(features)
    if bad:
        in_all = len(features) if embedded is None else embedded
        of = plural(in_all, "image") + ("" if in_all == len(features) else " embedded so far")
        raise UserError(f"{encoder.description} gives NaN or infinite features for {bad:,} of {of}; "
                        f"{_nonfinite_remedy(encoder)}")


def _nonfinite_remedy(encoder) -> str:
    if encoder.weights_file_sha256 is not None:
        return "check the weights file for NaN or infinite values"
    if encoder.init_seed is not None:
        return f"draw another seed (random:{encoder.backbone.name}@seed={encoder.init_seed + 1})"
    # The trainer stops a run whose loss is NaN, but a BatchNorm's running statistics can diverge alone.
    if encoder.checkpoint is not None:
        return (f"the checkpoint has diverged (or is damaged): use an earlier checkpoint, or pretrain again with a "
                f"lower learning rate ({option('lr')})")
    return "check the encoder's weights for NaN or infinite values"


# Bump when the way features are computed changes, so old cached features are not reused.
FEATURE_FORMAT = 1


def feature_cache_path(encoder_key: str | None, cache: ImageCache, device: torch.device, cache_dir=None) -> Path | None:
    """Where the features of `cache` under this encoder are kept: keyed by the encoder (its
    weights file, or architecture and seed) and by the image cache, whose folder name is a hash
    of the data's file names, sizes and times and of the decoded size. None: not cacheable (an
    encoder built in Python, or images not from the on-disk cache)."""
    if encoder_key is None or not isinstance(cache.images, np.memmap) or cache.images.filename is None:
        return None
    data_key = Path(cache.images.filename).parent.name
    # bf16 autocast on CUDA gives other features than fp32 on the CPU.
    digest = hashlib.sha256(f"{FEATURE_FORMAT}|{encoder_key}|{data_key}|{device.type}".encode()).hexdigest()[:20]
    root = cache_folder(cache_dir)
    return root / "features" / f"{data_key}-{digest}.npy"


def _load_saved(path: Path) -> np.ndarray | None:
    """The saved features, or None when the file is damaged (cut short, emptied) or not ours (an
    array of objects is never unpickled): then they are computed again and the file replaced."""
    try:
        features = np.load(path)
    except (ValueError, EOFError, OSError):
        return None
    # NaN or infinite: saved before they were refused (see refuse_nonfinite); computed again, and refused
    usable = features.ndim == 2 and features.dtype == np.float32 and not nonfinite_rows(features)
    return features if usable else None


def cached_features(encoder, cache: ImageCache, device: torch.device, cache_dir=None,
                    show_progress: bool = False, desc: str = "features") -> torch.Tensor:
    """(N, D) features of every image of `cache` with `encoder` (an `Encoder`), computed once and
    then read from disk (written atomically, so a killed run leaves no half file)."""
    device = torch.device(device)
    path = feature_cache_path(encoder.key, cache, device, cache_dir)
    if path is not None and path.is_file():
        features = _load_saved(path)
        if features is not None and features.shape[0] == len(cache):
            return torch.from_numpy(features)
    features = extract_features(encoder.backbone.to(device), cache.images, encoder.image_size, device,
                                show_progress=show_progress, desc=desc)
    refuse_nonfinite(features, encoder)  # before they are kept: the next evaluation would read them
    if path is not None:
        try:  # the features are computed: a cache that cannot keep them (a full disk) costs time next time, no more
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, cache_remedy()) as tmp:
                save_npy(tmp, features.numpy())
        except (OSError, UserError) as e:
            warn(f"the features are not kept for the next evaluation: {e if isinstance(e, UserError) else os_reason(e)}")
    return features
