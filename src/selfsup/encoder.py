"""Getting an encoder to evaluate, export or embed with: from a checkpoint, or at random.

An encoder spec is the path of a selfsup checkpoint (or a run folder), or `random:BACKBONE` for
that architecture at random initialisation (the baseline every method must beat; drawn with
torch seed 0, `random:BACKBONE@seed=N` with seed N), or `weights:FILE` for a plain
torchvision/timm weights file (see `selfsup.weights`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config as config_lib
from .backbones import Backbone, build_backbone
from .backbones.vit import VITS, check_image_size, default_patch_size
from .checkpoint import load_checkpoint
from .config import BackboneConfig, RunConfig
from .console import option, plural, said_as
from .errors import UserError
from .methods import get_method, restore_method


@dataclass
class Encoder:
    backbone: Backbone
    image_size: int  # the size it was trained at; evaluation centre-crops to it
    cache_size: int  # the square side images are decoded to before the centre crop
    description: str  # for reports: where it came from
    config: RunConfig | None = None  # the training run's config, when there was one
    # Names the weights and how images are prepared, so features can be cached (None: never cached).
    key: str | None = None
    # A checkpoint's identity, for records: {"sha256": of the file, "position": {epoch, batch, step},
    # "data": what it was pretrained on, {images, names_sha256, pixels_sha256} (None: an older run)}.
    checkpoint: dict | None = None
    bands: tuple[int, ...] | None = None  # the TIFF bands it sees as red, green, blue (data.bands)
    init_seed: int | None = None  # a random: encoder's: the torch seed its weights were drawn with
    weights_file_sha256: str | None = None  # a weights: encoder's: the SHA-256 of the file it was loaded from

    def __post_init__(self):
        # For inference, as a user of `load_encoder` calls it: BatchNorm on its running statistics,
        # which a forward pass in training mode would both use the batch's for and update.
        if self.backbone is not None:  # None: a stand-in, for features computed elsewhere
            self.backbone.eval()


def default_cache_size(image_size: int) -> int:
    return image_size if image_size <= 64 else round(image_size * 8 / 7)


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def load_encoder(spec: str | Path, image_size: int | None = None, small_stem: bool | None = None,
                 seed: int | None = None, backbone: str | None = None, bands: tuple[int, ...] | None = None,
                 images=None) -> Encoder:
    """The encoder of a selfsup checkpoint, `random:BACKBONE` at random initialisation (drawn with
    `seed`, or the N of `random:BACKBONE@seed=N`; 0 by default), or `weights:FILE` (a plain state
    dict of `backbone`). `bands`: the TIFF bands it is shown (see DataConfig.bands); by default
    those it was trained on (a checkpoint's, an export's). `images`: the ImageSource it will embed,
    whose size a random: encoder takes without `image_size` (see `random_size`)."""
    spec = str(spec)
    if image_size is None and images is not None and spec.startswith("random:"):
        image_size = random_size(random_spec(spec)[0], images)
    encoder = _load_encoder(spec, image_size, small_stem, seed, backbone)
    if bands and tuple(bands) != encoder.bands:
        shown = ",".join(map(str, bands))  # a list or a tuple: one key
        encoder = dataclasses.replace(encoder, bands=tuple(bands), key=encoder.key and f"{encoder.key}|bands={shown}")
    return encoder


def random_size(backbone: str, images) -> int | None:
    """The image size of a random: encoder from the images it embeds (an ImageSource): `size_for_side`
    of their median shorter side, read from a few headers."""
    from .data.decode import typical_side

    if backbone.startswith("timm:"):
        return None  # its own size, whatever the images: no header is read
    return size_for_side(backbone, typical_side(images))


def size_for_side(backbone: str, side: int | None) -> int | None:
    """The image size of a random: `backbone` for images of median shorter side `side`: that side,
    at most 224 (a ViT's: a multiple of its patch size), the size a run on them would train at; None
    (224) for a timm: model, which may need its own, or images of unknown size."""
    if side is None or backbone.startswith("timm:"):
        return None
    size = max(8, min(side, 224))
    return size - size % default_patch_size(size) if backbone in VITS else size


def random_spec(spec: str) -> tuple[str, int | None]:
    """(backbone, seed or None when not given) of `random:BACKBONE` or `random:BACKBONE@seed=N`.
    The seed sits in the spec, not in a flag, so that one `eval curve` can draw several
    (`random:resnet18@seed=0 random:resnet18@seed=1`) and every command that takes a spec takes it."""
    backbone, at, suffix = spec[len("random:"):].rpartition("@")
    if not at:
        return suffix, None
    given = re.fullmatch(r"seed=([0-9]+)", suffix)
    if given is None or int(given[1]) >= 2**64:  # torch.manual_seed's range
        raise UserError(f"{spec!r}: a random: encoder takes its seed as @seed=N, N a whole number from 0 "
                        f"(below 2**64), e.g. random:{backbone or 'resnet18'}@seed=3")
    return backbone, int(given[1])


def _load_encoder(spec: str, image_size: int | None, small_stem: bool | None, seed: int | None,
                  backbone: str | None) -> Encoder:
    if spec.startswith("weights:"):
        return _from_weights(Path(spec[len("weights:"):]).expanduser(), backbone, image_size, small_stem)
    if spec.startswith("random:"):
        return _random_encoder(spec, image_size, small_stem, seed, backbone)
    checkpoint = load_checkpoint(spec, with_sha256=True)
    cfg = config_lib.from_dict(checkpoint["config"])
    if small_stem is not None and small_stem != bool(cfg.backbone.small_stem):
        flag = option("small_stem", small_stem)
        raise UserError(f"{spec} was trained {'with' if cfg.backbone.small_stem else 'without'} the small stem, "
                        f"which its weights fix; drop {flag} (it is for random: and weights: encoders)")
    epoch = checkpoint.get("position", {}).get("epoch")
    trained = plural(epoch, "epoch") if isinstance(epoch, int) else "? epochs"
    path = Path(spec).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    # Another image size than the training one (transfer to other data): a ViT resamples its
    # positions, so only whole patches are needed.
    size = image_size or cfg.data.image_size
    if size != cfg.data.image_size and cfg.backbone.patch_size:
        check_image_size(size, size, cfg.backbone.patch_size, cfg.backbone.name, other_patch_sizes=False)
    cache_size = cfg.data.cache_size if size == cfg.data.image_size else default_cache_size(size)
    encoder = Encoder(_checkpoint_encoder(cfg, checkpoint["model"]), size, cache_size,
                      f"{cfg.method} {cfg.backbone.name}, {trained} ({spec})", cfg,
                      key=f"checkpoint|{_file_key(path)}" + (f"|{size}px" if size != cfg.data.image_size else ""),
                      checkpoint={"sha256": checkpoint["file_sha256"], "position": checkpoint.get("position"),
                                  "data": checkpoint.get("data")},
                      bands=cfg.data.bands)
    _refuse_other_backbone(spec, encoder.backbone.name, backbone)
    return encoder


def _random_encoder(spec: str, image_size: int | None, small_stem: bool | None, seed: int | None,
                    backbone: str | None) -> Encoder:
    """The backbone drawn with the spec's seed, else `seed` (the Python API's), else 0."""
    name, spec_seed = random_spec(spec)
    if seed is not None and spec_seed is not None and seed != spec_seed:
        raise UserError(f"{spec!r} names seed {spec_seed} and seed={seed} another; give the seed once")
    seed = spec_seed if spec_seed is not None else seed if seed is not None else 0
    _refuse_other_backbone(spec, name, backbone)
    size = image_size or 224
    if name in VITS:  # drawn with the default patch size of its size: no command drawing one takes another
        check_image_size(size, size, default_patch_size(size), name, other_patch_sizes=False)
    stem = small_stem if small_stem is not None else config_lib.default_small_stem(name, size)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        network = build_backbone(BackboneConfig(name=name, small_stem=stem), size)
    import timm

    # Named by the backbone and seed, not the spec as typed: random:resnet18 and random:resnet18@seed=0
    # are one draw, with one name in reports and one feature cache.
    key = f"random:{name}|{size}|{stem}|{seed}|torch {torch.__version__}|timm {timm.__version__}"
    return Encoder(network, size, default_cache_size(size), f"random:{name} (random initialisation, seed {seed})",
                   key=key, init_seed=seed)


def _refuse_other_backbone(spec: str, held: str, backbone: str | None) -> None:
    """`backbone` names the architecture of a weights: file; for any other encoder it must agree."""
    if backbone is not None and backbone != held:
        raise UserError(f"{spec!r} holds a {held}, not a {backbone}; leave out {option('backbone')} "
                        f"(it is for weights:FILE) or give the matching encoder")


def _checkpoint_encoder(cfg: RunConfig, state: dict) -> Backbone:
    module = get_method(cfg.method)
    if hasattr(module, "encoder_from_state"):
        return module.encoder_from_state(cfg, state)
    return restore_method(cfg, state).encoder()


def _from_weights(path: Path, name: str | None, image_size: int | None, small_stem: bool | None) -> Encoder:
    """A backbone holding the weights of a plain weights file (settings from `selfsup export`
    metadata when present; else a 3x3 first convolution implies the small stem)."""
    from .weights import exported_settings, infer_small_stem, load_matching

    state, metadata, sha256, file_key = _read_weights_file(path)
    saved = exported_settings(metadata)
    if name and saved.get("backbone") and name != saved["backbone"]:
        raise UserError(f"{str(path)!r} holds a {saved['backbone']} (written by selfsup export, which records it); "
                        f"drop {option('backbone', name)}")
    name = name or saved.get("backbone")
    if name and name.startswith("split-brain "):  # what `selfsup export` names a colorization encoder
        raise UserError(f"{str(path)!r} holds a colorization encoder, two networks that weights:FILE cannot "
                        f"load; evaluate the checkpoint of its run instead")
    if not name:
        raise UserError(f"say which architecture {str(path)!r} holds with "
                        f"{said_as('--backbone NAME', 'backbone=NAME')} (e.g. resnet50)")
    size = image_size or saved.get("image_size") or 224
    stem = next((s for s in (small_stem, saved.get("small_stem"), infer_small_stem(state)) if s is not None),
                config_lib.default_small_stem(name, size))
    backbone = build_backbone(BackboneConfig(name=name, small_stem=stem, patch_size=saved.get("patch_size")), size)
    load_matching(backbone.net, state, path, name)
    return Encoder(backbone, size, default_cache_size(size), f"{name} weights ({path.name})",
                   key=f"weights|{file_key}|{name}|{size}|{stem}", bands=saved.get("bands"),
                   weights_file_sha256=sha256)


def _read_weights_file(path: Path) -> tuple[dict, dict, str, str]:
    """(state dict, metadata, the file's SHA-256, its key: path, size and time) of a weights file.
    The digest is streamed (a file may be larger than memory holds twice), and a file replaced
    while it was read is refused: its digest would not be of the weights loaded."""
    from .checkpoint import file_sha256
    from .weights import read_weights

    before = _file_key(path) if path.is_file() else None  # a missing file: read_weights says so
    state, metadata = read_weights(path)
    sha256 = file_sha256(path)
    if _file_key(path) != before:
        raise UserError(f"{str(path)!r} changed while it was read; run again once it is written")
    return state, metadata, sha256, before
