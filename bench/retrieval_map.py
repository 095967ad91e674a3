"""Time of eval retrieval's mAP (`mean_average_precision`) over the whole ranking of a synthetic
gallery: N unit vectors of dimension D in C classes, queries that are noisy copies of gallery
rows (so that AP is neither 0 nor 1). One JSON line: seconds, per query, the mAP.

    PYTHONPATH=src python bench/retrieval_map.py N C QUERIES [D]     # e.g. 1000000 1000 200

Figures: BENCHMARKS.md, "Memory of the embedding commands"."""
import json
import sys
import time

import numpy as np
import torch

from selfsup.eval.retrieval import mean_average_precision

n, classes, queries = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dim = int(sys.argv[4]) if len(sys.argv) > 4 else 512
rng = np.random.default_rng(0)
gallery = torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32))
gallery_labels = torch.from_numpy(rng.integers(0, classes, n))
picked = torch.from_numpy(rng.choice(n, queries, replace=False))
noisy = gallery[picked] + 3 * torch.from_numpy(rng.standard_normal((queries, dim), dtype=np.float32))
start = time.perf_counter()
value = mean_average_precision(noisy, gallery, gallery_labels[picked], gallery_labels)
seconds = time.perf_counter() - start
print(json.dumps({"N": n, "classes": classes, "queries": queries, "D": dim, "seconds": round(seconds, 2),
                  "ms_per_query": round(1000 * seconds / queries, 1), "map": value}), flush=True)
