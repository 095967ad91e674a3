"""The faiss inverted-file search of `selfsup curate` on a pool of 10^6: index build against
per-query cost, and recall against exact search (complements bench/curate_search.py, whose
time per query counts the index build, so its linear projection overstates faiss-ivf).

    python bench/curate_search_ivf.py [--pool 1000000] [--dim 384] [--queries 1000 10000]

Same synthetic unit vectors as bench/curate_search.py (seed 0). Times `search.nearest(...,
backend="faiss")` (which builds the index each call) for two query counts; the difference gives
the cost per query, the rest the build. Recall@k: the share of the exact k nearest neighbours
(matrix products on the first --queries[0] queries) that faiss returns. Unit vectors drawn
uniformly on the sphere have no cluster structure, the worst case for an inverted-file index, and
their true neighbours are barely closer than any other vector; what deduplication needs is that a
near-copy is found, so a planted copy (cosine about 0.96 to its query) of each of the first
--queries[0] vectors replaces a later pool vector, and `planted_found` is the share of them that
faiss returns among the query's k nearest. (Each query is itself in the pool: its own index is
always found and counts in recall.)
"""
import argparse
import json
import time

import numpy as np

from selfsup.curate import search

parser = argparse.ArgumentParser()
parser.add_argument("--pool", type=int, default=1_000_000)
parser.add_argument("--dim", type=int, default=384)
parser.add_argument("--queries", type=int, nargs=2, default=[1000, 10_000])
parser.add_argument("--k", type=int, default=10)
args = parser.parse_args()

rng = np.random.default_rng(0)
pool = rng.standard_normal((args.pool, args.dim), dtype=np.float32)
pool /= np.linalg.norm(pool, axis=1, keepdims=True)
few, many = args.queries
partner = np.arange(many, many + few)  # planted copies of the first `few` vectors, after all queries
noise = rng.standard_normal((few, args.dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(args.dim))
pool[partner] = pool[:few] + noise
pool[partner] /= np.linalg.norm(pool[partner], axis=1, keepdims=True)
planted_cos = (pool[:few] * pool[partner]).sum(1)

start = time.perf_counter()
_, exact_idx, _ = search.nearest(pool[:few], pool, args.k, backend="exact")
exact_s = time.perf_counter() - start

times, found = {}, {}
for q in (few, many):
    start = time.perf_counter()
    _, idx, used = search.nearest(pool[:q], pool, args.k, backend="faiss")
    times[q] = time.perf_counter() - start
    found[q] = idx[:few]
per_query = (times[many] - times[few]) / (many - few)
build = times[few] - few * per_query
recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact_idx, found[few])])
print(json.dumps({"pool": args.pool, "dim": args.dim, "k": args.k, "backend": used,
                  "exact_s_for_%d" % few: round(exact_s, 2),
                  "faiss_s": {str(q): round(t, 2) for q, t in times.items()},
                  "faiss_build_s": round(build, 1), "faiss_ms_per_query": round(1000 * per_query, 3),
                  "faiss_queries_per_s_after_build": round(1 / per_query) if per_query > 0 else None,
                  "projected_dedup_s": round(build + args.pool * per_query, 1),
                  "recall_at_k_vs_exact": round(float(recall), 4),
                  "planted_cos_min_median": [round(float(planted_cos.min()), 3), round(float(np.median(planted_cos)), 3)],
                  "planted_found_exact": round(float(np.mean([p in row for p, row in zip(partner, exact_idx)])), 4),
                  "planted_found_faiss": round(float(np.mean([p in row for p, row in zip(partner, found[few])])), 4)}),
      flush=True)
