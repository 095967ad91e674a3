"""Export the encoder as plain weights, and embed images with it.

`export_encoder` writes the backbone's state dict as safetensors, with what is needed to rebuild
the model in the file's metadata. The keys are those of the plain torchvision/timm model with
its classifier removed, so no selfsup code is needed to use it (README.md shows how). Given an
.onnx file it writes the encoder as an ONNX graph instead, for runtimes without PyTorch.
`embed_images` writes one L2-normalised feature vector per image to a .npy file and the list of
files, one per line, beside it. `--out` may name a folder (one that exists, or a path ending in
'/'): the files are then written inside it under fixed names.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from .console import option, plural, said_as, warn
from .curate.embedding import embed_source, embedding_dir
from .data import load_cache, open_source
from .data.cache import cache_built
from .encoder import Encoder, load_encoder
from .errors import UserError
from .eval.features import extract_features, refuse_nonfinite
from .outputs import atomic_path, named_output, output_file, removed_if_left_empty, save_npy
from .views import IMAGENET_MEAN, IMAGENET_STD

ENCODER_FILE = "encoder.safetensors"  # the name inside an --out folder
EMBEDDINGS_FILE = "embeddings.npy"
EMBED_CHUNK = 4096  # images decoded and embedded between two saves of OUT.parts/: what a killed embed loses


def export_encoder(checkpoint, out: str | Path, image_size: int | None = None,
                   small_stem: bool | None = None, backbone: str | None = None) -> dict:
    """Write the encoder's weights to `out` (a .safetensors file, or a folder to write
    encoder.safetensors in; an .onnx file: see export_onnx); returns the metadata written, and the
    file's path as "out". `image_size`, `small_stem`: for random: and weights: encoders (see
    `exported_encoder`); `backbone`: a weights: file's architecture (a torchvision or timm state
    dict, which export writes with the metadata that rebuilds it)."""
    _refuse_another_size(checkpoint, image_size)
    if str(out).lower().endswith(".onnx") and not Path(out).expanduser().is_dir():
        return export_onnx(checkpoint, out, image_size, small_stem, backbone)
    out = output_file(named_output(out, ".safetensors", ENCODER_FILE, or_else="or .onnx"))
    encoder = exported_encoder(checkpoint, image_size, small_stem, backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.net.state_dict().items()}
    metadata = _metadata(encoder)
    # Serialised here and written by Python: safetensors' own file writing fails with a
    # SafetensorError (a traceback), not an OSError that atomic_path turns into one line.
    serialised = save(state, metadata=metadata)
    with atomic_path(out) as tmp:
        tmp.write_bytes(serialised)
    return {"out": str(out), **metadata}


def exported_encoder(checkpoint, image_size: int | None, small_stem: bool | None,
                     backbone: str | None = None) -> Encoder:
    """The encoder to export: a checkpoint's at its training size, a random: one at `image_size`, a
    weights: file's at `image_size` or the size it was made at. Export has no images to take a
    random: encoder's size from, as eval and embed do: without `image_size` it is drawn at 224 px
    (and its stem follows: the small one up to 64 px), said in a warning, since the size is written
    into the file for whoever loads it."""
    if isinstance(checkpoint, Encoder):
        return checkpoint
    encoder = load_encoder(checkpoint, image_size=image_size, small_stem=small_stem, backbone=backbone)
    spec = str(checkpoint)
    if image_size is None and spec.startswith("random:") and not spec.startswith("random:timm:"):
        warn(f"{spec} is exported at {encoder.image_size} px, the default: export has no images to take its size "
             f"from (eval and embed draw it at theirs); give {said_as('--image-size N', 'image_size=N')} for "
             f"images of another size")
    return encoder


def _refuse_another_size(checkpoint, image_size: int | None) -> None:
    """A checkpoint is exported at its training size, the one its ViT positions are of."""
    spec = str(checkpoint)
    if image_size is not None and not isinstance(checkpoint, Encoder) and not spec.startswith(("random:", "weights:")):
        raise UserError(f"{option('image_size')} is for random: and weights: encoders; {spec} is exported at the size "
                        f"it was trained at: leave it out")


def _metadata(encoder: Encoder) -> dict[str, str]:
    """What rebuilds and feeds the encoder, as text: architecture, image size, normalisation."""
    cfg = encoder.config
    return {
        "format": "selfsup-encoder",
        "backbone": encoder.backbone.name,
        "small_stem": json.dumps(encoder.backbone.small_stem),  # null: no ResNet stem (ViTs, other timm models)
        "patch_size": json.dumps(cfg.backbone.patch_size) if cfg else "null",
        "feature_dim": str(encoder.backbone.feature_dim),
        "image_size": str(encoder.image_size),
        "bands": json.dumps(list(encoder.bands) if encoder.bands else None),  # of TIFFs, as trained
        "method": cfg.method if cfg else "none",
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
    }


_TEXT = {"out", "format", "backbone", "method", "input", "output"}  # the metadata's words; the rest is JSON


def metadata_values(metadata: dict[str, str]) -> dict:
    """export_encoder's metadata with its numbers, booleans and lists as such (for --json): the file
    can hold text only, and whoever reads the JSON should not have to parse it again."""
    return {key: value if key in _TEXT else json.loads(value) for key, value in metadata.items()}


class RGBInput(nn.Module):
    """The backbone, taking RGB in [0, 1] and normalising it as training did: an ONNX graph's
    users need no constants beside it."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)


def export_onnx(checkpoint, out: str | Path, image_size: int | None = None, small_stem: bool | None = None,
                backbone: str | None = None) -> dict:
    """Write the encoder to `out`, an .onnx file: input "images", float32 (N, 3, S, S) RGB in
    [0, 1] for any N, S the image size it was trained at; output "features", (N, D) pooled (not
    L2-normalised); the safetensors metadata in the graph's metadata_props. `image_size`,
    `small_stem`, `backbone`: as export_encoder's."""
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 6):
        raise UserError(f"writing ONNX needs torch 2.6 or newer (its torch.export-based exporter); this is "
                        f"torch {torch.__version__}: upgrade it, or write a .safetensors file")
    try:
        import onnx
        importlib.import_module("onnxscript")  # torch.onnx's exporter needs it
    except ImportError:
        raise UserError("writing ONNX needs the onnx and onnxscript packages: pip install 'selfsup[onnx]' "
                        "(or write a .safetensors file)") from None
    _refuse_another_size(checkpoint, image_size)
    out = output_file(Path(out))
    encoder = exported_encoder(checkpoint, image_size, small_stem, backbone)
    metadata = {**_metadata(encoder), "input": "images: float32 (N, 3, S, S), RGB in [0, 1], normalised inside",
                "output": "features: float32 (N, feature_dim), pooled, not L2-normalised"}
    model = RGBInput(encoder.backbone).cpu().eval()
    example = torch.rand(2, 3, encoder.image_size, encoder.image_size)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                    output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
        graph = program.model_proto
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
    return {"out": str(out), **metadata}


def load_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of an exported encoder."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def embed_images(checkpoint, data: str | Path, out: str | Path, device: str = "auto", batch_size: int = 256,
                 cache_dir=None, show_progress: bool = True, image_size: int | None = None,
                 small_stem: bool | None = None, backbone: str | None = None, bands=None,
                 chunk_size: int = EMBED_CHUNK) -> dict:
    """Write (N, D) float32 L2-normalised embeddings to `out` (a .npy file, or a folder to write
    embeddings.npy in) and the N file names beside it, with suffix .files.txt instead of .npy;
    images that cannot be decoded are skipped and counted. `image_size`, `small_stem`: for random:
    and weights: encoders (a random: one takes the images' size); `backbone`: a weights: file's
    architecture; `bands`: the TIFF bands shown (see load_encoder).

    Where the data has an image cache at the encoder's size (a run pretrained on it), the images
    are read from the cache. Otherwise they are decoded `chunk_size` at a time (a tar read in one
    pass) and never cached: each chunk's vectors are saved in OUT.parts/
    (beside `out`, removed when the embedding is written), from which a killed run resumes."""
    from .train import resolve_device

    if batch_size < 1:
        raise UserError(f"{option('batch_size')} must be at least 1, got {batch_size}")
    out = named_output(out, ".npy", EMBEDDINGS_FILE)
    # The folders made for --out go again when the data or the encoder is refused, or none of the
    # images decodes; a killed run's OUT.parts/ holds its chunks, and stays.
    with removed_if_left_empty(out.parent):
        out, names_file = output_file(out), output_file(out.with_name(out.stem + ".files.txt"))
        source = open_source(data, whole=True)  # before the encoder: a random: one takes the images' size
        encoder = checkpoint if isinstance(checkpoint, Encoder) else load_encoder(
            checkpoint, image_size=image_size, small_stem=small_stem, backbone=backbone, bands=bands, images=source)
        device = resolve_device(device)
        # A run pretrained on the data left its cache: reading it is free. Else the stream, which reads a
        # folder or a tar once, and writes no cache of N x S x S x 3 bytes to disk.
        cached = cache_built(source, encoder.cache_size, cache_dir, encoder.bands)
        parts = None if cached else out.with_name(out.stem + ".parts")
        if parts is None:
            names, vectors, skipped = _embed_cached(encoder, source, device, batch_size, cache_dir, show_progress)
        else:
            with removed_if_left_empty(parts), _resumable(parts):  # none decoded: no empty folder left
                embedded = embed_source(encoder, source, embedding_dir(parts, encoder, source), device, chunk_size,
                                        show_progress=show_progress, batch_size=batch_size)
            names, vectors, skipped = embedded.names, embedded.vectors, embedded.skipped
    with atomic_path(out) as tmp:
        save_npy(tmp, vectors)
    with atomic_path(names_file) as tmp:
        tmp.write_text("".join(name + "\n" for name in names))
    if parts is not None:
        shutil.rmtree(parts, ignore_errors=True)  # written: nothing left to resume
    return {"embeddings": str(out), "files": str(names_file), "count": len(names), "dim": vectors.shape[1],
            "skipped": len(skipped)}


@contextlib.contextmanager
def _resumable(parts: Path):
    """A Ctrl-C says what the chunks saved in `parts` are for: the same call again goes on from them."""
    try:
        yield
    except KeyboardInterrupt:
        done = len(list(parts.glob("*/chunk-*.npz")))
        again = said_as("run the same command again", "call embed_images again with the same arguments")
        raise KeyboardInterrupt(f"{again} to go on from the {plural(done, 'chunk')} of images embedded so far, "
                                f"kept in {str(parts)!r}" if done else f"nothing was saved yet: {again}") from None


def _embed_cached(encoder: Encoder, source, device, batch_size: int, cache_dir, show_progress: bool):
    """(names, (N, D) L2-normalised vectors, skipped) from the source's image cache, in the
    source's order (a tar's cache holds its archive order): the rows embed_source gives."""
    cache = load_cache(source, encoder.cache_size, cache_dir, show_progress=show_progress, bands=encoder.bands)
    position = {name: i for i, name in enumerate(source.names)}
    rows = np.array(sorted(range(len(cache)), key=lambda row: position[cache.names[row]]), dtype=np.int64)
    features = extract_features(encoder.backbone.to(device), cache.images, encoder.image_size, device, indices=rows,
                                batch_size=batch_size, show_progress=show_progress, desc="embedding")
    refuse_nonfinite(features, encoder)
    # features are float32 already: astype without copy=False made a third (N, D) copy
    vectors = torch.nn.functional.normalize(features, dim=1).numpy().astype(np.float32, copy=False)
    return [cache.names[row] for row in rows], vectors, cache.skipped
