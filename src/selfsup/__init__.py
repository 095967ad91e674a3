"""selfsup: self-supervised visual representation learning.

    import selfsup
    run = selfsup.pretrain(method="simclr", data="images/", out="runs/simclr", epochs=100, image_size=32)
    print(selfsup.evaluate_knn(run.checkpoint, train="labelled/train", test="labelled/test"))
    selfsup.export_encoder(run.checkpoint, "encoder.safetensors")
    selfsup.embed_images(run.checkpoint, "images/", "embeddings.npy")
"""
from __future__ import annotations

from pathlib import Path

from .lazy import lazy_exports

__version__ = "0.1.0"


def pretrain(method: str | None = None, data: str | Path | None = None, out: str | Path | None = None,
             config: str | Path | dict | None = None, resume: bool = False, show_progress: bool = True,
             **options):
    """Pretrain an encoder; returns a `RunResult` (run folder, checkpoint path, config, metrics).

    `options` are the command line's flags with underscores (epochs=, batch_size=, lr=, backbone=,
    image_size=, device=, seed=, ...); `config` is a YAML path or a nested dict of any config value
    (e.g. {"optim": {"weight_decay": 1e-5}, "simclr": {"temperature": 0.2}}); flags win. Without a
    method (here or in `config`), SimCLR; on `resume`, the run's own.
    """
    from .cli import flags_to_config
    from .config import load_yaml, merge_dicts
    from .train import run_pretraining

    user = load_yaml(config) if isinstance(config, (str, Path)) else dict(config or {})
    flags = {"method": method, "data": str(data) if data is not None else None,
             "out": str(out) if out is not None else None, **options}
    return run_pretraining(merge_dicts(user, flags_to_config(flags)), resume=resume, show_progress=show_progress)


# The rest of the API is imported on first use (see lazy.py).
_LAZY = {"load_encoder": ".encoder", "UserError": ".errors", "evaluate_finetune": ".eval",
         "evaluate_knn": ".eval", "evaluate_linear": ".eval", "evaluate_retrieval": ".eval",
         "label_efficiency_curve": ".eval", "embed_images": ".export", "export_encoder": ".export",
         "load_exported": ".export", "build_report": ".report", "cluster_images": ".explore",
         "search_images": ".explore", "select_images": ".selection"}

__all__ = ["pretrain", "__version__", *_LAZY]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
