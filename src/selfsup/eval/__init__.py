"""Evaluation protocols on frozen features: weighted kNN and the linear probe.

`evaluate_knn` and `evaluate_linear` take an encoder spec (a checkpoint, a run folder or
`random:BACKBONE`) and labelled data: `train` and `test` folders laid out by class (or tars of
them), or `data`, one root holding train/ and test/. They return a dict of fractions in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import ImageCache, load_cache, open_source, open_splits
from ..encoder import Encoder, load_encoder
from ..errors import UserError
from .features import extract_features
from .knn import knn_accuracy
from .linear import linear_accuracy


def _labelled(path: str | Path, split: str | None, size: int, cache_dir, show_progress: bool) -> ImageCache:
    cache = load_cache(open_source(path, split), size, cache_dir, show_progress=show_progress)
    if cache.labels is None:
        raise UserError(f"{cache.source!r} has no class labels; evaluation needs a folder with one "
                        f"subfolder per class (or a tar of one)")
    return cache


def open_labelled(size: int, train=None, test=None, data=None, cache_dir=None,
                  show_progress: bool = True) -> tuple[ImageCache, ImageCache]:
    """(train, test) labelled image caches, checked to have the same classes."""
    if data is not None:
        splits = open_splits(data)
        test_split = "test" if "test" in splits else "val"
        if "train" not in splits or test_split not in splits:
            raise UserError(f"{str(data)!r} must hold train/ and test/ (or val/) folders; "
                            f"or give --train and --test separately")
        train, test, train_split = data, data, "train"
    elif train is None or test is None:
        raise UserError("give labelled data: --train PATH and --test PATH, or --data PATH holding train/ and test/")
    else:
        train_split = None
        test_split = "test" if "test" in open_splits(test) else None
    train_cache = _labelled(train, train_split, size, cache_dir, show_progress)
    test_cache = _labelled(test, test_split, size, cache_dir, show_progress)
    if train_cache.classes != test_cache.classes:
        only_train = sorted(set(train_cache.classes) - set(test_cache.classes))
        only_test = sorted(set(test_cache.classes) - set(train_cache.classes))
        raise UserError(f"train and test classes differ: only in train: {only_train or 'none'}; "
                        f"only in test: {only_test or 'none'}")
    return train_cache, test_cache


def _features(encoder: Encoder, train: ImageCache, test: ImageCache, device, show_progress: bool):
    from ..train import resolve_device

    device = resolve_device(device)
    backbone = encoder.backbone.to(device)
    train_x = extract_features(backbone, train.images, encoder.image_size, device, show_progress=show_progress,
                               desc="train features")
    test_x = extract_features(backbone, test.images, encoder.image_size, device, show_progress=show_progress,
                              desc="test features")
    return train_x, torch.from_numpy(train.labels), test_x, torch.from_numpy(test.labels)


def _prepare(checkpoint, train, test, data, image_size, small_stem, cache_dir, show_progress):
    encoder = checkpoint if isinstance(checkpoint, Encoder) else load_encoder(checkpoint, image_size, small_stem)
    train_cache, test_cache = open_labelled(encoder.cache_size, train, test, data, cache_dir, show_progress)
    return encoder, train_cache, test_cache


def evaluate_knn(checkpoint, train=None, test=None, data=None, k: tuple[int, ...] = (20, 200),
                 temperature: float = 0.07, device: str = "auto", image_size: int | None = None,
                 small_stem: bool | None = None, cache_dir=None, show_progress: bool = True) -> dict:
    """Weighted kNN (Wu et al. 2018) top-1/top-5 for each k; the last k is the headline."""
    encoder, train_cache, test_cache = _prepare(checkpoint, train, test, data, image_size, small_stem, cache_dir, show_progress)
    train_x, train_y, test_x, test_y = _features(encoder, train_cache, test_cache, device, show_progress)
    num_classes = len(train_cache.classes)
    by_k = {str(kk): knn_accuracy(train_x, train_y, test_x, test_y, kk, temperature, num_classes) for kk in k}
    return {"protocol": "knn", "encoder": encoder.description, **by_k[str(k[-1])], "k": k[-1],
            "temperature": temperature, "by_k": by_k, "train_images": len(train_cache),
            "test_images": len(test_cache), "classes": num_classes}


def evaluate_linear(checkpoint, train=None, test=None, data=None, epochs: int = 100, lr: float = 1e-3,
                    weight_decay: float = 1e-4, batch_size: int = 1024, device: str = "auto",
                    image_size: int | None = None, small_stem: bool | None = None, cache_dir=None,
                    show_progress: bool = True) -> dict:
    """Top-1/top-5 of a linear classifier trained on frozen features of the training images."""
    encoder, train_cache, test_cache = _prepare(checkpoint, train, test, data, image_size, small_stem, cache_dir, show_progress)
    train_x, train_y, test_x, test_y = _features(encoder, train_cache, test_cache, device, show_progress)
    result = linear_accuracy(train_x, train_y, test_x, test_y, len(train_cache.classes), epochs=epochs,
                             lr=lr, weight_decay=weight_decay, batch_size=batch_size)
    return {"protocol": "linear", "encoder": encoder.description, **result, "epochs": epochs,
            "train_images": len(train_cache), "test_images": len(test_cache),
            "classes": len(train_cache.classes)}
