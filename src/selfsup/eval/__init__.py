"""Evaluation of an encoder with labels: kNN, linear probe, fine-tuning, retrieval, few labels.

Each `evaluate_*` takes an encoder spec (a checkpoint or run folder, `random:BACKBONE`, or
`weights:FILE` with `backbone=NAME`) and labelled data: `train` and `test` folders laid out by
class (or tars of them), or `data`, one root holding train/ and test/; `fraction=` or
`per_class=` and `seeds=` evaluate with part of the training labels. They return a dict of
fractions in [0, 1] and append it to the run's evals.jsonl. `label_efficiency_curve` runs one of
them over several label budgets and encoders and plots the result.
"""
from ..lazy import lazy_exports

_LAZY = {"label_efficiency_curve": ".curve", "open_labelled": ".data", "prepare": ".data",
         "FinetuneConfig": ".finetune", "evaluate_finetune": ".protocols", "evaluate_knn": ".protocols",
         "evaluate_linear": ".protocols", "evaluate_retrieval": ".protocols"}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
