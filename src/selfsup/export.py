"""Export the encoder as plain weights, and embed images with it.

`export_encoder` writes the backbone's state dict as safetensors, with what is needed to rebuild
the model in the file's metadata. The keys are those of the plain torchvision/timm model with
its classifier removed, so no selfsup code is needed to use it (README.md shows how).
`embed_images` writes one L2-normalised feature vector per image to a .npy file and the list of
files, one per line, beside it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import load_cache, open_source
from .encoder import Encoder, load_encoder
from .errors import UserError, output_folder
from .eval.features import extract_features
from .views import IMAGENET_MEAN, IMAGENET_STD


def _writable(path: Path) -> Path:
    path = Path(path).expanduser()
    output_folder(path.parent)
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write to {str(path.parent)!r}; choose a writable --out")
    return path


def export_encoder(checkpoint, out: str | Path) -> dict:
    """Write the encoder's weights to `out` (.safetensors); returns the metadata written."""
    out = _writable(Path(out))
    encoder = checkpoint if isinstance(checkpoint, Encoder) else load_encoder(checkpoint)
    cfg = encoder.config
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.net.state_dict().items()}
    metadata = {
        "format": "selfsup-encoder",
        "backbone": encoder.backbone.name,
        "small_stem": json.dumps(bool(cfg.backbone.small_stem)) if cfg else "null",
        "patch_size": json.dumps(cfg.backbone.patch_size) if cfg else "null",
        "feature_dim": str(encoder.backbone.feature_dim),
        "image_size": str(encoder.image_size),
        "method": cfg.method if cfg else "none",
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
    }
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    return metadata


def load_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of an exported encoder."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def embed_images(checkpoint, data: str | Path, out: str | Path, device: str = "auto", batch_size: int = 256,
                 cache_dir=None, show_progress: bool = True) -> dict:
    """Write (N, D) float32 L2-normalised embeddings to `out` (.npy) and the N file names to
    `out` with suffix .files.txt; images that cannot be decoded are skipped and counted."""
    from .train import resolve_device

    out = _writable(Path(out))
    if out.suffix != ".npy":
        out = out.with_suffix(out.suffix + ".npy") if out.suffix else out.with_suffix(".npy")
    encoder = checkpoint if isinstance(checkpoint, Encoder) else load_encoder(checkpoint)
    device = resolve_device(device)
    cache = load_cache(open_source(data, whole=True), encoder.cache_size, cache_dir, show_progress=show_progress)
    features = extract_features(encoder.backbone.to(device), cache.images, encoder.image_size, device,
                                batch_size=batch_size, show_progress=show_progress, desc="embedding")
    vectors = torch.nn.functional.normalize(features, dim=1).numpy().astype(np.float32)
    np.save(out, vectors)
    names_file = out.with_name(out.stem + ".files.txt")
    names_file.write_text("".join(name + "\n" for name in cache.names))
    return {"embeddings": str(out), "files": str(names_file), "count": len(cache), "dim": vectors.shape[1],
            "skipped": len(cache.skipped)}
