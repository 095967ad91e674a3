"""Peak memory and time of one path of the embedding commands (curate, search, cluster, select,
eval retrieval) on N synthetic unit vectors of dimension D: one JSON line. Linux only (it reads
/proc/self/status and resets the peak after making the data, so the peak is the path's).

    PYTHONPATH=src python bench/embedding_memory.py PATH N D      # e.g. cluster 1000000 512

PATH: nearest_curation, dedup, dedup_overhead, curate_vectors, retrieve, eval_retrieve, eval_retrieve_exact,
eval_map, cluster, select_kcenter, select_typiclust, select_typiclust_overhead (see the branches below).
Figures: BENCHMARKS.md, "Memory of the embedding commands at 10^5 and 10^6"."""
import json, sys, time
import numpy as np, torch

path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
v = rng.standard_normal((n, d), dtype=np.float32)
v /= np.linalg.norm(v, axis=1, keepdims=True)
v[n // 2: n // 2 + 50] = v[:50]  # some exact copies, for dedup


def status(key):  # GiB
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1]) / 2**20


open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here: the path's, not the data's generation
base_rss = status("VmRSS")
extra = {}
t = time.perf_counter()
if path == "nearest_curation":  # dedup's first pass, curate retrieval, selfsup search: CURATION policy
    from selfsup.curate.search import nearest
    s, i, used = nearest(v[:536], v, 17, "exact"); extra["queries"] = 536
elif path == "dedup":  # whole duplicate_groups, exact
    from selfsup.curate.dedup import duplicate_groups
    extra["groups"] = len(duplicate_groups(v, 0.95, [f"{i:07d}" for i in range(n)], backend="exact"))
elif path == "dedup_overhead":  # duplicate_groups with the search stubbed (each row finds itself only)
    from selfsup.curate import dedup

    def stub(q, g, k, backend, device):
        return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64), "stub"
    dedup.nearest = stub
    extra["groups"] = len(dedup.duplicate_groups(v, 0.95, [f"{i:07d}" for i in range(n)], backend="exact"))
elif path == "curate_vectors":  # curate() from its embeddings to its outputs: centring, dedup (search stubbed:
    # the 50 planted copies are found without it), 1,000 seeds' 10 nearest (exact); embedding and writing stubbed
    import tempfile, types
    from selfsup import curate as c
    from selfsup.curate import dedup
    from selfsup.curate.embedding import Embedded
    dedup.nearest = lambda q, g, k, backend, device: (np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64), "stub")
    names = [f"{i:07d}.png" for i in range(n)]
    source = types.SimpleNamespace(names=names, file_path=lambda name: name)
    seeds = Embedded(names[:1000], v[:1000].copy(), [])
    c.load_encoder = lambda *a, **k: types.SimpleNamespace(bands=None)
    c._open = lambda given, what: source
    c.refuse_out_inside = lambda *a: None
    c.embedding_dir = lambda *a: None
    c.embed_source = lambda encoder, src, *a, **k: Embedded(names, v, []) if "pool" in k["desc"] else seeds
    c._write_outputs = lambda *a: {"data": "stub"}
    c._write_removed = lambda *a: {}
    summary = c.curate("pool", "seeds", "checkpoint", tempfile.mkdtemp(), config=c.CurateConfig(backend="exact"),
                       device="cpu", show_progress=False)
    extra.update(seeds=1000, removed=summary["removed_as_duplicates"], retrieved=summary["retrieved"])
elif path == "retrieve":  # curate's nearest-neighbour retrieval: 1,000 seeds
    from selfsup.curate.retrieve import nearest_to_seeds
    nearest_to_seeds(v[:1000], v, 10, "exact"); extra["seeds"] = 1000
elif path == "eval_retrieve":  # eval retrieval's neighbour lists (RETRIEVAL_SEARCH): 2,048 queries
    from selfsup.eval.retrieval import retrieve
    retrieve(torch.from_numpy(v[:1024]), torch.from_numpy(v), 10); extra["queries"] = 1024
elif path == "eval_retrieve_exact":  # the same without faiss (the venv has faiss-cpu: "auto" picked faiss-flat)
    from selfsup.curate import search
    search.faiss_available = lambda: False
    from selfsup.eval.retrieval import retrieve
    retrieve(torch.from_numpy(v[:1024]), torch.from_numpy(v), 10); extra["queries"] = 1024
elif path == "eval_map":  # eval retrieval's mAP: 64 queries over the whole ranking
    from selfsup.eval.retrieval import mean_average_precision
    labels = torch.from_numpy(rng.integers(0, 100, n))
    mean_average_precision(torch.from_numpy(v[:32]), torch.from_numpy(v), labels[:32], labels); extra["queries"] = 32
elif path == "cluster":  # cluster_images after embedding: centring, k-means (1 iteration, 100 clusters), cosine to centre
    from selfsup.curate.search import centred, kmeans
    from selfsup import explore
    vectors = centred(v, v.mean(axis=0))
    centroids, assignment = kmeans(vectors, 100, iterations=1, seed=0, init="random", restarts=1)
    similarity = explore.cosine_to_centre(vectors, centroids, assignment)
elif path == "select_kcenter":
    from selfsup.selection import choose
    labelled = np.zeros(n, bool); labelled[rng.choice(n, 1000, replace=False)] = True
    choose(v, 20, labelled, "kcenter")
elif path == "select_typiclust_overhead":  # TypiClust's choosing, budget 1,000 in 500 groups, with k-means and
    # typicality stubbed (random groups; every typicality 0): what the choices cost beside them
    from selfsup import selection
    selection.kmeans = lambda x, k, **kw: (None, rng.integers(0, k, len(x)))
    selection.typicality = lambda x, k: torch.zeros(len(x))
    selection.choose(v, 1000, np.zeros(n, bool), "typiclust")
elif path == "select_typiclust":
    from selfsup.selection import choose
    choose(v, 20, np.zeros(n, bool), "typiclust")
seconds = time.perf_counter() - t
peak = status("VmHWM")
print(json.dumps({"path": path, "N": n, "D": d, "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2),
                  "rss_before_path_gib": round(base_rss, 2), "data_gib": round(v.nbytes / 2**30, 2), **extra}), flush=True)
