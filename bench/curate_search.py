"""Curation search throughput: k-nearest-neighbour search over synthetic unit vectors,
exact (matrix products) against faiss, for pools of 10^5 and 10^6 embeddings.

    python bench/curate_search.py [--dim 384] [--queries 10000] [--pools 100000 1000000]

Prints one JSON line per (pool size, backend): seconds for `--queries` queries (k=10), and the
projected time to deduplicate the whole pool (every image a query), linear in the query count.
"""
import argparse
import json
import time

import numpy as np

from selfsup.curate import search

parser = argparse.ArgumentParser()
parser.add_argument("--dim", type=int, default=384)
parser.add_argument("--queries", type=int, default=10_000)
parser.add_argument("--pools", type=int, nargs="+", default=[100_000, 1_000_000])
parser.add_argument("--k", type=int, default=10)
args = parser.parse_args()

rng = np.random.default_rng(0)
for size in args.pools:
    pool = rng.standard_normal((size, args.dim), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[: args.queries]
    for backend in ["exact"] + (["faiss"] if search.faiss_available() else []):
        start = time.perf_counter()
        _, _, used = search.nearest(queries, pool, args.k, backend=backend)
        seconds = time.perf_counter() - start
        print(json.dumps({"pool": size, "dim": args.dim, "queries": args.queries, "backend": used,
                          "seconds": round(seconds, 2), "queries_per_s": round(args.queries / seconds),
                          "projected_dedup_s": round(seconds * size / args.queries, 1)}), flush=True)
