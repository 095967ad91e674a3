"""`selfsup report`: one self-contained HTML page about one or more pretraining runs.

Per run: its configuration, training curves (loss, learning rate, collapse monitor, online kNN)
from metrics.jsonl, the evaluations recorded in evals.jsonl, the latest label-efficiency curve of
each protocol, settings and data, a nearest-neighbour grid for fixed test queries, a 2-D map of the test embeddings
coloured by class, and every PNG the method drew into the run folder. Several runs also get a
comparison table (with the figures of their curves, and a row per baseline in them). Pictures that
need labelled images use `data` (or `train` and `test`), else the run's own pretraining data when
it holds train/ and test/ with class folders.
"""
from ..lazy import lazy_exports

__all__ = ["build_report"]
__getattr__, __dir__ = lazy_exports(__name__, {"build_report": ".build"})
