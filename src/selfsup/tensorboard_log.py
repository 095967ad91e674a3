"""TensorBoard scalars of a pretraining run (`--tensorboard`, `train.tensorboard`), in RUN_DIR/tensorboard.

Every figure of an epoch's metrics.jsonl line goes under `epoch/` (at the epoch's last step), and
every `train.log_every_steps` steps the mean loss of those steps (the trainer keeps the sum, in
its checkpoint too) and the learning rate under `step/`, so a long epoch is seen while it runs.
Under torchrun the first process writes, `step/` from its own batches. Other trackers read these files: `wandb sync
RUN_DIR/tensorboard`, for one.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

FOLDER = "tensorboard"
INSTALL = "pip install 'selfsup[tensorboard]' (or pip install tensorboard)"


def summary_writer(resuming: bool = False):
    """torch's SummaryWriter class; a UserError without the tensorboard package (called before
    any work, so that a run asking for it is refused at once)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from .console import option, setting

        without = (f"resume with {setting('train.tensorboard', False)}" if resuming
                   else f"run without {option('tensorboard', True)}")
        needs = ("this run writes TensorBoard scalars, which need" if resuming
                 else f"{option('tensorboard', True)} needs")
        raise UserError(f"{needs} "
                        f"the tensorboard package: {INSTALL}; or {without} (metrics.jsonl and curves.png hold the "
                        f"same figures)") from None
    return SummaryWriter


class TensorBoardLog:
    def __init__(self, run_dir: Path, from_step: int, config_yaml: str, earlier_epochs: list[dict]):
        """`from_step`: the step the run starts or resumes at. Events a killed run wrote after its
        checkpoint are hidden (TensorBoard's purge), so a resumed curve has no doubled stretch;
        those of the checkpoint's own step were written before it, and stay. A run that logs here
        for the first time (a new run, or --tensorboard given at --resume) first writes its config
        and `earlier_epochs` (its metrics.jsonl lines so far)."""
        first_time = from_step == 0 or not (run_dir / FOLDER).exists()
        self.writer = summary_writer()(str(run_dir / FOLDER), purge_step=from_step + 1)
        if first_time:  # the config indented four spaces: shown as written, not as markdown
            self.writer.add_text("config", "".join(f"    {line}\n" for line in config_yaml.splitlines()), from_step)
            for record in earlier_epochs:
                self.epoch(record)

    def epoch(self, record: dict) -> None:
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, record["step"])
        self.writer.flush()

    def steps(self, step: int, mean_loss: float, lr: float) -> None:
        self.writer.add_scalar("step/loss", mean_loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def close(self) -> None:
        self.writer.close()
