"""Typed configuration: one home for every default, strict overrides, a saved resolved copy.

A run is described by `RunConfig`, a tree of dataclasses. Each method keeps its paper's defaults
in its own `Config` dataclass and its recipe per image regime in `PRESETS`. Values are layered:
dataclass defaults < preset < YAML file < command-line flags. Every layer is a nested dict that
goes through `override`, which refuses unknown keys (naming the nearest valid one), wrong types
and values outside a field's range. The resolved tree is written to RUN_DIR/config.yaml and into
every checkpoint, so a run can be repeated exactly.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from .errors import UserError, nearest


def ranged(default: Any, low: float | None = None, high: float | None = None, ordered: bool = False,
           below: float | None = None, **kwargs) -> Any:
    """A dataclass field whose value (or each value of a tuple) must lie in [low, high] (or
    [low, below), strictly below `below`), and a tuple's values in increasing order when
    `ordered`; checked on every override."""
    return field(default=default, metadata={"range": (low, high), "below": below, "ordered": ordered}, **kwargs)


@dataclass
class DataConfig:
    path: str = ""
    image_size: int = ranged(224, 8, 4096)
    # Side of the square uint8 images kept in the cache (shorter side resized, centre crop).
    # None: the image size for small images, 8/7 of it otherwise (256 for 224, as ImageNet does).
    cache_size: int | None = ranged(None, 8, 4096)
    cache_dir: str | None = None  # None: $SELFSUP_CACHE or ~/.cache/selfsup
    # Fraction of labelled images held out of pretraining to measure kNN accuracy while training.
    holdout_fraction: float = ranged(0.05, 0.0, 0.5)
    # Labelled images for that kNN monitor instead (a root holding train/ and test/, e.g. a few
    # hundred labels): its train/ is the memory bank and its test/ the queries, all of them at each
    # reading; nothing is then held out of the training data.
    monitor_path: str = ""
    # Keep the whole uint8 cache in accelerator memory when it fits ("auto"), always, or never.
    on_device: Literal["auto", "always", "never"] = "auto"
    decode_workers: int = ranged(0, 0, 256)  # 0: one per CPU core
    # The bands of multi-band TIFFs (satellite tiles, microscopes' channels) read as red, green and
    # blue, or one as gray, numbered from 1 as GDAL does (e.g. [4, 3, 2]); None: the first three.
    bands: tuple[int] | tuple[int, int, int] | None = ranged(None, 1, None)


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    # 3x3 stride-1 first convolution and no max-pool, for 32-pixel images (None: on up to 64 px).
    small_stem: bool | None = None
    patch_size: int | None = ranged(None, 1, None)  # ViTs only
    # ViTs only: stochastic depth, rising linearly over the blocks to this rate (DINO's and iBOT's
    # ViT-S: 0.1); teachers and evaluations run without it.
    drop_path_rate: float = ranged(0.0, 0.0, 1.0)


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    # Base learning rate for a batch of `lr_reference_batch`; the peak rate is scaled from it.
    lr: float = ranged(0.1, 0.0, None)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    lr_reference_batch: int = ranged(256, 1, None)
    weight_decay: float = ranged(1e-4, 0.0, None)
    weight_decay_end: float | None = ranged(None, 0.0, None)  # a cosine from weight_decay to this (DINO); None: constant
    momentum: float = ranged(0.9, 0.0, 1.0)
    betas: tuple[float, float] = ranged((0.9, 0.999), 0.0, below=1.0)  # AdamW's
    lars_eta: float = ranged(0.001, 0.0, None)  # LARS trust coefficient (You et al. 2017)
    warmup_epochs: float = ranged(10.0, 0.0, None)
    final_lr_ratio: float = ranged(0.0, 0.0, 1.0)  # the cosine ends at this fraction of the peak
    # Biases and normalisation weights get no weight decay and no LARS adaptation (SimCLR, BYOL).
    exclude_bias_and_norm: bool = True
    # Each parameter's gradient is scaled down to at most this L2 norm, one tensor at a time, as
    # DINO's and iBOT's code clip (3.0 there); 0: no clipping.
    clip_grad: float = ranged(0.0, 0.0, None)
    # ViTs (DINOv2's pretraining): each block learns `layer_decay` times as fast as the one above,
    # the heads at the full rate; the patch embedding also at `patch_embed_lr_ratio` times its rate.
    layer_decay: float = ranged(1.0, 0.0, 1.0)
    patch_embed_lr_ratio: float = ranged(1.0, 0.0, None)


@dataclass
class TrainConfig:
    epochs: int = ranged(100, 1, None)
    batch_size: int = ranged(256, 2, None)
    device: str = "auto"  # "auto": cuda if available, else cpu
    seed: int = ranged(0, 0, 2**31 - 1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on cuda, fp32 on cpu
    compile: bool = False
    # With compile, the backbone's torch.compile mode: "reduce-overhead" replays each step's kernels
    # as CUDA graphs (fewer launches from the host; GPU only, one process); the views keep the default.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    channels_last: bool = True
    checkpoint_every_steps: int = ranged(0, 0, None)  # 0: at the end of every epoch only
    monitor_every_epochs: int = ranged(0, 0, None)  # 0: about ten times per run
    knn_k: int = ranged(200, 1, None)
    knn_temperature: float = ranged(0.07, 1e-6, None)
    # The collapse monitor warns when the per-dimension std of L2-normalised embeddings falls
    # below this fraction of 1/sqrt(d), the value of embeddings spread evenly over the sphere.
    collapse_warning: float = ranged(0.1, 0.0, 1.0)
    log_every_steps: int = ranged(10, 1, None)  # the progress bar's loss; with tensorboard, its step/ scalars
    tensorboard: bool = False  # RUN_DIR/tensorboard: the metrics as TensorBoard scalars (needs the tensorboard package)
    sync_batchnorm: bool = False  # under torchrun on GPUs: BatchNorm statistics over all processes
    progress: bool = True


@dataclass
class RunConfig:
    method: str = "simclr"
    # "auto": "cifar" up to 64 px, "imagenet" above; with a ViT, the method's "-vit" variant if it has one
    preset: str = "auto"
    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The method's own dataclass; serialised under the method's name (e.g. `simclr:`).
    method_config: Any = None


# ----------------------------------------------------------------------------------------------
# Overrides


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except UserError:
                pass
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise UserError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    low, high = f.metadata.get("range", (None, None))
    below = f.metadata.get("below")
    for number in value if isinstance(value, tuple) else (value,):
        if isinstance(number, float) and not math.isfinite(number):
            raise UserError(f"{where}{_flag_of(where)} must be a finite number, got {value!r}")
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if ((low is not None and number < low) or (high is not None and number > high)
                    or (below is not None and number >= below)):
                upper = f"{below})" if below is not None else f"{high if high is not None else 'inf'}]"
                bounds = f"[{low if low is not None else '-inf'}, {upper}"
                raise UserError(f"{where}{_flag_of(where)} must be in {bounds}, got {value!r}")
    if f.metadata.get("ordered") and list(value) != sorted(value):
        raise UserError(f"{where}{_flag_of(where)} must be in increasing order (low, high), got {list(value)!r}")


def _flag_of(key: str) -> str:
    """' (--flag)' when a pretrain flag sets the config key `key`, so an error names what was typed."""
    from .cli import PRETRAIN_FLAGS
    from .console import option

    flag = next((flag for flag, k in PRETRAIN_FLAGS.items() if k == key), None)
    return f" ({option(flag)})" if flag else ""


def override(obj: Any, changes: dict, where: str = "", named: Callable[[str], str] | None = None) -> Any:
    """A copy of the dataclass `obj` with `changes` (a nested dict) applied, strictly checked. A value's
    error names its config path (`where.key`), or `named(key)` where given: what the user typed for
    that key (an evaluation's `--lr` or `lr=`), which a config path does not tell them."""
    if not isinstance(changes, dict):
        raise UserError(f"{where or 'config'} must be a mapping of keys to values, got {changes!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for key, value in changes.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            # At the top, the method's section goes by the method's name (`simclr:`), not `method_config`.
            valid = [getattr(obj, "method", name) if name == "method_config" else name for name in fields]
            raise UserError(f"unknown config key {path!r}{nearest(key, valid)}; valid keys here: {', '.join(valid)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            updates[key] = override(current, value, path)
        else:
            shown = named(key) if named else path
            coerced = _coerce(value, hints[key], shown)
            _check_range(coerced, fields[key], shown)
            updates[key] = coerced
    return dataclasses.replace(obj, **updates)


def merge_dicts(base: dict, top: dict) -> dict:
    """Nested dict with `top` laid over `base` (neither is modified)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def check_sections(user: dict, where: str) -> dict:
    """`user` itself, once every section in it (data, train, a method's name, ...) is a mapping:
    a bare value would replace the whole section when layers are merged."""
    from .methods import METHODS  # late: methods import this module

    sections = {"data", "backbone", "optim", "train", "method_config", *METHODS}
    for key, value in user.items():
        if key in sections and not isinstance(value, dict):
            raise UserError(f"{where}: {key!r} is a section and must be a mapping of keys to values "
                            f"(section.KEY), got {value!r}")
    return user


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads 3e-4 (no dot, no exponent sign) as a string; numbers
    with an exponent are floats here, as in YAML 1.2 and Python."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+.0123456789"))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def parse_assignment(text: str) -> dict:
    """'optim.lr=0.3' -> {'optim': {'lr': 0.3}}; the value is read as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE (e.g. --set optim.lr=0.3), got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UserError(f"--set {text!r} names no key: write KEY=VALUE (e.g. --set optim.lr=0.3)")
    if not raw.strip():  # YAML would read it as null, and the error would then blame the value's type
        raise UserError(f"--set {text!r} gives no value: write one after '=' (e.g. --set {key.strip()}=0.3), "
                        f"or null where the setting may be empty")
    try:
        value = read_yaml(raw)
    except yaml.YAMLError:
        value = raw
    return check_sections(nested(key.strip(), value), f"--set {text}")


def nested(dotted_key: str, value: Any) -> dict:
    """'optim.lr', 0.3 -> {'optim': {'lr': 0.3}}."""
    tree: dict = {}
    node = tree
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def load_yaml(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a folder; give a YAML file, such as a run's config.yaml")
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = read_yaml(path.read_text())
    except UnicodeDecodeError:  # a checkpoint (which holds its config too), an image
        raise UserError(f"config file {str(path)!r} is not a text file; give a YAML file, such as a run's "
                        f"config.yaml (the one beside last.pt)") from None
    except yaml.YAMLError as e:  # the problem and its line ('while parsing a flow node' told neither)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}: "
                        f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return check_sections(data, f"config file {str(path)!r}")


# ----------------------------------------------------------------------------------------------
# Resolution and serialisation


def with_method_flags(user: dict, method_name: str) -> dict:
    """`user` with its "method_config" section (options of whichever method runs, e.g. from
    --local-crops) laid over the section of the method `method_name` (e.g. "dino")."""
    if "method_config" not in user:
        return user
    from .methods import METHODS, get_method  # late: methods import this module

    def options_of(method: str) -> set[str]:
        return {f.name for f in dataclasses.fields(get_method(method).Config)}

    user = dict(user)
    options = user.pop("method_config")
    valid = options_of(method_name)
    for key in options if isinstance(options, dict) else ():
        if key not in valid:
            having = [m for m in METHODS if key in options_of(m)]
            from .console import one_of, option
            raise UserError(f"{option(key)} is not an option of {method_name}; drop it"
                            + (f", or use {one_of('method', having)}" if having else ""))
    return merge_dicts(user, {method_name: options})


def resolve(user: dict) -> RunConfig:
    """The full run config from the user's layers (YAML and flags merged into one nested dict).

    The method and image size are read first, because they choose the method's dataclass and
    its preset; then defaults < preset < user overrides are applied in that order.
    """
    from .methods import get_method  # late: methods import this module

    user = dict(user)
    method_name = user.get("method", RunConfig.method)
    method = get_method(method_name)
    for key in list(user):
        if key != method_name and key not in {f.name for f in dataclasses.fields(RunConfig)}:
            from .methods import METHODS
            if key in METHODS:
                raise UserError(f"config section {key!r} belongs to method {key!r}, but the method "
                                f"is {method_name!r}; rename the section or set method: {key}")
    user = with_method_flags(user, method_name)
    method_section = user.pop(method_name, {})

    from .backbones.vit import VITS, check_image_size, default_patch_size, is_vit_name  # late: they import this
    probe = override(RunConfig(), {k: v for k, v in user.items() if k in ("data", "preset")})
    preset_name = probe.preset
    if preset_name == "auto":
        preset_name = "cifar" if probe.data.image_size <= 64 else "imagenet"
        if is_vit_name(user.get("backbone", {}).get("name", "")) and f"{preset_name}-vit" in method.PRESETS:
            preset_name += "-vit"  # the method's own ViT recipe, where its paper has one
    if preset_name not in method.PRESETS:
        from .errors import unknown_choice
        raise unknown_choice(f"preset for {method_name}", preset_name, method.PRESETS)
    preset = method.PRESETS[preset_name]()
    preset_method = preset.pop(method_name, {})

    cfg = RunConfig(method=method_name, method_config=method.Config())
    cfg = override(cfg, merge_dicts(preset, user))
    cfg = dataclasses.replace(cfg, preset=preset_name, method_config=override(
        cfg.method_config, merge_dicts(preset_method, method_section), method_name))
    from .backbones import check_backbone_name, no_blocks_to_drop  # late: backbones import this module
    check_backbone_name(cfg.backbone.name)
    if cfg.backbone.name.startswith("resnet"):
        if user.get("backbone", {}).get("patch_size") is not None:
            from .console import one_of, option
            raise UserError(f"{option('patch_size')} is for ViTs; {cfg.backbone.name} has no patches (drop the "
                            f"option, or choose {one_of('backbone', VITS)})")
        cfg = override(cfg, {"backbone": {"patch_size": None}})  # a ViT preset's, when the user chose a ResNet
        if preset_name.endswith("-vit"):  # allowed (a ViT recipe may be wanted), not unsaid
            from .console import option, warn
            warn(f"{option('preset', preset_name)} is {method_name}'s recipe for a ViT; {cfg.backbone.name} is "
                 f"trained with it as asked ({preset_name.removesuffix('-vit')} is the recipe for a ResNet)")
        if user.get("backbone", {}).get("drop_path_rate"):
            raise no_blocks_to_drop(cfg.backbone.name)
        cfg = override(cfg, {"backbone": {"drop_path_rate": 0.0}})
    if cfg.backbone.name in VITS:
        if user.get("backbone", {}).get("small_stem"):
            from .console import option
            raise UserError(f"{option('small_stem')} is for ResNets; {cfg.backbone.name} starts with its patch "
                            f"embedding (set its size with {option('patch_size')})")
        if cfg.backbone.patch_size is None:
            cfg = override(cfg, {"backbone": {"patch_size": default_patch_size(cfg.data.image_size)}})
        # A preset's patch size is for its paper's image size (iBOT's 14 at 224): say whose it is.
        chosen_by_preset = user.get("backbone", {}).get("patch_size") is None and preset.get("backbone", {}).get(
            "patch_size") == cfg.backbone.patch_size
        check_image_size(cfg.data.image_size, cfg.data.image_size, cfg.backbone.patch_size, cfg.backbone.name,
                         whose=f" (the {preset_name} preset's)" if chosen_by_preset else "")
    if hasattr(method, "check_config"):  # what the method cannot run is refused before data is read
        method.check_config(cfg)
    _refuse_options_of_other_optimizers(cfg.optim, user.get("optim", {}), preset.get("optim", {}))
    if not is_vit_name(cfg.backbone.name) and (cfg.optim.layer_decay < 1 or cfg.optim.patch_embed_lr_ratio != 1):
        raise UserError(f"optim.layer_decay and optim.patch_embed_lr_ratio are for ViTs, whose blocks and patch "
                        f"embedding they scale; {cfg.backbone.name} has neither (leave them at 1)")
    if cfg.backbone.small_stem is None:
        cfg = override(cfg, {"backbone": {"small_stem": default_small_stem(cfg.backbone.name, cfg.data.image_size)}})
    if cfg.data.cache_size is None:
        size = cfg.data.image_size
        cfg = override(cfg, {"data": {"cache_size": size if size <= 64 else round(size * 8 / 7)}})
    if cfg.optim.lr == 0:
        from .console import option, warn
        warn(f"the learning rate is 0 ({option('lr')} / optim.lr): the weights will not change, so the run measures "
             f"speed, not learning")
    return _warmup_within_run(cfg, user, preset)


OPTIMIZER_OPTIONS = {"momentum": ("sgd", "lars"), "lars_eta": ("lars",), "betas": ("adamw",)}


def _refuse_options_of_other_optimizers(optim: OptimConfig, given: dict, preset: dict) -> None:
    """An option the user changed that the run's optimizer does not have reads as if it had an
    effect. (A saved config.yaml given back holds every option, at the values it had.)"""
    name = optim.name
    for option, takers in OPTIMIZER_OPTIONS.items():
        usual = preset.get(option, getattr(OptimConfig(), option))
        changed = getattr(optim, option) != (tuple(usual) if isinstance(usual, list) else usual)
        if option in given and changed and name not in takers:
            from .console import one_of, option as flag
            raise UserError(f"optim.{option} is for {' and '.join(takers)}; the optimizer is {name} "
                            f"({flag('optimizer')}), which has none: leave it out, or choose "
                            f"{one_of('optimizer', takers)}")


def _warmup_within_run(cfg: RunConfig, user: dict, preset: dict) -> RunConfig:
    """A warm-up as long as the run would end it below the peak rate, with no decay. One the user
    set is refused; a preset's (or the default's), made for a longer run, keeps its share of it."""
    warmup, epochs = cfg.optim.warmup_epochs, cfg.train.epochs
    if warmup < epochs:
        return cfg
    from .console import setting
    if "warmup_epochs" in user.get("optim", {}):
        raise UserError(f"optim.warmup_epochs {warmup:g} is not shorter than the run's {epochs} epochs: the learning "
                        f"rate would never reach its peak, nor decay; set it below {epochs} "
                        f"(e.g. {setting('optim.warmup_epochs', f'{epochs / 10:g}')})")
    planned = preset.get("train", {}).get("epochs", TrainConfig().epochs)
    shorter = round(epochs * (warmup / planned if planned > warmup else 0.1), 4)
    from .console import setting, warn
    warn(f"the {cfg.preset} preset warms up over {warmup:g} epochs, not fewer than this run's {epochs}: over "
         f"{shorter:g} instead, its share of the {planned} epochs it was made for "
         f"({setting('optim.warmup_epochs', 'N')} chooses)")
    return override(cfg, {"optim": {"warmup_epochs": shorter}})


def default_small_stem(backbone: str, image_size: int) -> bool | None:
    """The small stem up to 64 px for selfsup's own ResNets (torchvision's and resnet18-half);
    None (no such stem, or only when asked: timm's ResNets) for every other backbone."""
    return image_size <= 64 if backbone.startswith("resnet") else None


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (lists, not tuples) with the method section under the method's name."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    out = {f.name: plain(dataclasses.asdict(getattr(cfg, f.name)) if dataclasses.is_dataclass(
        getattr(cfg, f.name)) else getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
        if f.name != "method_config"}
    out[cfg.method] = plain(dataclasses.asdict(cfg.method_config))
    return out


def from_dict(data: dict) -> RunConfig:
    """Inverse of `to_dict` (used to restore a run from its checkpoint)."""
    from .methods import get_method

    data = dict(data)
    method = get_method(data.get("method", ""))
    section = data.pop(data["method"], {})
    cfg = override(RunConfig(method=data["method"], method_config=method.Config()), data)
    return dataclasses.replace(cfg, method_config=override(cfg.method_config, section, cfg.method))


RUN_CONFIG_HEADER = "# selfsup run config: the resolved settings of this run (selfsup pretrain --config FILE repeats it)\n"


def dump_yaml(cfg: RunConfig) -> str:
    return RUN_CONFIG_HEADER + yaml.safe_dump(to_dict(cfg), sort_keys=False)
