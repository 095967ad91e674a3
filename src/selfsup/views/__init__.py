"""Views made on the model's device: batched, per-sample random augmentations of uint8 batches."""
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, eval_view, make_view, to_float

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ViewConfig", "eval_view", "make_view", "to_float"]
