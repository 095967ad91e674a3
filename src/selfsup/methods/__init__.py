"""The methods. Each is one module holding:

- `Config`: a dataclass of the method's options and their defaults (a few defaults stay as they
  were so that older checkpoints load alike; the presets then set the paper's value);
- `PRESETS`: {"cifar": fn, "imagenet": fn}, each returning overrides for the whole run config;
- `Method(config, backbone, image_size)`: an nn.Module whose `forward(batch, progress)` returns a
  `MethodOutput` (see common.py: `Batch` holds the uint8 images on the device and the generator
  all randomness must come from; `Progress` says where training stands), with an optional
  `after_step(progress)` (EMA, queue or centre updates, run after the optimizer step, without
  gradients) and an `encoder()` returning the backbone to evaluate and export.
  Everything the method must carry across a resume (teacher, queue, centre) is a parameter or a
  registered buffer, so it is in the state dict and thus in every checkpoint.
  A class attribute `may_skip_parameters = True` tells DistributedDataParallel that some steps
  leave parameters without gradients (DINO's frozen last layer).
  Optional: `save_pictures(batch, run_dir)`, called after each epoch's checkpoint with the same 8
  images and a fixed generator (in eval mode, without gradients), to draw reconstructions and
  the like into the run folder.
- optional module-level `encoder_from_state(cfg, state) -> Backbone`: the encoder to evaluate,
  built from a checkpoint's state without building the whole method (distill: no teacher needed).
- optional module-level `check_config(cfg)`: raise a `UserError` for a run config the method
  cannot run (a ResNet for MAE, an image too small for jigsaw's grid), before any data is read.
- optional module-level `check_data(config, cache, train_idx)`: raise a `UserError` when the
  decoded data (or its training rows `train_idx`, without those held out for the monitor) cannot
  serve the method (e.g. only grayscale images for colorization); called before training; and
  `training_rows(config, cache, train_idx) -> train_idx`: the rows it can learn from (colorization
  leaves out gray images), a pure function, so a resumed run trains on the same ones.
- optional module-level `open_data(path, size, cache_dir=, workers=, show_progress=)`: how the
  data is read instead of `data.open_images` (clips with their frame indices, interaction
  records), and `samples(config, cache, seed) -> Samples` (common.py): training samples of k
  cache rows each with per-sample side data; the trainer then streams samples, and `Batch`
  holds (B, k, S, S, 3) images and the batch's side data (temporal order, ego-motion, interaction).

Adding a method touches its own file and one line below.
"""
from __future__ import annotations

from types import ModuleType

from torch import nn

from ..backbones import build_backbone
from ..errors import unknown_choice
from . import simclr
from . import byol, dino, moco_v2, moco_v3
from . import distill, ibot, mae
from . import colorization, inpainting, jigsaw, relative_location, rotation
from . import egomotion, interaction, temporal_order

METHODS: dict[str, ModuleType] = {
    "simclr": simclr,
    "moco-v2": moco_v2,
    "moco-v3": moco_v3,
    "byol": byol,
    "dino": dino,
    "mae": mae,
    "ibot": ibot,
    "distill": distill,
    "rotation": rotation,
    "relative-location": relative_location,
    "jigsaw": jigsaw,
    "colorization": colorization,
    "inpainting": inpainting,
    "temporal-order": temporal_order,
    "egomotion": egomotion,
    "interaction": interaction,
}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return METHODS[name]


def build_method(cfg) -> nn.Module:
    """The method of a resolved RunConfig, with its backbone, untrained."""
    backbone = build_backbone(cfg.backbone, cfg.data.image_size)
    return get_method(cfg.method).Method(cfg.method_config, backbone, cfg.data.image_size)


def restore_method(cfg, state: dict) -> nn.Module:
    """The method of a resolved RunConfig holding the weights of a checkpoint's `model` state."""
    method = build_method(cfg)
    method.load_state_dict(state)
    return method
