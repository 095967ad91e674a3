"""What every evaluation starts from: an encoder, training and test images, and their features.

`prepare` turns an encoder spec (a checkpoint or run folder, `random:BACKBONE`, or
`weights:FILE` with `backbone=`) and labelled data (`train` and `test` folders laid out by class,
or tars of them, or `data`, one root holding train/ and test/) into a `Setup`. Features are
computed once per (encoder, data) and cached on disk (see `features.cached_features`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..console import named_option, option, plural, said_as, warn
from ..data import ImageCache, load_cache, open_source, open_splits
from ..encoder import Encoder, load_encoder
from ..errors import UserError, nearest
from .features import cached_features


def _open(source, size: int, cache_dir, show_progress: bool, labels_required: bool, bands=None) -> ImageCache:
    if labels_required and not source.classes:  # before decoding anything
        raise UserError(f"{source.describe()!r} has no class labels: {source.why_no_classes()}; evaluation "
                        f"needs a folder with one subfolder per class (or a tar of one)")
    return load_cache(source, size, cache_dir, show_progress=show_progress, bands=bands)


def labelled_sources(train=None, test=None, data=None) -> tuple:
    """(train, test) ImageSources of --train/--test or --data, named by absolute paths (the
    `train_data`, `test_data` of results, which the report compares). Each path is listed once, so
    that what cannot be used in it is said once."""
    train, test, data = (None if p is None else os.path.abspath(os.path.expanduser(str(p)))
                         for p in (train, test, data))
    if data is not None:
        if train is not None or test is not None:
            raise UserError(f"give either {option('data')} (a folder holding train/ and test/) "
                            f"or {option('train')} and {option('test')}, not both")
        split = train_and_test(data)
        if split is None:
            raise UserError(f"{str(data)!r} must hold train/ and test/ (or val/) folders; "
                            f"or give {option('train')} and {option('test')} separately")
        return split
    if train is None or test is None:
        raise UserError(f"give labelled data: {said_as('--train PATH', 'train=PATH')} and "
                        f"{said_as('--test PATH', 'test=PATH')}, or {said_as('--data PATH', 'data=PATH')} holding "
                        f"train/ and test/")
    return open_source(train), open_source(test, prefer="test")  # a root given as --test: its test/


def train_and_test(root) -> tuple | None:
    """The (train, test) ImageSources of a dataset root holding train/ and test/ (or val/ as the
    test split); None for any other layout."""
    splits = open_splits(root)
    test_split = "test" if "test" in splits else "val"
    if "train" not in splits or test_split not in splits:
        return None
    return splits["train"], splits[test_split]


def open_labelled(size: int, train=None, test=None, data=None, cache_dir=None, show_progress: bool = True,
                  labels_required: bool = True, bands=None,
                  sources: tuple | None = None) -> tuple[ImageCache, ImageCache]:
    """(train, test) image caches (of TIFFs, `bands`), checked to have the same classes; `sources`:
    those of labelled_sources, when listed already."""
    train_source, test_source = sources or labelled_sources(train, test, data)
    train_cache = _open(train_source, size, cache_dir, show_progress, labels_required, bands)
    test_cache = _open(test_source, size, cache_dir, show_progress, labels_required, bands)
    if train_cache.labels is None or test_cache.labels is None:
        return train_cache, test_cache
    train_cache, test_cache = _drop_unreadable_classes(train_cache, test_cache)
    if train_cache.classes != test_cache.classes:
        only_train = sorted(set(train_cache.classes) - set(test_cache.classes))
        only_test = sorted(set(test_cache.classes) - set(train_cache.classes))
        raise UserError(f"train and test classes differ: only in train: {only_train or 'none'}; "
                        f"only in test: {only_test or 'none'}; give both the same class folders")
    if len(train_cache.classes) < 2:
        raise UserError(f"only class {train_cache.classes[0]!r} has images that can be decoded; evaluation needs "
                        f"at least 2 classes")
    if train_cache.pixels_sha256 is not None and train_cache.pixels_sha256 == test_cache.pixels_sha256:
        # kNN finds each test image itself among its neighbours; a probe is scored on what it was fitted to
        warn(f"the test images are the training images ({test_cache.source}): the figures say how well the "
             f"encoder recalls images it is shown, not how it does on new ones; give test images that are not "
             f"among the training ones (a {named_option('data')} root holding train/ and test/)", once=True)
    return train_cache, test_cache


def _readable(cache: ImageCache) -> set[str]:
    """The classes of `cache` with at least one decoded image."""
    return {cache.classes[i] for i in np.unique(cache.labels)}


def _unreadable_files(cache: ImageCache, name: str) -> int:
    return sum(skipped.split("/", 1)[0] == name for skipped in cache.skipped)


def _drop_unreadable_classes(train: ImageCache, test: ImageCache) -> tuple[ImageCache, ImageCache]:
    """A class folder none of whose files decode is no class: it is left out with one warning, as
    if its folders were absent (labels renumbered by name, so train and test still agree). Where
    the other split holds images of it, it is refused: they could never be predicted (or tested)."""
    readable = {"train": _readable(train), "test": _readable(test)}
    for split, cache in (("train", train), ("test", test)):
        other = "test" if split == "train" else "train"
        for name in sorted(set(cache.classes) - readable[split]):
            if name in readable[other]:
                raise UserError(f"class {name!r} has no {split} image that can be decoded (its "
                                f"{plural(_unreadable_files(cache, name), 'file')} failed) but has {other} images; "
                                f"replace those files, or remove its folder from both {split} and {other}")
    dropped = sorted(set(train.classes + test.classes) - readable["train"] - readable["test"])
    if dropped:
        warn(f"{plural(len(dropped), 'class', 'classes')} left out, none of whose files could be decoded: "
             f"{', '.join(map(repr, dropped))}", once=True)
    return _keep_classes(train, readable["train"]), _keep_classes(test, readable["test"])


def _keep_classes(cache: ImageCache, kept: set[str]) -> ImageCache:
    """`cache` with only the `kept` classes (each of which has images), its labels renumbered."""
    if len(kept) == len(cache.classes):
        return cache
    classes = sorted(kept)
    new_index = np.array([classes.index(c) if c in kept else -1 for c in cache.classes], dtype=np.int64)
    return replace(cache, classes=classes, labels=new_index[cache.labels])


@dataclass
class Setup:
    spec: str  # how the encoder was named (for records), or a description of an Encoder object
    encoder: Encoder
    train: ImageCache
    test: ImageCache
    device: torch.device
    cache_dir: str | Path | None = None
    show_progress: bool = True
    sources: tuple | None = field(default=None, repr=False)  # labelled_sources' (train, test), listed once
    _features: tuple | None = field(default=None, repr=False)

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None and self.test.labels is not None

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) features, (N, D) float32 on the CPU, computed or read once."""
        if self._features is None:
            self._features = tuple(cached_features(self.encoder, cache, self.device, self.cache_dir,
                                                   self.show_progress, f"{name} features")
                                   for name, cache in (("train", self.train), ("test", self.test)))
        return self._features


def _warn_if_pretrained_on(test: ImageCache, encoder: Encoder, spec: str) -> None:
    """A run pretrained on the test images has seen them (without labels): said, since its
    figures then are not of unseen images, unlike those of runs pretrained on the training split.
    Known by the pixels' digests: equal only for the same images decoded at the same size."""
    from .record import pretrain_pixels_sha256

    pretrained = pretrain_pixels_sha256(encoder)
    if pretrained is not None and pretrained == test.pixels_sha256:
        warn(f"{spec} was pretrained on the test images ({test.source}): its figures are not of images it has "
             f"not seen; pretrain on the training images (a {named_option('data')} root holding train/ uses "
             f"train/ alone)")


def check_options(caller: str, options: dict) -> None:
    """Refuse, naming the public function, keyword arguments that `prepare` does not take."""
    import inspect

    own = ("checkpoint", "train", "test", "data", "labels_required")  # the protocols' own arguments
    valid = [name for name in inspect.signature(prepare).parameters if name not in own]
    for name in options:
        if name not in valid:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{nearest(name, valid)}; "
                            f"besides its own, it takes {', '.join(valid)}")


def prepare(checkpoint, train=None, test=None, data=None, device: str = "auto", image_size: int | None = None,
            small_stem: bool | None = None, backbone: str | None = None, cache_dir=None,
            show_progress: bool = True, labels_required: bool = True, check_encoder=None, bands=None,
            sources: tuple | None = None) -> Setup:
    """The encoder and the data of an evaluation (`image_size`, `small_stem`: for random: and
    weights: encoders; `backbone`: the architecture of a weights: file; `bands`: the TIFF bands
    shown to it, by default those it was trained on; `sources`: labelled_sources' of the data, when
    listed already). `check_encoder(encoder)` may refuse it before any image is read."""
    from ..train import resolve_device

    # Listed after the encoder is known good, but for a random: one, which takes their size
    if isinstance(checkpoint, Encoder):
        encoder, spec = checkpoint, checkpoint.description
    else:
        spec = str(checkpoint)
        if spec.startswith("random:") and image_size is None and sources is None:
            sources = labelled_sources(train, test, data)
        encoder = load_encoder(checkpoint, image_size, small_stem, backbone=backbone, bands=bands,
                               images=sources and sources[0])
    if check_encoder is not None:
        check_encoder(encoder)
    device = resolve_device(device)
    sources = sources or labelled_sources(train, test, data)
    train_cache, test_cache = open_labelled(encoder.cache_size, train, test, data, cache_dir, show_progress,
                                            labels_required, encoder.bands, sources)
    _warn_if_pretrained_on(test_cache, encoder, spec)
    side, size = train_cache.median_side, encoder.image_size
    if image_size is None and spec.startswith(("random:", "weights:")) and side and 2 * side <= size:
        # Weights made at 224 px (or a timm: model's own size): enlarged 7x, the images cost 49 times the
        # compute of their own size, and the encoder sees more pixels than runs trained at that size.
        # random: of selfsup's backbones takes the images' size, unless their headers do not tell it (DICOM)
        which = "its own size" if spec.startswith(("weights:", "random:timm:")) else "the default size"
        warn(f"{spec} is evaluated at {size} px, {which}, while the images are mostly {side} px on their "
             f"shorter side: enlarged {size / side:.0f}x, at {(size / side) ** 2:.0f}x the compute; pass "
             f"{option('image_size', side)} to evaluate it as runs trained at {side} px are")
    return Setup(spec, encoder, train_cache, test_cache, device, cache_dir, show_progress, sources)
