"""Evaluation of an encoder with labels: kNN, linear probe, fine-tuning, retrieval, few labels.

Each `evaluate_*` takes an encoder spec (a checkpoint or run folder, `random:BACKBONE`, or
`weights:FILE` with `backbone=NAME`) and labelled data: `train` and `test` folders laid out by
class (or tars of them), or `data`, one root holding train/ and test/; `fraction=` or
`per_class=` and `seeds=` evaluate with part of the training labels. They return a dict of
fractions in [0, 1] and append it to the run's evals.jsonl. `label_efficiency_curve` runs one of
them over several label budgets and encoders and plots the result.
"""
from .curve import label_efficiency_curve
from .data import open_labelled, prepare
from .finetune import FinetuneConfig
from .protocols import evaluate_finetune, evaluate_knn, evaluate_linear, evaluate_retrieval

__all__ = ["evaluate_knn", "evaluate_linear", "evaluate_finetune", "evaluate_retrieval", "label_efficiency_curve",
           "FinetuneConfig", "open_labelled", "prepare"]
