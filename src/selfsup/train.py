"""The one training loop, shared by every method.

files → uint8 cache → batch on the device → method(batch, progress) → loss → optimizer step →
after_step → metrics and checkpoint. Everything a resumed run needs is in RUN_DIR/last.pt:
weights, optimizer, position (epoch, batch, step), RNG states and the resolved config; the data
order is a function of (seed, epoch). A run killed at any point and resumed with `--resume` ends
with the same weights, bit for bit on the CPU, as one that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second run into the same folder is not refused
    fcntl = None

import numpy as np
import torch

from . import config as config_lib
from . import dist, monitor, tensorboard_log
from .backbones import Backbone
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .console import (named_option, option, path_option, plural, progress_bar, said_as, say, setting, warn,
                      warnings_after_checks)
from .data import BatchStream, ImageCache, open_images
from .data.cache import mark_used
from .data.loader import SampleBatch, map_side
from .data.sources import IMAGE_SUFFIXES, is_tar_path
from .data.tiff import require_tiff_reader
from .data.workers import STOP_SIGNALS
from .errors import RunStopped, UserError
from .eval.features import extract_features, nonfinite_rows
from .eval.knn import knn_accuracy
from .methods import build_method, get_method
from .methods.common import Batch, Progress, Samples
from .optim import build_optimizer, clip_gradients_per_tensor, cosine, peak_lr, set_schedule, warmup_cosine
from .outputs import (append_json_line, lies_inside, os_reason, read_json_lines, removed_if_left_empty,
                      write_text_atomically)
from .phases import phase
from .views import compile_views
from .viz import evenly_spaced, plot_training_curves

# Where things are may change on --resume, not what they are: a distillation's teacher weights
# are restored from the run's checkpoint, its --teacher only says where to read its architecture.
RESUMABLE_KEYS = {("train", "device"), ("data", "path"), ("data", "monitor_path"), ("data", "cache_dir"),
                  ("train", "progress"), ("data", "decode_workers"), ("distill", "teacher"), ("train", "tensorboard"),
                  ("train", "log_every_steps")}
STOP_CHECK_SECONDS = 2.0  # under torchrun: about how often the processes agree on a stop
MONITOR_BANK = 10_000  # labelled training images used as the kNN monitor's memory bank
MONITOR_QUERIES = 5_000


@dataclass
class Position:
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken so far


@dataclass
class RunResult:
    out: Path
    checkpoint: Path
    config: RunConfig
    metrics: list[dict] = field(default_factory=list)
    training_images: int = 0  # without the kNN monitor's held-out ones
    total_steps: int = 0  # optimizer steps of the whole run, all epochs


def run_folder_remedy() -> str:
    return f"choose a writable {named_option('out')}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_distributed():
        return torch.device("cuda", dist.local_rank())  # one GPU per process under torchrun
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} is not available on this machine; use {option('device', 'cpu')}")
    return device


def autocast_for(device: torch.device, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


# ---------------------------------------------------------------------------------------------
# Run folder and configuration


def new_run_command(out: Path, epochs) -> str:
    """How to train a finished or resumed run for other epochs: its schedules end at its last
    epoch, so a new run from its config, not --resume."""
    config = out / "config.yaml"
    return "start a new run: " + said_as(f"selfsup pretrain --config {config} --epochs {epochs} --out NEW_DIR",
                                         f"selfsup.pretrain(config={str(config)!r}, epochs={epochs}, out=NEW_DIR)")


def _restore_config(user: dict, out: Path) -> tuple[RunConfig, dict]:
    checkpoint = load_checkpoint(out / "last.pt", plain_weights="")
    cfg = config_lib.from_dict(checkpoint["config"])
    saved = config_lib.to_dict(cfg)
    user = config_lib.with_method_flags(user, cfg.method)
    if "method" in user and user["method"] != cfg.method:
        raise UserError(f"{out / 'last.pt'} was written by method {cfg.method!r}, not {user['method']!r}; "
                        f"resume it with {option('method', cfg.method)} or start a new run in another "
                        f"{named_option('out')}")
    if user.get("preset", "auto") not in ("auto", cfg.preset):
        raise UserError(f"{option('resume', True)} continues the run as configured; its preset cannot change (saved "
                        f"{cfg.preset!r}, given {user['preset']!r})")
    allowed = {}
    for section, values in user.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section, key) in RESUMABLE_KEYS:
                field_name = "method_config" if section == cfg.method else section  # RunConfig's name for it
                allowed.setdefault(field_name, {})[key] = value
            elif saved.get(section, {}).get(key) != (list(value) if isinstance(value, tuple) else value):  # YAML: lists
                longer = ""
                if (section, key) == ("train", "epochs"):  # the schedules end at the last epoch
                    longer = f"; to train for {value} epochs, {new_run_command(out, value)}"
                raise UserError(f"{option('resume', True)} continues the run as configured; "
                                f"{section}.{key} cannot change "
                                f"(saved {saved.get(section, {}).get(key)!r}, given {value!r}){longer}")
    was_monitored_on = cfg.data.monitor_path
    cfg = _absolute_paths(dataclasses.replace(config_lib.override(cfg, allowed), out=str(out)))
    if not Path(cfg.data.path).exists():
        given = f"the data given with {option('data')}" if "path" in user.get("data", {}) else "the run's data"
        raise UserError(f"{option('resume', True)}: {given}, {cfg.data.path!r}, does not exist; if the data moved, "
                        f"resume with {said_as('--data PATH', 'data=PATH')} where it is now")
    if bool(was_monitored_on) != bool(cfg.data.monitor_path):  # it decides which images are held out of training
        raise UserError(f"{option('resume', True)} continues the run as configured; its kNN monitor reads "
                        + (f"{was_monitored_on!r}, with nothing of its data held out: give "
                           f"{said_as('--monitor-data PATH', 'monitor_data=PATH')} where that is now"
                           if was_monitored_on else
                           f"a held-out part of its data, which {named_option('monitor_data')} would give back to "
                           f"training: leave it out"))
    if cfg.data.monitor_path and not Path(cfg.data.monitor_path).exists():
        raise UserError(f"{option('resume', True)}: the run's monitor data, {cfg.data.monitor_path!r}, does not exist; "
                        f"if it moved, resume with {said_as('--monitor-data PATH', 'monitor_data=PATH')} where it "
                        f"is now")
    return cfg, checkpoint


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config with its data (and a teacher's checkpoint) as absolute paths, so that
    config.yaml, --resume and --config work from any folder."""
    def absolute(path: str) -> str:
        return path if not path or path.startswith(("weights:", "random:")) else os.path.abspath(os.path.expanduser(path))
    changes = {"data": {"path": absolute(cfg.data.path), "monitor_path": absolute(cfg.data.monitor_path)}}
    if isinstance(getattr(cfg.method_config, "teacher", None), str):
        changes["method_config"] = {"teacher": absolute(cfg.method_config.teacher)}
    return config_lib.override(cfg, changes)


def prepare_run(user: dict, resume: bool) -> tuple[RunConfig, dict | None]:
    """The resolved config and, when resuming, the checkpoint to continue from."""
    cfg, checkpoint = _config_and_checkpoint(user, resume)
    if cfg.train.compile_mode != "default" and not cfg.train.compile:
        raise UserError(f"train.compile_mode {cfg.train.compile_mode!r} applies to a compiled run: "
                        f"add {option('compile', True)}")
    if cfg.train.tensorboard:
        tensorboard_log.summary_writer(resuming=resume)
    require_tiff_reader(cfg.data.bands)
    monitored = Path(cfg.data.monitor_path)
    if cfg.data.monitor_path and monitored.is_file() and not is_tar_path(monitored):  # before the images are decoded
        raise UserError(f"{path_option('monitor_data', cfg.data.monitor_path)} is a file; give a folder or tar "
                        f"holding train/ and test/ (or val/) folders, each with one subfolder per class")
    if cfg.data.bands and hasattr(get_method(cfg.method), "open_data"):
        raise UserError(f"data.bands chooses bands of TIFF images; {cfg.method} reads its own data "
                        f"(videos, frames or interactions): leave out {option('bands')}")
    batch, world = cfg.train.batch_size, dist.world_size()
    if batch % world:
        raise UserError(f"the batch size {batch} must be divisible by the number of processes {world}: launch "
                        f"a number of processes that divides {batch}"
                        + ("" if resume else f", or choose a {named_option('batch_size')} that {world} divides"))
    return cfg, checkpoint


def _config_and_checkpoint(user: dict, resume: bool) -> tuple[RunConfig, dict | None]:
    out = user.get("out")
    if not out:
        raise UserError(f"give a run folder with {said_as('--out RUN_DIR', 'out=RUN_DIR')}")
    out = Path(out).expanduser()
    if resume:
        if not (out / "last.pt").is_file():
            raise UserError(f"{option('resume', True)}: no checkpoint in {str(out)!r} (expected {out / 'last.pt'}); "
                            f"start a new run without {option('resume', True)}")
        return _restore_config(user, out)
    if (out / "last.pt").exists():
        raise UserError(f"{str(out)!r} already holds a run (last.pt); continue it with {option('resume', True)} "
                        f"or choose another {named_option('out')}")
    cfg = dataclasses.replace(config_lib.resolve(user), out=str(out))  # ~ expanded, as --resume's
    if not cfg.data.path:
        raise UserError(f"give the images to pretrain on with {said_as('--data PATH', 'data=PATH')} "
                        f"(a folder or a tar)")
    cfg = _absolute_paths(cfg)
    data = Path(cfg.data.path)
    if not data.exists():  # here, not when the data is opened: before the config's warnings are said
        images = not hasattr(get_method(cfg.method), "open_data")  # a method with its own data (clips) says its kind
        raise UserError(f"data path {str(data)!r} does not exist; give "
                        + ("a folder of images or a tar of one" if images
                           else f"the folder or tar of {cfg.method}'s data"))
    if cfg.data.monitor_path and not Path(cfg.data.monitor_path).exists():
        raise UserError(f"{path_option('monitor_data', cfg.data.monitor_path)} does not exist; give labelled images "
                        f"(a folder or tar holding train/ and test/, each with one subfolder per class)")
    if data.is_dir() and (data / "last.pt").is_file():  # --data and --out swapped: its curves.png as the images
        raise UserError(f"{path_option('data', str(data))} is a run folder (it holds last.pt), not images; give the "
                        f"images to pretrain on as {named_option('data')} and the run folder as {named_option('out')}")
    if data.is_dir() and lies_inside(out, data):
        raise UserError(f"{path_option('out', str(out))} lies inside {path_option('data', str(data))}: "
                        f"the run's pictures "
                        f"would become images of the data (and its next {option('resume', True)} would be refused); "
                        f"choose a run folder "
                        f"outside the data")
    written = out / "config.yaml"
    if written.is_file() and not written.read_text().startswith(config_lib.RUN_CONFIG_HEADER):
        raise UserError(f"{str(out)!r} holds a config.yaml that selfsup did not write, which the run's own "
                        f"would replace; choose another {named_option('out')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{path_option('out', str(out))} is a file, not a folder; choose another {named_option('out')}")
    image = next((f.name for f in sorted(out.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES), None) \
        if out.is_dir() else None
    if image:
        raise UserError(f"{path_option('out', str(out))} holds images (e.g. {image!r}): the run's files would mix with "
                        f"them, and its pictures become images of that folder; choose a new or empty "
                        f"{named_option('out')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to the run folder {str(out)!r} ({os_reason(e)}); "
                        f"{run_folder_remedy()}") from None
    return cfg, None


def write_run_config(cfg: RunConfig) -> None:
    """RUN_DIR/config.yaml, once the data and the method are known to work (a refused run
    leaves nothing behind). Written again at each --resume, with what it may change (where the data
    is now, the device, ...): `--config` then starts a new run from there. run.json keeps each
    resume's command."""
    if dist.is_main():  # a failed write is a one-line UserError (atomic_path)
        write_text_atomically(Path(cfg.out) / "config.yaml", config_lib.dump_yaml(cfg), run_folder_remedy())


def same_data(a: dict, b: dict) -> bool:
    """Two data identities agree: the same names and count. The pixels' digest is kept for the
    record but not compared: another Pillow or libjpeg, or a decoding fix in selfsup, decodes the
    same files a little differently, which must not stop a resume or a run over machines."""
    return (a["images"], a["names_sha256"]) == (b["images"], b["names_sha256"])


def _warm_up(epochs: float) -> str:
    """', warm-up 10 epochs' (or 1 epoch, 0.5 epochs); '' without one."""
    return f", warm-up {epochs:g} epoch{'' if epochs == 1 else 's'}" if epochs else ""


def network_and_views(cfg: RunConfig) -> str:
    """What two runs compared must share, for the start line: "vit-small/16 at 64 px (drop path
    0.1), 2 x 64 px + 6 x 16 px crops" (presets set some of it per method)."""
    b = cfg.backbone
    said = f"{b.name}{f'/{b.patch_size}' if b.patch_size else ''} at {cfg.data.image_size} px"
    said += f" (drop path {b.drop_path_rate:g})" if b.drop_path_rate else ""
    local = getattr(cfg.method_config, "local_crops", 0)
    if local:
        said += (f", {cfg.method_config.global_crops} x {cfg.data.image_size} px + {local} x "
                 f"{cfg.method_config.local_size} px crops")
    return said


def write_run_provenance(cfg: RunConfig, device: torch.device, resumed: bool) -> None:
    """RUN_DIR/run.json: the command, versions, host and device that started the run, and those of
    each --resume after (a run finished on another machine or version says so)."""
    from .provenance import provenance

    if not dist.is_main():
        return
    path, entry = Path(cfg.out) / "run.json", provenance(device)
    try:
        saved = json.loads(path.read_text()) if resumed and path.is_file() else {}
    except (OSError, ValueError):
        saved = {}  # a run.json cut short or made before it existed: the start is unknown
    content = {"started": saved.get("started"), "resumed": saved.get("resumed", [])}
    if resumed:
        content["resumed"].append(entry)
    else:
        content["started"] = entry
    write_text_atomically(path, json.dumps(content, indent=1), run_folder_remedy())


# ---------------------------------------------------------------------------------------------
# Data


def monitor_split(cache: ImageCache, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): a fixed random part of labelled data is kept out of
    pretraining to measure kNN accuracy while training; unlabelled data is all used."""
    n = len(cache)
    if cache.labels is None or fraction <= 0 or n < 20:
        return np.arange(n), np.arange(0)
    clip = getattr(cache, "clip", None)
    if clip is not None:  # frames of a clip are near-duplicates: hold out whole clips
        clips = int(clip.max()) + 1
        order = torch.randperm(clips, generator=torch.Generator().manual_seed(seed + 7919)).numpy()
        held = np.isin(clip, order[:max(1, int(clips * fraction))])
        return np.flatnonzero(~held), np.flatnonzero(held)[:MONITOR_QUERIES]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).numpy()
    held = min(MONITOR_QUERIES, max(1, int(n * fraction)))
    return np.sort(order[held:]), np.sort(order[:held])


# ---------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """State of one pretraining run; `fit()` runs it to the end."""

    def __init__(self, cfg: RunConfig, checkpoint: dict | None, show_progress: bool = True):
        self.cfg, self.out = cfg, Path(cfg.out)
        dist.setup(cfg.train.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = resolve_device(cfg.train.device)
        self.show_progress = show_progress and cfg.train.progress and dist.is_main()
        self.tensorboard: tensorboard_log.TensorBoardLog | None = None  # opened by fit() on the first process
        self.stop_signal: int | None = None  # a signal that asked the run to stop (see STOP_SIGNALS)
        self.curves_drawn_after_epoch = 0  # curves.png is drawn with each kNN monitor's reading, and at the end
        self.next_stop_check, self.stop_check_from = 0, (0.0, 0)  # torchrun: when the processes next agree
        torch.manual_seed(cfg.train.seed)
        method_module = get_method(cfg.method)
        # Decoding's warnings (files skipped) are said at once: they may explain a refusal below.
        self.cache = self._open_data(getattr(method_module, "open_data", open_images))
        with warnings_after_checks():  # what the data, the method or the checkpoint refuse comes first
            self._check_same_data()
            dist.on_every_process(lambda: self._prepare_data(method_module))  # its refusals stop every process
            self._build(checkpoint)
        if cfg.train.compile:
            for module in self.method.modules():
                if isinstance(module, Backbone):  # the heavy part; heads and losses stay eager
                    module.compile(mode=cfg.train.compile_mode)
            compile_views()

    def _build(self, checkpoint: dict | None) -> None:
        """The method, its optimizer and the run's position: new, or restored from `checkpoint`."""
        cfg = self.cfg
        self.method = build_method(cfg)
        for name, value in (self.samples.buffers if self.samples is not None else {}).items():
            self.method.register_buffer(name, torch.from_numpy(value))
        self.method.to(self.device)
        if cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        else:
            for module in self.method.modules():
                if isinstance(module, Backbone):
                    module.input_format = torch.contiguous_format
        if cfg.train.sync_batchnorm and self.world > 1:
            if self.device.type != "cuda":
                raise UserError("train.sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only)")
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.model = self._wrap(self.method)
        self.lr = peak_lr(cfg.optim, cfg.train.batch_size)
        self.optimizer = build_optimizer(self.method, cfg.optim, self.lr)
        self.trained_parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        # Views differ across processes yet are reproducible from the seed.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 1_000_003 * self.rank)
        self.position = Position()
        self.resumed = checkpoint is not None
        self.total_steps = cfg.train.epochs * len(self.stream)
        self.epoch_sums: dict[str, torch.Tensor] = {}
        # --tensorboard's step/loss: (loss sum, steps) since its last point, on the device (no wait per step)
        self.loss_window = torch.zeros(2, device=self.device)
        if checkpoint is not None:
            self._restore(checkpoint)
        elif dist.is_main():  # a new run where one died before its first checkpoint: its lines go
            self._trim_metrics(0)

    def _prepare_data(self, method_module) -> None:
        """The images to train on (the method's own checks and samples), and the batches."""
        cfg = self.cfg
        held_out = 0.0 if cfg.data.monitor_path else cfg.data.holdout_fraction
        self.train_idx, self.holdout_idx = monitor_split(self.cache, held_out, cfg.train.seed)
        side, size = self.cache.median_side, cfg.data.image_size
        if side and 2 * side <= size and dist.is_main():  # e.g. CIFAR's 32-pixel images at the default 224
            warn(f"the images are mostly {side} px on their shorter side, enlarged {size / side:.0f}x to "
                 f"{option('image_size', size)} at {(size / side) ** 2:.0f}x the compute of "
                 f"{option('image_size', side)}; pass {option('image_size', side)} unless that is meant")
        if hasattr(method_module, "check_data"):
            method_module.check_data(cfg.method_config, self.cache, self.train_idx)
        if hasattr(method_module, "training_rows"):  # a method that cannot learn from some images
            self.train_idx = method_module.training_rows(cfg.method_config, self.cache, self.train_idx)
        self.samples = self._samples(method_module)
        stream_over = self.train_idx if self.samples is None else np.arange(len(self.samples.rows))
        self.stream = BatchStream(self.cache.images, stream_over, cfg.train.batch_size, self.device,
                                  cfg.train.seed, cfg.data.on_device, rank=self.rank, world=self.world,
                                  rows=None if self.samples is None else self.samples.rows,
                                  side=None if self.samples is None else self.samples.side)
        if len(self.stream) == 0:
            what = plural(len(stream_over), "training image") if self.samples is None else \
                f"{plural(len(stream_over), 'training sample')} of {cfg.method}"
            more = getattr(method_module, "MORE_SAMPLES", None)  # the config key that draws more samples
            raise UserError(f"{option('batch_size', cfg.train.batch_size)} is larger than the "
                            f"{what} in {cfg.data.path}; lower {option('batch_size')}"
                            + (f" or raise {setting(more, 'N')}" if more else ""))
        self.knn_sets = self._knn_sets() if dist.is_main() else None  # decoded last: after the cheaper checks

    def _knn_sets(self) -> tuple[LabelledRows, LabelledRows] | None:
        """The kNN monitor's memory bank and queries: the monitor data's train/ and test/, or a
        part of the training images and the held-out ones; None where no labels are known."""
        if self.cfg.data.monitor_path:
            bank, queries = open_monitor_data(self.cfg.data, self.show_progress)
            if queries.pixels_sha256 is not None and queries.pixels_sha256 == self.cache.pixels_sha256:
                warn(f"the monitor's test images are the images pretrained on ({queries.source}): its kNN says how "
                     f"well they are recalled, not how new ones are classified", once=True)
            return LabelledRows.of(bank), LabelledRows.of(queries)
        if not len(self.holdout_idx):
            return None
        labels = torch.from_numpy(self.cache.labels)
        bank = self.train_idx[np.linspace(0, len(self.train_idx) - 1, min(MONITOR_BANK, len(self.train_idx))).astype(int)]
        classes = self.cache.classes
        return (LabelledRows(self.cache.images, bank, labels[bank], classes),
                LabelledRows(self.cache.images, self.holdout_idx, labels[self.holdout_idx], classes))

    def _check_same_data(self) -> None:
        """Every process must read the same images (node-local copies may differ)."""
        if self.world == 1:
            return
        identities = dist.all_gather_objects(self._data_identity())
        if all(same_data(identity, identities[0]) for identity in identities):
            return
        found = ", ".join(f"process {r}: {identity['images']:,} images" for r, identity in enumerate(identities))
        dist.refuse(f"the processes read different data at {self.cfg.data.path} ({found}"
                    f"{', other files' if len({i['images'] for i in identities}) == 1 else ''}); every "
                    f"machine must hold the same files there (a shared folder, or identical copies)")

    def _open_data(self, open_data) -> ImageCache:
        """The decoded images (or frames, with a method's own `open_data`); under torchrun the
        first process builds the cache, the others wait."""
        bands = {"bands": self.cfg.data.bands} if self.cfg.data.bands else {}  # images only (prepare_run)

        def load(show: bool) -> ImageCache:
            return open_data(self.cfg.data.path, self.cfg.data.cache_size, cache_dir=self.cfg.data.cache_dir,
                             workers=self.cfg.data.decode_workers, show_progress=show, **bands)
        # Also the barrier: when the others open the cache, it is ready. (On other machines they
        # build their own; what fails there is reported by the first process too.)
        cache = dist.on_every_process(lambda: load(self.show_progress) if dist.is_main() else None)
        return dist.on_every_process(lambda: cache if cache is not None else load(False))

    def _samples(self, method_module) -> Samples | None:
        """A method's multi-row samples (see methods/common.py), without any that touch a row
        held out to monitor."""
        if not hasattr(method_module, "samples"):
            return None
        samples = method_module.samples(self.cfg.method_config, self.cache, self.cfg.train.seed)
        keep = np.isin(samples.rows, self.train_idx).all(axis=1)
        return Samples(samples.rows[keep], map_side(samples.side, lambda a: a[keep]), samples.buffers)

    def _wrap(self, method: torch.nn.Module) -> torch.nn.Module:
        return method if self.world == 1 else dist.data_parallel(method, self.device)

    # -- checkpoints ----------------------------------------------------------------------------

    def _state(self) -> dict:
        """Everything a resumed run needs. Collective under torchrun: every process calls it."""
        views = dist.all_gather_objects(self.generator.get_state())  # one per process
        epoch_sums = dist.all_gather_objects({k: v.detach().cpu() for k, v in self.epoch_sums.items()})
        rng = {"torch": torch.get_rng_state(), "views": views[0], "views_per_rank": views}
        if self.device.type == "cuda":  # each process's own GPU generator (drop path draws from it)
            rng["cuda_per_rank"] = dist.all_gather_objects(torch.cuda.get_rng_state(self.device))
        return dict(method=self.cfg.method, config=config_lib.to_dict(self.cfg), data=self._data_identity(),
                    model=self.method.state_dict(), optimizer=self.optimizer.state_dict(),
                    position=vars(self.position).copy(), rng=rng, world=self.world,
                    epoch_sums=epoch_sums[0], epoch_sums_per_rank=epoch_sums, loss_window=self.loss_window.cpu())

    def _data_identity(self) -> dict:
        """What the run trains on, by file names (compared: the data may move, --data on --resume,
        not change) and decoded pixels (recorded)."""
        names = hashlib.sha256("\n".join(self.cache.names).encode()).hexdigest()[:16]
        return {"images": len(self.cache), "names_sha256": names, "pixels_sha256": self.cache.pixels_sha256}

    def _restore(self, checkpoint: dict) -> None:
        saved, now = checkpoint.get("data"), self._data_identity()
        if saved is not None and not same_data(saved, now):
            which = (f"not the {saved['images']:,} images this run was trained on" if now["images"] != saved["images"]
                     else "as many as this run was trained on, but not the same files (renamed, or others)")
            raise UserError(f"{option('resume', True)}: {self.cfg.data.path} holds {now['images']:,} images, {which}; "
                            f"resume with the run's data ({said_as('--data PATH', 'data=PATH')} where it is now), or "
                            f"start a new run in another {named_option('out')}")
        self.method.load_state_dict(checkpoint["model"])
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError:  # parameters regrouped since (e.g. which are weight-decayed)
            raise UserError(f"{option('resume', True)}: {self.out / 'last.pt'} holds an optimizer state that this "
                            f"selfsup version groups otherwise; finish the run with the version that started it, or "
                            f"start a new run in another {named_option('out')}") from None
        self.position = Position(**checkpoint["position"])
        at, steps = self.position, len(self.stream)
        if at.step != at.epoch * steps + at.batch:  # the same data read otherwise (e.g. images now left out)
            raise UserError(f"{option('resume', True)}: the run was at step {at.step}, batch {at.batch} of epoch "
                            f"{at.epoch + 1}, which {steps} steps per epoch (what its data gives now) cannot reach; "
                            f"finish it with the selfsup version that started it, or start a new run in another "
                            f"{option('out')}")
        torch.set_rng_state(checkpoint["rng"]["torch"])
        views = checkpoint["rng"].get("views_per_rank", [checkpoint["rng"]["views"]])
        if len(views) == self.world:
            self.generator.set_state(views[self.rank])
        else:
            # Another number of processes: the same global batches follow (see BatchStream), but
            # each process's view randomness is reseeded from (seed, rank, step).
            self.generator.manual_seed(self.cfg.train.seed + 1_000_003 * self.rank + self.position.step)
            if dist.is_main():
                warn(f"resuming a run of {plural(len(views), 'process', 'processes')} on {self.world}: same data order, "
                     f"new view randomness")
        cuda_states = checkpoint["rng"].get("cuda_per_rank", [])
        if self.device.type == "cuda" and len(cuda_states) == self.world:  # else reseeded, like the views
            torch.cuda.set_rng_state(cuda_states[self.rank], self.device)
        elif self.device.type == "cuda":
            torch.cuda.manual_seed(self.cfg.train.seed + 1_000_003 * self.rank + self.position.step)
        # The epoch's running sums of the metrics, per process. On another number of processes
        # each takes their mean, which keeps the epoch's mean over processes.
        sums = checkpoint.get("epoch_sums_per_rank", [checkpoint["epoch_sums"]])
        mine = sums[self.rank] if len(sums) == self.world else {
            k: torch.stack([s[k] for s in sums]).double().mean(0).to(sums[0][k].dtype) for k in sums[0]}
        self.epoch_sums = {k: v.to(self.device) for k, v in mine.items()}
        if "loss_window" in checkpoint:  # --tensorboard's next step/loss point covers the steps before the stop too
            self.loss_window = checkpoint["loss_window"].to(self.device)
        if dist.is_main():
            self._trim_metrics(self.position.epoch)

    def _stop_if_diverged(self) -> None:
        """Stop, before anything of it is saved, a run whose loss is no longer a finite number (a
        learning rate too high): its weights are lost, and resuming would diverge again. Collective."""
        loss = dist.all_reduce_sum(self.epoch_sums.get("loss", torch.zeros((), device=self.device)).detach().float())
        if torch.isfinite(loss):
            return
        saved, config, lr = (self.out / "last.pt").is_file(), self.out / "config.yaml", self.cfg.optim.lr
        lower = lr / 4
        dist.refuse(f"the loss became {loss.item()} in epoch {self.position.epoch + 1}: the run diverged"
                    f"{' (last.pt holds its last finite state)' if saved else ''}; start a new run with a "
                    f"lower learning rate: " + said_as(
                        f"selfsup pretrain --config {config} --lr {lower:g} --out NEW_DIR (this one: --lr {lr:g})",
                        f"selfsup.pretrain(config={str(config)!r}, lr={lower:g}, out=NEW_DIR) (this one: lr={lr:g})"))

    def save(self) -> None:
        self._stop_if_diverged()
        state = self._state()
        if dist.is_main():
            save_checkpoint(self.out / "last.pt", **state)
            mark_used(self.cache)  # a run of many days keeps its cache from `selfsup cache --remove-unused-days`

    def save_pictures(self) -> None:
        """Let the method draw what it produces (reconstructions, ...) for a fixed set of images,
        with its own generator, so the pictures are comparable across epochs and the training
        randomness is untouched."""
        if not hasattr(self.method, "save_pictures") or not dist.is_main():
            return
        held_out, method_module = self.holdout_idx, get_method(self.cfg.method)
        if hasattr(method_module, "training_rows"):  # pictures of what it learns from (colorization: colour)
            held_out = method_module.training_rows(self.cfg.method_config, self.cache, held_out)
        shown = evenly_spaced(held_out if len(held_out) >= 8 else self.train_idx, 8)
        images = torch.from_numpy(np.ascontiguousarray(self.cache.images[shown])).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(0)
        was_training = self.method.training
        self.method.eval()
        with torch.no_grad(), autocast_for(self.device, self.cfg.train.precision):
            self.method.save_pictures(Batch(images=images, generator=generator), self.out)
        self.method.train(was_training)

    def _trim_metrics(self, epochs_done: int) -> None:
        """Drop metrics lines of epochs after the checkpoint (written before a kill)."""
        path = self.out / "metrics.jsonl"
        if path.exists():
            kept = [r for r in read_json_lines(path) if r.get("epoch", 0) <= epochs_done]
            write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in kept),
                                  "check the run folder's permissions and free space")

    # -- one step -------------------------------------------------------------------------------

    def _schedules(self) -> tuple[float, float]:
        steps_per_epoch = len(self.stream)
        warmup = int(self.cfg.optim.warmup_epochs * steps_per_epoch)
        lr = warmup_cosine(self.position.step, self.total_steps, warmup, self.lr, self.lr * self.cfg.optim.final_lr_ratio)
        wd = self.cfg.optim.weight_decay
        if self.cfg.optim.weight_decay_end is not None:
            wd = cosine(self.position.step, self.total_steps, wd, self.cfg.optim.weight_decay_end)
        return lr, wd

    def step(self, images: torch.Tensor | SampleBatch) -> None:
        progress = Progress(self.position.step, self.total_steps, self.cfg.train.epochs)
        lr, wd = self._schedules()
        set_schedule(self.optimizer, lr, wd)
        side = None
        if isinstance(images, SampleBatch):  # a method with `samples`
            images, side = images.images, images.side
        # The named ranges show where a step's time goes under torch.profiler (bench/step_profile.py).
        with phase("forward"), autocast_for(self.device, self.cfg.train.precision):
            out = self.model(Batch(images=images, generator=self.generator, side=side), progress)
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        with phase("optimizer"):
            if self.cfg.optim.clip_grad:
                clip_gradients_per_tensor(self.trained_parameters, self.cfg.optim.clip_grad)
            self.optimizer.step()
        if hasattr(self.method, "after_step"):
            with phase("after_step"), torch.no_grad():
                self.method.after_step(progress)
        with phase("metrics"):
            values = {"loss": out.loss.detach().float(), **{k: v.detach().float() for k, v in out.metrics.items()}}
            if out.embedding is not None:
                values["std_ratio"] = monitor.std_ratio(out.embedding)
            values["steps"] = torch.ones((), device=self.device)
            for key, value in values.items():
                self.epoch_sums[key] = self.epoch_sums.get(key, torch.zeros((), device=self.device)) + value
            if self.cfg.train.tensorboard:
                self.loss_window += torch.stack([values["loss"], values["steps"]])
        self.last_embedding = out.embedding
        self.last_lr, self.last_wd = lr, wd
        self.position.step += 1
        self.position.batch += 1

    # -- epochs ---------------------------------------------------------------------------------

    def fit(self) -> RunResult:
        cfg = self.cfg
        if self.position.epoch >= cfg.train.epochs:  # resumed after its last epoch (its data checked)
            if dist.is_main():
                say(f"selfsup: {self.out} already finished its {plural(cfg.train.epochs, 'epoch')}; to train "
                    f"longer, {new_run_command(self.out, 'MORE')}")
            return self._result(read_metrics(self.out))
        if dist.is_main():
            for stale in self.out.glob(".*.tmp"):  # a write cut short by a kill (writes are atomic)
                stale.unlink(missing_ok=True)
            self._say_start()
        images_per_step = cfg.train.batch_size
        bar = progress_bar(self.total_steps * images_per_step, "pretraining", enabled=self.show_progress,
                           initial=self.position.step * images_per_step)
        if cfg.train.tensorboard and dist.is_main():
            self.tensorboard = tensorboard_log.TensorBoardLog(self.out, self.position.step, config_lib.dump_yaml(cfg),
                                                              earlier_epochs=read_metrics(self.out))
        try:
            with self._stop_requests():
                while self.position.epoch < cfg.train.epochs:
                    self._run_epoch(bar)  # ends with the epoch's checkpoint
                    if self.position.epoch < cfg.train.epochs and self._stop_requested(epoch_end=True):
                        self._stop()
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        metrics = read_metrics(self.out)
        if dist.is_main() and self.curves_drawn_after_epoch != cfg.train.epochs:  # else drawn with the last epoch's kNN
            plot_training_curves(metrics, self.out / "curves.png")
        return self._result(metrics)

    def _result(self, metrics: list[dict]) -> RunResult:
        return RunResult(out=self.out, checkpoint=self.out / "last.pt", config=self.cfg, metrics=metrics,
                         training_images=len(self.train_idx), total_steps=self.total_steps)

    def _say_start(self) -> None:
        """The run, the monitor's classes and, on --resume, where it continues: a line each."""
        cfg = self.cfg
        batch = f"{cfg.train.batch_size}" + (f" ({self.world} processes x {cfg.train.batch_size // self.world})"
                                             if self.world > 1 else "")
        data = plural(len(self.train_idx), "image") if self.samples is None else \
            f"{plural(len(self.samples.rows), 'sample')} of {plural(len(self.train_idx), 'image')}"
        say(f"selfsup: {cfg.method} on {data} ({self.cache.source}), {network_and_views(cfg)}, "
            f"{plural(cfg.train.epochs, 'epoch')} x {plural(len(self.stream), 'step')} of {batch}, "
            f"peak lr {self.lr:.4g} = {cfg.optim.lr} per {cfg.optim.lr_reference_batch} images, "
            f"{cfg.optim.lr_scaling} scaling to {cfg.train.batch_size} ({cfg.optim.name}"
            f"{_warm_up(cfg.optim.warmup_epochs)}), "
            f"device {self.device}, preset {cfg.preset}")
        if self.knn_sets is not None:
            # The classes are the first level of folders, which may not be classes at all
            # (labelled/ and unlabelled/): show them.
            bank, queries = self.knn_sets
            classes = bank.classes
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            where = (f"{plural(len(queries.rows), 'test image')} of {cfg.data.monitor_path} against its "
                     f"{plural(len(bank.rows), 'training image')}" if cfg.data.monitor_path else
                     f"{plural(len(self.holdout_idx), 'held-out image')} ({cfg.data.holdout_fraction * 100:g} %, "
                     f"not pretrained on)")
            say(f"monitor: kNN on {where}, {plural(len(classes), 'class', 'classes')} from subfolders ({shown})")
        if self.resumed:
            at = self.position
            batch_at = f", batch {at.batch + 1} of {len(self.stream)}" if at.batch else ""
            say(f"selfsup: resuming {self.out} at epoch {at.epoch + 1} of {cfg.train.epochs}{batch_at} "
                f"(step {at.step:,} of {self.total_steps:,})")

    def _after_step(self, bar) -> None:
        """The progress bar, TensorBoard's step figures, a checkpoint every so many steps, and a
        stop that a signal asked for."""
        cfg = self.cfg
        # Reading the loss waits for the GPU: only for a progress bar someone is watching.
        if self.show_progress and (self.position.step % cfg.train.log_every_steps == 0
                                   or self.position.batch == len(self.stream)):
            loss = (self.epoch_sums["loss"] / self.epoch_sums["steps"]).item()
            bar.set_postfix_str(f"epoch {self.position.epoch + 1}/{cfg.train.epochs} loss {loss:.4f}", refresh=False)
        if self.tensorboard is not None and self.position.step % cfg.train.log_every_steps == 0:
            loss_sum, steps = self.loss_window.tolist()
            self.tensorboard.steps(self.position.step, loss_sum / steps, self.last_lr)
            self.loss_window.zero_()
        bar.update(cfg.train.batch_size)
        saved = False
        if cfg.train.checkpoint_every_steps and self.position.step % cfg.train.checkpoint_every_steps == 0 \
                and self.position.batch < len(self.stream):
            self.save()
            self.save_pictures()  # progress seen at every checkpoint, not only each epoch
            saved = True
        if self.position.batch < len(self.stream) and self._stop_requested():
            if not saved:
                self.save()
            self._stop()

    def _run_epoch(self, bar) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        first_batch = self.position.batch
        # Closed on any way out (a stop, Ctrl-C, an error): its reading thread ends with it.
        with closing(self.stream.epoch(self.position.epoch, start=first_batch)) as batches:
            for images in batches:
                self.step(images)
                self._after_step(bar)
        seconds = time.perf_counter() - started
        self._stop_if_diverged()
        means = {k: dist.all_reduce_mean(v / self.epoch_sums["steps"]).item()
                 for k, v in self.epoch_sums.items() if k != "steps"}  # collective: every process
        # The last step's embeddings of the whole batch, so that the effective rank does not depend
        # on how many processes share it (as objects: some methods' rows differ across processes).
        last = None if self.last_embedding is None else torch.cat(
            [e.float() for e in dist.all_gather_objects(self.last_embedding.detach().cpu())])
        if dist.is_main():
            images_per_s = (len(self.stream) - first_batch) * cfg.train.batch_size / max(seconds, 1e-9)
            record = self._epoch_record(means, last, images_per_s, seconds)
            append_json_line(self.out / "metrics.jsonl", record)
            if self.tensorboard is not None:
                self.tensorboard.epoch(record)
        self.position.epoch += 1
        self.position.batch = 0
        self.epoch_sums = {}
        self.save()
        self.save_pictures()

    @contextmanager
    def _stop_requests(self):
        """While training, a STOP_SIGNALS signal only asks the run to stop after the step in
        progress; a Ctrl-C after that stops it at once. A signal the caller ignores (SIGINT in a
        background job) stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread
            return

        def request(number, frame):
            if number == signal.SIGINT and self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = self.stop_signal or number

        # Not replaced: a signal ignored, or handled outside Python (its handler could not be put back).
        previous = {number: handler for number in STOP_SIGNALS
                    if (handler := signal.getsignal(number)) not in (signal.SIG_IGN, None)}
        for number in previous:
            signal.signal(number, request)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop_requested(self, epoch_end: bool = False) -> bool:
        """Whether a signal asked the run to stop. Under torchrun the processes agree, so that they
        all stop after the same step: in a collective at each epoch's end and about every
        STOP_CHECK_SECONDS (the steps to the next one follow from the slowest process's pace, which
        the collective shares), well inside the 30 s torchrun and SLURM wait before killing."""
        if self.world == 1:
            return self.stop_signal is not None
        if not epoch_end and self.position.step < self.next_stop_check:
            return False
        (since, step), now = self.stop_check_from, time.perf_counter()
        seconds_per_step = (now - since) / max(1, self.position.step - step) if since else 0.0
        asked = torch.tensor([float(self.stop_signal or 0), seconds_per_step], device=self.device)
        signal_number, slowest = dist.all_reduce_max(asked).tolist()
        self.next_stop_check = self.position.step + (max(1, int(STOP_CHECK_SECONDS / slowest)) if slowest > 0 else 1)
        self.stop_check_from = (now, self.position.step)
        # A signal that came while waiting in the collective is kept for the next agreement.
        self.stop_signal = self.stop_signal or int(signal_number) or None
        return signal_number > 0

    def _stop(self) -> None:
        """After the checkpoint of a stop that a signal asked for."""
        at, epochs = self.position, self.cfg.train.epochs
        where = (f"at the end of epoch {at.epoch} of {epochs}" if at.batch == 0 else
                 f"in epoch {at.epoch + 1} of {epochs}, after step {at.step:,} of {self.total_steps:,}")
        name = signal.Signals(self.stop_signal).name
        how = "interrupted" if name == "SIGINT" else f"stopped by {name}"
        raise RunStopped(self.stop_signal, f"{how} {where}, saved in {self.out / 'last.pt'}")

    def _epoch_record(self, sums: dict[str, float], last_embedding: torch.Tensor | None, images_per_s: float,
                      seconds: float) -> dict:
        cfg, epoch = self.cfg, self.position.epoch + 1
        record = {"epoch": epoch, "step": self.position.step, **{k: round(v, 6) for k, v in sums.items()},
                  "lr": self.last_lr, "weight_decay": self.last_wd,
                  "images_per_s": round(images_per_s, 1), "epoch_seconds": round(seconds, 2)}
        if last_embedding is not None:
            record["effective_rank"] = round(monitor.effective_rank(last_embedding).item(), 3)
            if sums.get("std_ratio", 1.0) < cfg.train.collapse_warning:
                warn(f"epoch {epoch}: the embeddings may be collapsing (std ratio {sums['std_ratio']:.3f} < "
                     f"{cfg.train.collapse_warning}, effective rank {record['effective_rank']:.1f}); "
                     f"check the learning rate and the method's settings")
        every = cfg.train.monitor_every_epochs or max(1, cfg.train.epochs // 10)
        if self.knn_sets is not None and (epoch % every == 0 or epoch == cfg.train.epochs):
            knn = self._monitor_knn(epoch)
            if knn is not None:
                record["knn_top1"] = round(knn, 4)
            plot_training_curves(read_metrics(self.out) + [record], self.out / "curves.png")
            self.curves_drawn_after_epoch = epoch
        return record

    def _monitor_knn(self, epoch: int) -> float | None:
        """Weighted kNN top-1 of the encoder as it is now; None, with a warning, where its features
        are NaN or infinite (the run goes on: its loss may still recover, and its checkpoint is kept)."""
        bank, queries = self.knn_sets
        encoder, size = self.method.encoder(), self.cfg.data.image_size
        bank_features = extract_features(encoder, bank.images, size, self.device, indices=bank.rows)
        query_features = extract_features(encoder, queries.images, size, self.device, indices=queries.rows)
        broken = nonfinite_rows(bank_features) + nonfinite_rows(query_features)
        if broken:
            warn(f"epoch {epoch}: the encoder gives NaN or infinite features for {broken:,} of the "
                 f"{len(bank.rows) + len(queries.rows):,} images of the kNN monitor, which is left out; the run "
                 f"may be diverging (lower the learning rate) or its BatchNorm statistics broken")
            return None
        result = knn_accuracy(bank_features, bank.labels, query_features, queries.labels,
                              k=min(self.cfg.train.knn_k, len(bank.rows)), temperature=self.cfg.train.knn_temperature)
        return result["top1"]


@dataclass
class LabelledRows:
    """Rows of a uint8 image array with their class numbers: one side of the kNN monitor."""
    images: np.ndarray
    rows: np.ndarray
    labels: torch.Tensor
    classes: list[str]

    @classmethod
    def of(cls, cache: ImageCache) -> LabelledRows:
        return cls(cache.images, np.arange(len(cache)), torch.from_numpy(cache.labels), cache.classes)


def open_monitor_data(data: config_lib.DataConfig, show_progress: bool) -> tuple[ImageCache, ImageCache]:
    """The (train, test) caches of `data.monitor_path`, decoded as the training images are (size,
    bands), so that an evaluation of the run at its image size reads the same caches."""
    from .eval.data import open_labelled, train_and_test

    try:
        sources = train_and_test(data.monitor_path)
        if sources is not None:
            return open_labelled(data.cache_size, cache_dir=data.cache_dir, show_progress=show_progress,
                                 bands=data.bands, sources=sources)
    except UserError as e:  # said of any data (a damaged tar) or of evaluation's: say which option's it is
        raise UserError(f"{named_option('monitor_data')}: {e}") from None
    raise UserError(f"{path_option('monitor_data', data.monitor_path)} must hold train/ and test/ (or val/) "
                    f"folders, each with one subfolder per class")


def read_metrics(out: str | Path) -> list[dict]:
    return read_json_lines(Path(out) / "metrics.jsonl")


def run_pretraining(user: dict, resume: bool = False, show_progress: bool = True) -> RunResult:
    """Resolve the config (or restore it from RUN_DIR/last.pt), then train to the last epoch."""
    config_lib.check_sections(user, "config")
    with dist.process_group(user.get("train", {}).get("device", "auto")):  # under torchrun: joined first
        return _pretrain_in_process_group(user, resume, show_progress)


def _pretrain_in_process_group(user: dict, resume: bool, show_progress: bool) -> RunResult:
    # Under torchrun every process may make the run folder, and each removes what it made on a
    # refusal they all reach together; once training begins only the first, which writes into the
    # folder, does: another that failed first would remove it, still empty, from under the first.
    out, first = user.get("out"), dist.is_main()
    with removed_if_left_empty(out if first else None, keep_on=(RunFolderBusy,)):
        with removed_if_left_empty(None if first else out), stopped_at_once(), warnings_after_checks():
            cfg, checkpoint = dist.on_every_process(lambda: prepare_run(user, resume))  # a refusal: its error alone
        with run_folder_lock(Path(cfg.out)):
            with stopped_at_once():  # decoding the images may take hours
                trainer = Trainer(cfg, checkpoint, show_progress)
            write_run_config(cfg)
            write_run_provenance(cfg, trainer.device, resumed=checkpoint is not None)
            return trainer.fit()


@contextmanager
def stopped_at_once():
    """Before training there is no step to finish nor anything to save: a scheduler's SIGTERM or
    SIGUSR1 stops the run at once, as Ctrl-C does, with a line that says so (and no empty run
    folder left), where by default it would end the process without a word."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number, frame):
        raise RunStopped(number, f"stopped by {signal.Signals(number).name} before training began")

    defaults = [number for number in STOP_SIGNALS
                if number != signal.SIGINT and signal.getsignal(number) == signal.SIG_DFL]
    for number in defaults:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number in defaults:
            signal.signal(number, signal.SIG_DFL)


class RunFolderBusy(UserError):
    """Another run holds the run folder (run_folder_lock)."""


@contextmanager
def run_folder_lock(out: Path):
    """Held while a run writes into `out`: a second run given the same --out is refused at once,
    where it would interleave its checkpoints and metrics with the first's. The lock is on the
    folder itself (no file left behind), taken by the first process, and freed by the system when
    the process ends, killed or not."""
    def lock() -> int | None:
        if not dist.is_main() or fcntl is None:
            return None
        descriptor = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RunFolderBusy(f"another selfsup run is writing to {str(out)!r}; wait for it to end (then "
                                f"{said_as('--resume it', 'resume it with resume=True')}, if it stopped), "
                                f"or choose another {named_option('out')}") from None
        except OSError:  # a file system without locks (some network ones): unguarded, as before
            pass
        return descriptor

    descriptor = dist.on_every_process(lock)  # the others stop too when the first is refused
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)
