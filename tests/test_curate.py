"""Curation: search against brute force, deduplication, exclusion, retrieval, resume, bad input."""
import dataclasses
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.curate import CurateConfig, curate, rows_to_front
from selfsup.curate import embedding as embedding_module
from selfsup.curate import search
from selfsup.curate.dedup import duplicate_groups, duplicates_to_drop, near_any
from selfsup.curate.retrieve import from_nearest_clusters, nearest_to_seeds
from selfsup.data import open_source
from selfsup.errors import UserError

from conftest import SAMPLE


def unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, gallery, k):
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.mark.parametrize("seed", range(3))
def test_exact_and_faiss_search_agree_with_brute_force(seed):
    queries, gallery = unit(40, 16, seed), unit(500, 16, seed + 10)
    ref_sims, ref_idx = brute_force(queries, gallery, 7)
    sims, idx, used = search.nearest(queries, gallery, 7, backend="exact")
    assert used == "exact"
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    pytest.importorskip("faiss")
    sims, idx, used = search.nearest(queries, gallery, 7, backend="faiss")
    assert used == "faiss-flat"
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)


def assert_best_k(sims, idx, reference, k):
    """`sims`, `idx` (Q, min(k, N)) hold, best first, the k rows of largest `reference` similarity
    (Q, N), float64, in any order among rows whose similarities lie within float32's error of each
    other. A -inf in `reference` is a row left out."""
    tolerance = 1e-5
    candidates = int(np.isfinite(reference).sum(1).min()) if len(reference) else 0
    assert sims.shape == idx.shape == (len(reference), min(k, candidates))
    best = -np.sort(-reference, axis=1)[:, :idx.shape[1]]
    for row, got, expected, found in zip(idx, sims, best, reference):
        assert len(set(row.tolist())) == len(row)  # no row twice
        np.testing.assert_allclose(got, found[row], atol=tolerance)  # each similarity is its row's
        np.testing.assert_allclose(got, expected, atol=tolerance)  # and they are the k largest, best first
        assert (np.diff(got) <= 0).all()
        for rank, j in enumerate(row):  # a similarity no other row comes near: its row in its place
            if (np.abs(np.delete(found, j) - found[j]) > tolerance).all():
                assert j == np.argsort(-found, kind="stable")[rank]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("policy", ["curation", "retrieval", "3 queries a product"])
@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_nearest_matches_float64_brute_force_with_ties_and_short_galleries(seed, policy, backend):
    """The one search of curation, `selfsup search` and `eval retrieval`, each with its policy,
    against float64 products of the same unit rows: galleries with exact copies (tied
    similarities), k from 1 to beyond the gallery, no queries, and queries that are gallery rows
    left out of their own lists the way `selfsup search` does it (one more asked, its row dropped)."""
    from selfsup.eval.retrieval import RETRIEVAL_SEARCH, unit_rows

    if backend == "faiss":
        pytest.importorskip("faiss")
    policy = {"curation": search.CURATION, "retrieval": RETRIEVAL_SEARCH,
              "3 queries a product": dataclasses.replace(search.CURATION, query_rows=3)}[policy]
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 40)), int(rng.integers(2, 9))
    features = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))  # unnormalised, as an encoder's
    features[rng.integers(0, n, n // 3)] = features[rng.integers(0, n, n // 3)]  # copies: exact ties
    gallery = unit_rows(torch.from_numpy(features))
    queries = unit_rows(torch.from_numpy(np.concatenate([rng.normal(size=(11, d)), features[rng.integers(0, n, 4)]])))
    reference = queries.astype(np.float64) @ gallery.astype(np.float64).T  # (Q, N)
    for k in sorted({1, 2, 5, n, n + 7}):
        sims, idx, used = search.nearest(queries, gallery, k, backend, policy=policy)
        assert used == ("exact" if backend == "exact" else "faiss-flat")
        assert sims.dtype == np.float32 and idx.dtype == np.int64
        assert_best_k(sims, idx, reference, k)

    own = rng.permutation(n)[:6]  # queries that are gallery rows
    reference = gallery[own].astype(np.float64) @ gallery.astype(np.float64).T
    reference[np.arange(len(own)), own] = -np.inf
    for k in sorted({1, 3, n - 1, n + 2}):
        sims, idx, _ = search.nearest(gallery[own], gallery, min(n, k + 1), backend, policy=policy)
        kept = [np.flatnonzero(row != me)[:k] for me, row in zip(own, idx)]
        assert_best_k(np.stack([s[c] for s, c in zip(sims, kept)]), np.stack([i[c] for i, c in zip(idx, kept)]),
                      reference, k)

    sims, idx, _ = search.nearest(queries[:0], gallery, 3, backend, policy=policy)
    assert sims.shape == idx.shape == (0, min(3, n))


@pytest.mark.parametrize("query_rows", [None, 3])
def test_exact_search_keeps_every_product_under_the_block_budget(monkeypatch, query_rows):
    """With a policy's fixed queries per product (eval retrieval: 1,024) the block grew with the
    gallery, 4 GB for a million images; the gallery is now cut, and the neighbours and their
    similarities are bit for bit those of one product with the whole gallery."""
    queries, gallery = unit(10, 8, 0), unit(500, 8, 1)
    budget = 4 * 3 * 40  # 3 queries by 40 gallery rows
    policy = dataclasses.replace(search.CURATION, query_rows=query_rows)
    rows = query_rows or budget // 4 // len(gallery) or 1  # the queries a product takes under that budget
    whole_sims, whole_idx, _ = search.nearest(queries, gallery, 7, "exact",
                                              policy=dataclasses.replace(policy, query_rows=rows))
    largest, matmul = [0], torch.Tensor.__matmul__

    def noting(a, b):
        product = matmul(a, b)
        largest[0] = max(largest[0], product.numel())
        return product

    monkeypatch.setattr(search, "BLOCK_BYTES", budget)
    monkeypatch.setattr(torch.Tensor, "__matmul__", noting)
    sims, idx, _ = search.nearest(queries, gallery, 7, "exact", policy=policy)
    assert 0 < largest[0] <= 3 * 40
    np.testing.assert_array_equal(sims, whole_sims)
    np.testing.assert_array_equal(idx, whole_idx)
    sims, idx, _ = search.nearest(queries, gallery[:2], 7, "exact", policy=policy)  # fewer rows than k
    np.testing.assert_array_equal(idx, search.nearest(queries, gallery[:2], 7, "exact")[1])


def test_block_shape_of_a_million_gallery_images():
    from selfsup.eval.retrieval import RETRIEVAL_SEARCH

    for policy in (search.CURATION, RETRIEVAL_SEARCH):
        rows, columns = search.block_shape(1_000_000, policy.query_rows)
        assert 4 * rows * columns <= search.BLOCK_BYTES
    assert search.block_shape(1_000_000, RETRIEVAL_SEARCH.query_rows)[0] == 1024  # its products keep their rows
    assert search.block_shape(1_000_000, None) == (134, 1_000_000)  # as before: queries fill the block


def test_centred_makes_one_copy_and_the_same_vectors(monkeypatch):
    """The vectors of a million images are 2 GB: renormalising them all at once held two more copies."""
    import tracemalloc

    monkeypatch.setattr(search, "NORM_ROWS", 1000, raising=False)
    x = unit(20_000, 64, 0) * 3
    mean = x.mean(axis=0)
    expected = (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True).clip(1e-12)
    tracemalloc.start()
    got = search.centred(x, mean)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < 1.5 * x.nbytes


def test_centred_in_place_writes_the_same_floats_over_its_input():
    """curate centres the pool over its embeddings: a second copy was 2 GB for a million 512-d images."""
    x = unit(5000, 32, 3) * 2
    mean = x.mean(axis=0)
    expected = search.centred(x, mean)
    got = search.centred(x, mean, in_place=True)
    assert got is x
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("block", [1, 3, 64, 10_000])
def test_rows_to_front_gives_the_rows_taken_without_a_copy(block):
    """curate's kept pool rows: the same floats, in the same order, as `vectors[rows]`, in the
    pool's own memory (a copy of the kept rows was another 2 GB for a million 512-d images)."""
    rng = np.random.default_rng(block)
    for n in (1, 2, 50, 1000):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        for rows in (np.arange(n), np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False)),
                     np.array([n - 1]), np.arange(0, n, 2)):
            expected = x[rows]
            pool = x.copy()
            got = rows_to_front(pool, rows, block=block)
            np.testing.assert_array_equal(got, expected)
            assert np.shares_memory(got, pool) and got.flags.c_contiguous


def test_faiss_inverted_file_index_recalls_the_exact_neighbours():
    pytest.importorskip("faiss")
    queries, gallery = unit(50, 16, 1), unit(3000, 16, 2)
    _, ref_idx = brute_force(queries, gallery, 5)
    policy = dataclasses.replace(search.CURATION, inverted_file_from=1000)
    _, idx, used = search.nearest(queries, gallery, 5, backend="faiss", policy=policy)
    assert used == "faiss-ivf"
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, ref_idx)])
    assert recall > 0.95


def test_duplicate_groups_search_the_pool_itself_not_a_copy(monkeypatch):
    """The first pass asks for every row's neighbours: a copy of the pool as queries was 2 GB more
    for a million 512-d embeddings."""
    from selfsup.curate import dedup

    vectors = unit(50, 8, 0)
    vectors[10] = vectors[3]
    asked, search_nearest = [], dedup.nearest

    def noting(queries, gallery, k, backend, device):
        asked.append(queries is gallery)
        return search_nearest(queries, gallery, k, backend, device)

    monkeypatch.setattr(dedup, "nearest", noting)
    assert duplicate_groups(vectors, 0.95, backend="exact") == [[3, 10]]
    assert asked[0]


def test_duplicate_groups_find_planted_copies_whatever_the_order():
    base = unit(60, 32, 0)
    rng = np.random.default_rng(1)
    noisy = base[:10] + 0.02 * rng.normal(size=(10, 32)).astype(np.float32)
    vectors = np.concatenate([base, base[10:15], noisy])  # 5 exact copies, 10 near copies
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"img{i:03d}" for i in range(60)] + [f"copy{i:03d}" for i in range(10, 15)] + \
            [f"near{i:03d}" for i in range(10)]
    groups = duplicate_groups(vectors, threshold=0.95, names=names, backend="exact")
    assert sorted(sorted(names[i] for i in g) for g in groups) == sorted(
        [[f"copy{i:03d}", f"img{i:03d}"] for i in range(10, 15)] + [[f"img{i:03d}", f"near{i:03d}"] for i in range(10)])
    dropped = {names[i] for i in duplicates_to_drop(groups)}
    # The name that sorts first stays: 'copy' < 'img' < 'near'.
    assert dropped == {f"img{i:03d}" for i in range(10, 15)} | {f"near{i:03d}" for i in range(10)}
    order = np.random.default_rng(2).permutation(len(names))
    shuffled_names = [names[i] for i in order]
    shuffled_groups = duplicate_groups(vectors[order], threshold=0.95, names=shuffled_names, backend="exact")
    assert {shuffled_names[i] for i in duplicates_to_drop(shuffled_groups)} == dropped
    # A chain a~b~c: b goes as a copy of a; c stays, as it is not close to a, the image kept.
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.25), np.sin(0.25), 0.0])
    c = np.array([np.cos(0.5), np.sin(0.5), 0.0])
    chain = np.stack([a, b, c, [0, 0, 1.0]]).astype(np.float32)
    assert duplicate_groups(chain, 0.96, names=["a", "b", "c", "d"], backend="exact") == [[0, 1]]
    assert duplicate_groups(chain, 0.96, names=["z", "b", "c", "d"], backend="exact") == [[1, 0, 2]]  # b first


def star_groups_by_brute_force(vectors, threshold):
    """The definition: rows in order; each one not yet grouped keeps itself and takes every row
    not yet grouped whose cosine similarity with it reaches the threshold."""
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    grouped, groups = np.zeros(len(vectors), bool), []
    for i in range(len(vectors)):
        if not grouped[i]:
            copies = [j for j in range(len(vectors)) if j != i and not grouped[j] and sims[i, j] >= threshold]
            grouped[[i, *copies]] = True
            if copies:
                groups.append([i, *copies])
    return groups


@pytest.mark.parametrize("copies", [3, 40, 150])
def test_a_picture_with_more_copies_than_the_first_search_is_one_group(copies):
    rng = np.random.default_rng(copies)
    distinct = unit(200, 32, 7)
    picture = distinct[0]
    planted = picture + 0.01 * rng.normal(size=(copies, 32)).astype(np.float32)
    vectors = np.concatenate([distinct, planted]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = duplicate_groups(vectors, threshold=0.95, neighbours=4, backend="exact")
    assert groups == star_groups_by_brute_force(vectors, 0.95)
    assert [0, *range(200, 200 + copies)] in groups  # the picture keeps its first copy, the rest go
    # With a threshold every pair passes, one image is kept of all.
    assert duplicates_to_drop(duplicate_groups(vectors[:60], threshold=-1.0, neighbours=4)) == set(range(1, 60))


@pytest.mark.parametrize("seed", range(3))
def test_one_picture_saved_thousands_of_times_is_searched_once(monkeypatch, seed):
    """A placeholder repeated through a scraped folder: its M identical embeddings were each
    searched with k past M, M x M pairs held (1.2 GB of arrays and 10^8 set entries at M =
    10,000). Searched once, with the same groups as the definition, near copies included."""
    from selfsup.curate import dedup

    rng = np.random.default_rng(seed + 100)  # not unit()'s stream: noise along a vector is no noise
    distinct = unit(120, 16, seed)
    placeholder = np.repeat(distinct[:1], 1500, axis=0)
    near = distinct[1:2] + 0.01 * rng.normal(size=(30, 16)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    vectors = np.concatenate([distinct, placeholder, np.repeat(distinct[1:2], 40, axis=0), near])
    vectors = vectors[rng.permutation(len(vectors))]
    searches, search_nearest = [], dedup.nearest

    def noting(queries, gallery, k, backend, device):
        searches.append((queries is gallery, len(queries) * k))
        return search_nearest(queries, gallery, k, backend, device)

    monkeypatch.setattr(dedup, "nearest", noting)
    groups = duplicate_groups(vectors, threshold=0.95, neighbours=4, backend="exact")
    assert searches[0][0]  # the pool itself, not a copy of it
    # Searched again: the picture's first row and its 30 near copies, with k past 1,541; its
    # 1,500 other rows each past 1,541 would be 1,500 x 2,048 results.
    assert sum(cells for _, cells in searches[1:]) <= 40 * 2048
    assert groups == star_groups_by_brute_force(vectors, 0.95)
    assert sorted(len(g) for g in groups)[-1] == 1501  # the picture and its 1,500 copies
    assert duplicate_groups(vectors, threshold=1.5, backend="exact") == []  # not even identical rows reach 1.5
    exact = duplicate_groups(vectors, threshold=1.0, backend="exact")  # whatever their rounding: a cosine of 1
    assert sorted(len(g) for g in exact) == [41, 1501]


def test_near_any_and_retrieval_against_brute_force():
    pool, seeds = unit(300, 8, 3), unit(4, 8, 4)
    idx = nearest_to_seeds(seeds, pool, 6, backend="exact")
    np.testing.assert_array_equal(idx, brute_force(seeds, pool, 6)[1])
    others = np.concatenate([pool[[5, 17]], unit(3, 8, 5)])
    assert set(np.flatnonzero(near_any(pool, others, 0.999, backend="exact"))) == {5, 17}


def test_cluster_sampling_draws_the_requested_counts():
    rng = np.random.default_rng(0)
    centres = unit(5, 16, 6)
    pool = np.concatenate([c + 0.05 * rng.normal(size=(n, 16)) for c, n in zip(centres, [40, 30, 20, 10, 3])])
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float32)
    seeds = centres[[0, 4]]
    drawn = from_nearest_clusters(seeds, pool, clusters=5, per_cluster=8, seed=1)
    assert len(drawn) == 2
    sizes = sorted(len(v) for v in drawn.values())
    assert sizes == [3, 8]  # the small cluster gives all it has
    again = from_nearest_clusters(seeds, pool, clusters=5, per_cluster=8, seed=1)
    assert all(np.array_equal(drawn[k], again[k]) for k in drawn)
    for members in drawn.values():
        assert len(set(members.tolist())) == len(members)


# ---------------------------------------------------------------------------------------------
# End to end on CIFAR images with planted copies


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A pool of 120 CIFAR images at 64 px with planted copies: 8 re-compressed, 8 resized, 8
    cropped by 2 px a side; 6 evaluation images with resized copies leaked into the pool; 4 seeds."""
    root = tmp_path_factory.mktemp("curate")
    with tarfile.open(SAMPLE, "r|*") as tar:
        items = sorted((m.name, tar.extractfile(m).read()) for m in tar if m.isfile())
    train = [i for i in items if "/train/" in i[0]][::40][:120]
    test = [i for i in items if "/test/" in i[0]]
    pool, evaluation, seeds = root / "pool", root / "eval", root / "seeds"
    for d in (pool, evaluation, seeds):
        d.mkdir()

    def big(data):
        return Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BICUBIC)

    for name, data in train:
        big(data).save(pool / f"{Path(name).parent.name}-{Path(name).stem}.png")
    copies = {}
    for i, (name, data) in enumerate(train[:24]):
        original = f"{Path(name).parent.name}-{Path(name).stem}.png"
        img, copy = big(data), pool / f"copy{i:02d}.{'jpg' if i < 8 else 'png'}"
        if i < 8:
            img.save(copy, quality=50)
        elif i < 16:
            img.resize((96, 96), Image.BICUBIC).save(copy)
        else:
            img.crop((2, 2, 62, 62)).save(copy)
        copies[copy.name] = original
    for i, (name, data) in enumerate(test[::100][:6]):
        big(data).save(evaluation / f"eval{i}.png")
        big(data).resize((80, 80), Image.BICUBIC).save(pool / f"leak{i}.png")
    for i, (name, data) in enumerate([t for t in test if "/ship/" in t[0]][:4]):
        big(data).save(seeds / f"seed{i}.png")
    return root, copies


def test_curate_removes_planted_copies_and_leaks_and_retrieves_nearest(planted, monkeypatch):
    import selfsup.curate
    root, copies = planted
    out = root / "out"
    drawn = {}
    draw = selfsup.curate.draw_rows
    monkeypatch.setattr(selfsup.curate, "draw_rows", lambda rows, path, *a, **k: drawn.setdefault(path.name, rows)
                        and draw(rows, path, *a, **k))
    summary = curate(root / "pool", root / "seeds", "random:resnet18", out, exclude=root / "eval",
                     config=CurateConfig(threshold=0.84, k=5, chunk_size=64), image_size=64, small_stem=False, device="cpu",
                     show_progress=False)
    pool_names = open_source(root / "pool", whole=True).names
    assert summary["pool"] == len(pool_names) == 120 + 24 + 6
    # Every planted copy is found (its group holds its original), and no two originals are grouped.
    assert summary["duplicate_groups"] == 24 and summary["removed_as_duplicates"] == 24
    assert summary["excluded"] == 6
    groups = {frozenset(line.split("\t")) for line in (out / "duplicates.txt").read_text().splitlines()}
    assert groups == {frozenset({copy, original}) for copy, original in copies.items()}
    assert (out / "excluded.txt").read_text().split() == [f"leak{i}.png" for i in range(6)]
    removed = {max(g) for g in groups} | {f"leak{i}.png" for i in range(6)}  # the later name of each pair goes
    listed = [Path(p).name for p in (out / "curated.txt").read_text().splitlines()]
    assert not removed & set(listed)
    # Retrieval: the 5 nearest kept pool images of each seed, by an independent brute force on
    # the embeddings curate saved.
    vectors = {}
    for what in ("pool", "seeds"):
        chunks = sorted((out / "embeddings").glob(f"{what}-*/chunk-*.npz"))
        names = sum((np.load(c)["names"].tolist() for c in chunks), [])
        vectors[what] = (names, np.concatenate([np.load(c)["vectors"] for c in chunks]))
    names, pool = vectors["pool"]
    mean = pool.mean(0)
    centred = (pool - mean) / np.linalg.norm(pool - mean, axis=1, keepdims=True)
    seed_vectors = vectors["seeds"][1] - mean
    seed_vectors /= np.linalg.norm(seed_vectors, axis=1, keepdims=True)
    kept = [i for i, n in enumerate(names) if n not in removed]
    _, idx = brute_force(seed_vectors, centred[kept], 5)
    expected = sorted({Path(names[kept[j]]).name for j in idx.ravel()})
    assert sorted(set(listed)) == expected == sorted(listed)
    assert (out / "duplicates.png").stat().st_size > 1000 and (out / "retrieved.png").stat().st_size > 1000
    # Under each copy in duplicates.png, its similarity to the kept image: at least the threshold.
    labels = [[label for _, _, label in row] for row in drawn["duplicates.png"]]
    assert len(labels) == 8 and all(row[0] == "kept" and len(row) == 2 for row in labels)
    assert all(0.84 <= float(row[1].removeprefix("cos ")) <= 1.0 for row in labels)
    assert len(open_source(out / "curated.txt").names) == len(listed)  # pretrain --data accepts it


def test_curation_resumes_after_an_interruption(planted, monkeypatch):
    root, _ = planted
    calls = {"n": 0}
    original = embedding_module._embed_chunk

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed during the third chunk
        return original(*args, **kwargs)

    monkeypatch.setattr(embedding_module, "_embed_chunk", counting)
    config = CurateConfig(threshold=0.84, k=3, chunk_size=40)
    with pytest.raises(KeyboardInterrupt):
        curate(root / "pool", root / "seeds", "random:resnet18", root / "resumed", config=config, image_size=64, small_stem=False,
               device="cpu", show_progress=False)
    calls["n"] = 100  # no more interruptions
    first = curate(root / "pool", root / "seeds", "random:resnet18", root / "resumed", config=config,
                   image_size=64, small_stem=False, device="cpu", show_progress=False)
    # 150 pool images in chunks of 40 = 4 chunks, 2 were done; + 1 chunk of seeds.
    assert calls["n"] == 100 + 2 + 1
    monkeypatch.setattr(embedding_module, "_embed_chunk", original)
    fresh = curate(root / "pool", root / "seeds", "random:resnet18", root / "fresh", config=config, image_size=64, small_stem=False,
                   device="cpu", show_progress=False)
    assert (root / "resumed" / "curated.txt").read_text().replace("resumed", "") == \
        (root / "fresh" / "curated.txt").read_text().replace("fresh", "")
    assert first["retrieved"] == fresh["retrieved"]


def test_embedding_progress_moves_with_each_batch_and_counts_every_file(planted, tmp_path, monkeypatch):
    """A chunk of 4,096 images takes minutes on a CPU: the bar moved once per chunk. It now moves
    per batch of features (and by a chunk at once when the chunk was saved by an earlier run)."""
    from selfsup.data.sources import open_file_or_source
    from selfsup.encoder import load_encoder

    root, _ = planted
    moves = []

    class Bar:
        def update(self, n):
            moves.append(n)

        def close(self):
            pass

    monkeypatch.setattr(embedding_module, "progress_bar", lambda *a, **k: Bar())
    (tmp_path / "pool").mkdir()
    for i, name in enumerate(sorted((root / "pool").iterdir())[:50]):
        (tmp_path / "pool" / name.name).write_bytes(name.read_bytes() if i != 7 else b"not an image")
    source = open_file_or_source(tmp_path / "pool")
    encoder = load_encoder("random:resnet18", image_size=64, small_stem=False)
    embedded = embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=40, batch_size=16)
    assert len(embedded.skipped) == 1 and sum(moves) == 50
    # chunk of 40 (one file skipped): 16 + 16 + 7; then 10
    assert sorted(m for m in moves if m) == sorted([1, 16, 16, 7, 10])
    moves.clear()
    embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=40)  # both chunks saved
    assert moves == [40, 10]


def test_bad_input(planted, tmp_path):
    root, _ = planted
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="seed set .* holds no images"):
        curate(root / "pool", tmp_path / "empty", "random:resnet18", tmp_path / "out", image_size=32,
               show_progress=False)
    with pytest.raises(UserError, match=r"^pool: data path .*nowhere' does not exist"):
        curate(tmp_path / "nowhere", root / "seeds", "random:resnet18", tmp_path / "out", image_size=32,
               show_progress=False)
    for option, value, bounds in [("k", 0, r"\[1, inf\]"), ("per_cluster", 0, r"\[1, inf\]"),
                                  ("clusters", -1, r"\[0, inf\]"), ("threshold", 1.5, r"\[-1.0, 1.0\]")]:
        # From Python the field of config=CurateConfig(...) is named, not a config path (curate.k).
        named = re.escape(f"{option} in config=CurateConfig(...)")
        with pytest.raises(UserError, match=f"^{named} must be in {bounds}, got {value}"):
            curate(root / "pool", root / "seeds", "random:resnet18", tmp_path / "out", image_size=32,
                   config=CurateConfig(**{option: value}), show_progress=False)
    with pytest.raises(UserError, match=r"^exclude: data path .*nowhere' does not exist"):
        curate(root / "pool", root / "seeds", "random:resnet18", tmp_path / "out", exclude=tmp_path / "nowhere",
               image_size=32, show_progress=False)
    (tmp_path / "notes.md").write_text("")
    with pytest.raises(UserError, match=r"^seed_set: data path .* is a file, not a folder of images"):
        curate(root / "pool", tmp_path / "notes.md", "random:resnet18", tmp_path / "out", image_size=32,
               show_progress=False)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="cannot create .*; choose a writable `out`"):
        curate(root / "pool", root / "seeds", "random:resnet18", tmp_path / "a-file" / "out", image_size=32,
               show_progress=False)


def test_an_out_folder_inside_an_input_folder_is_refused(planted, tmp_path):
    """--out inside --pool: its pictures (duplicates.png, retrieved.png) joined the pool."""
    root, _ = planted
    pool = tmp_path / "pool"
    some_pictures(planted, pool)
    for inputs in ({"pool": pool, "seed_set": root / "seeds"}, {"pool": root / "pool", "seed_set": pool}):
        with pytest.raises(UserError, match=r"^out='.*pool/cur' lies inside the images read from '.*pool': its "
                                            r"pictures and copies would become images of them; choose a folder outside$"):
            curate(inputs["pool"], inputs["seed_set"], "random:resnet18", pool / "cur", image_size=32,
                   show_progress=False)
        assert not (pool / "cur").exists()


def test_a_seed_set_of_one_image_file(planted, tmp_path):
    root, _ = planted
    summary = curate(root / "pool", root / "seeds" / "seed0.png", "random:resnet18", tmp_path / "out", image_size=32,
                     config=CurateConfig(k=5), show_progress=False)
    assert summary["seeds"] == 1 and summary["retrieved"] == 5 and summary["per_seed_or_cluster"] == {"0": 5}


def test_a_corrupt_pool_image_is_skipped_and_said(planted, tmp_path, capsys):
    import shutil
    root, _ = planted
    pool = tmp_path / "pool"
    pool.mkdir()
    for picture in sorted((root / "pool").glob("*.png"))[:10]:
        shutil.copy(picture, pool)
    (pool / "broken.jpg").write_bytes(b"not a jpeg")
    summary = curate(pool, root / "seeds", "random:resnet18", tmp_path / "out", image_size=32, show_progress=False)
    assert summary["pool"] == 10 and summary["pool_skipped"] == 1
    assert "skipped 1 of 11 files in" in capsys.readouterr().err


@pytest.mark.parametrize("given_as", ["folder", "list"])
def test_a_pool_that_disappears_stops_with_a_clear_message(planted, tmp_path, monkeypatch, given_as):
    """The pool's folder vanishes during embedding. Given as a folder, its root is gone; given as
    a .txt list, the list stays and its files are gone: both stop (no file is counted as corrupt)
    and resume once the files are back."""
    import shutil
    root, _ = planted
    pool = tmp_path / "pool"
    shutil.copytree(root / "pool", pool)
    given = pool
    if given_as == "list":
        given = tmp_path / "pool.txt"
        given.write_text("".join(f"{p}\n" for p in sorted(pool.iterdir())))
    original = embedding_module._embed_chunk
    calls = {"n": 0}

    def vanish_after_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            shutil.move(pool, tmp_path / "moved")
        return original(*args, **kwargs)

    monkeypatch.setattr(embedding_module, "_embed_chunk", vanish_after_first)
    config = CurateConfig(threshold=0.84, k=3, chunk_size=50)
    with pytest.raises(UserError, match="disappeared while reading it; restore it"):
        curate(given, root / "seeds", "random:resnet18", tmp_path / "out", config=config, image_size=64, small_stem=False,
               device="cpu", show_progress=False)
    shutil.move(tmp_path / "moved", pool)
    monkeypatch.setattr(embedding_module, "_embed_chunk", original)
    summary = curate(given, root / "seeds", "random:resnet18", tmp_path / "out", config=config, image_size=64, small_stem=False,
                     device="cpu", show_progress=False)
    assert summary["pool"] == 150 and summary["pool_skipped"] == 0


def test_curate_through_the_cli_with_a_tar_pool(planted, tmp_path):
    """A tar pool: the list holds member names, and what `pretrain --data` should read is the tar
    (summary's outputs.data), which holds exactly the retrieved images. Bad options: one line."""
    from conftest import make_tar
    from test_cli import run
    root, _ = planted
    pool_tar = make_tar(root / "pool", tmp_path / "pool.tar", mode="w")
    proc = run("curate", "--pool", pool_tar, "--seed-set", root / "seeds", "--checkpoint", "random:resnet18",
               "--image-size", "64", "--no-small-stem", "--threshold", "0.84", "--k", "4", "--out", tmp_path / "out",
               "--device", "cpu", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["outputs"]["data"] == summary["outputs"]["tar"] == str(tmp_path / "out" / "curated.tar")
    assert f"--data {summary['outputs']['data']}" in proc.stderr
    listed = (tmp_path / "out" / "curated.txt").read_text().split()
    assert len(open_source(summary["outputs"]["data"]).names) == len(listed) == summary["retrieved"]
    common = ["--pool", pool_tar, "--seed-set", root / "seeds", "--checkpoint", "random:resnet18", "--no-progress"]
    run("curate", *common, "--out", tmp_path / "bad", "--k", "0", check_error="--k must be in [1, inf], got 0")
    run("curate", *common, "--out", tmp_path / "bad", "--threshold", "2",
        check_error="--threshold must be in [-1.0, 1.0], got 2.0")
    run("curate", *common, "--out", tmp_path / "bad", "--per-cluster", "0",
        check_error="--per-cluster must be in [1, inf], got 0")
    (tmp_path / "a-file").write_text("")
    run("curate", *common, "--out", tmp_path / "a-file" / "x", check_error="choose a writable --out")


# ---------------------------------------------------------------------------------------------
# What curate writes: never over its inputs, whole or not at all, and a tar it can read back


def some_pictures(planted, folder: Path, count: int = 4) -> list[Path]:
    import shutil
    root, _ = planted
    folder.mkdir(parents=True)
    return [Path(shutil.copy(p, folder / f"{'abcd'[i]}.png"))
            for i, p in enumerate(sorted((root / "pool").glob("*.png"))[:count])]


def test_curate_refuses_an_input_that_is_one_of_its_own_outputs(planted, tmp_path):
    """--pool OUT/curated.tar emptied the tar before reading the pool from it; a .txt list given
    as OUT/curated.txt was replaced by the curated one."""
    root, _ = planted
    from conftest import make_tar
    pictures = some_pictures(planted, tmp_path / "pics")
    out = tmp_path / "out"
    out.mkdir()
    make_tar(tmp_path / "pics", out / "curated.tar", mode="w")
    (out / "curated.txt").write_text("".join(f"{p}\n" for p in pictures))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for given, option in [({"pool": out / "curated.tar"}, "pool="), ({"pool": out / "curated.txt"}, "pool="),
                          ({"seed_set": out / "curated.txt"}, "seed_set="),
                          ({"exclude": out / "curated.tar"}, "exclude=")]:
        name = next(iter(given.values())).name
        inputs = {"pool": tmp_path / "pics", "seed_set": root / "seeds", **given}
        with pytest.raises(UserError, match=rf"^{option}'.*{name}' is the {name} this run writes in `out`; "
                                            rf"choose another `out`"):
            curate(inputs["pool"], inputs["seed_set"], "random:resnet18", out, exclude=inputs.get("exclude"),
                   image_size=32, device="cpu", show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_curated_tar_members_stay_under_curated_and_read_back(planted, tmp_path):
    """A .txt pool's ../ and absolute names went into the tar as they were (curated/../x.png)."""
    from selfsup.outputs import relative_copy_path
    root, _ = planted
    a, b, c, _ = some_pictures(planted, tmp_path / "pics")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "d.png").write_bytes((tmp_path / "pics" / "d.png").read_bytes())
    listed = ["../pics/a.png", str(b), "../pics/./c.png", "d.png"]
    (lists / "pool.txt").write_text("".join(f"{n}\n" for n in listed))
    summary = curate(lists / "pool.txt", root / "seeds" / "seed0.png", "random:resnet18", tmp_path / "out",
                     config=CurateConfig(threshold=1.0, k=4), image_size=32, device="cpu", make_tar=True,
                     show_progress=False)
    assert summary["retrieved"] == 4
    with tarfile.open(summary["outputs"]["tar"]) as tar:
        members = sorted(tar.getnames())
    assert members == sorted(["curated/__up__/pics/a.png", f"curated/_root{b}", "curated/__up__/pics/c.png",
                              "curated/d.png"])
    assert sorted(open_source(summary["outputs"]["tar"]).names) == sorted(m[len("curated/"):] for m in members)
    # Two names of one member: refused before any image is embedded.
    (lists / "twice.txt").write_text("d.png\n./d.png\n")
    with pytest.raises(UserError, match=r"^the pool names 'd.png' and './d.png' would both be 'curated/d.png' in "
                                        r"curated.tar; rename one of them"):
        curate(lists / "twice.txt", root / "seeds", "random:resnet18", tmp_path / "out2", make_tar=True,
               image_size=32, show_progress=False)
    assert not (tmp_path / "out2").exists()
    assert [str(relative_copy_path(n)) for n in ("a/b.png", "../../x.png", "/srv/x.png", "./a/./b.png", "a/../b")] \
        == ["a/b.png", "__up__/__up__/x.png", "_root/srv/x.png", "a/b.png", "a/__up__/b"]


def test_curate_outputs_are_written_whole_or_not_at_all(planted, tmp_path, monkeypatch):
    """A kill while writing curated.tar left a short tar that read back as a smaller, valid one;
    the text files and pictures were written in place too."""
    import itertools

    from matplotlib.figure import Figure

    from selfsup.curate import _write_removed, write_tar
    from selfsup.curate.pictures import draw_rows
    from selfsup.eval.curve import plot_label_efficiency
    some_pictures(planted, tmp_path / "pics")
    source = open_source(tmp_path / "pics")
    out = tmp_path / "out"
    out.mkdir()
    write_tar(source, source.names, out / "curated.tar")
    _write_removed(out, source.names, [[0, 1]], {2})
    draw_rows([[(source, "a.png")]], out / "retrieved.png", "retrieved")
    curve = {"curve_protocol": "knn", "seeds": 1, "test_images": 3,
             "lines": [{"encoder": "e", "points": [{"labels_per_class": 1.0, "top1": 0.5, "top1_std": 0.0}]}]}
    plot_label_efficiency(curve, out / "curve.svg")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class KilledAfterOne:
        def read(self, names):
            yield from itertools.islice(source.read(names), 1)
            raise KeyboardInterrupt

    def half_written(text):
        def write(self, data, *args, **kwargs):
            with open(self, "w" if text else "wb") as f:
                f.write(data[:len(data) // 2])
            raise KeyboardInterrupt
        return write

    with pytest.raises(KeyboardInterrupt):
        write_tar(KilledAfterOne(), source.names, out / "curated.tar")
    monkeypatch.setattr(Path, "write_text", half_written(text=True))
    with pytest.raises(KeyboardInterrupt):
        _write_removed(out, source.names, [[1, 2]], {3})
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *a, **k: half_written(text=False)(Path(path), b"\x89PNG"))
    monkeypatch.setattr(Image.Image, "save", lambda self, path, *a, **k:  # the grids are drawn with Pillow
                        half_written(text=False)(Path(path), b"\x89PNG"))
    with pytest.raises(KeyboardInterrupt):
        draw_rows([[(source, "b.png")]], out / "retrieved.png", "retrieved")
    with pytest.raises(KeyboardInterrupt):
        plot_label_efficiency(curve, out / "curve.svg")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no half file, no temporary one


def test_picture_titles_are_shortened_from_the_middle():
    """Cut from the left, six files of three classes and two patients all read '…ild_016_größe.png';
    the first folder (a class, a patient) and the file name are what tell them apart."""
    from selfsup.curate.pictures import CELL, TITLE_WIDTH
    from selfsup.viz import short_name, text_font

    def _short(name):  # as draw_rows titles its cells
        return short_name(name, TITLE_WIDTH, CELL.font_px)

    def _pixels(text):
        return text_font(CELL.font_px).getlength(text)

    names = [f"{c}/patient_0{p}/bild_016_größe.png" for c in ("Ödem", "normal", "结节") for p in (2, 5)]
    titles = [_short(n) for n in names]
    assert titles[0] == "Ödem/…/bild_016_größe.png" and titles[4] == "结节/…/bild_016_größe.png"
    assert len({t.split("/")[0] for t in titles}) == 3 and all(t.endswith("/…/bild_016_größe.png") for t in titles)
    assert _short("patient_07/série/img_009.png") == "patient_07/…/img_009.png"
    assert _short("train/normal/patient_02/série/img_009.png") == "train/normal/…/img_009.png"  # what fits is kept
    assert _short("airplane/0011.jpg") == "airplane/0011.jpg" and _short("a/b/c.png") == "a/b/c.png"  # whole
    long_file = "x/a_very_long_file_name_of_a_scan_00000000001.png"
    assert _short(long_file).startswith("x/a_very") and _short(long_file).endswith("001.png")
    for name in [*names, long_file, "IMG_0001_" + "W" * 30 + ".JPG", "/" + "deep/" * 20 + "f.png"]:
        assert _pixels(_short(name)) <= TITLE_WIDTH and "…" in _short(name), name


def test_embeddings_made_without_tifffile_are_not_reused_with_it(labelled_folder, tmp_path):
    """They skipped the TIFFs that tifffile reads: a cluster or search kept skipping them."""
    from types import SimpleNamespace

    from selfsup.curate.embedding import embedding_dir
    from selfsup.data import open_source
    from test_data import without_tiff_readers
    encoder, source = SimpleNamespace(key="k", description="d", image_size=16), open_source(labelled_folder)
    tiles = SimpleNamespace(path=tmp_path / "tiles", fingerprint="f", names=["a/1.tif", "b/2.png"])
    with without_tiff_readers():
        before, pngs_before = embedding_dir(tmp_path, encoder, tiles), embedding_dir(tmp_path, encoder, source)
    assert embedding_dir(tmp_path, encoder, tiles) != before
    assert embedding_dir(tmp_path, encoder, source) == pngs_before  # no TIFF among them: no new embedding


def shuffled_tar(folder: Path, out: Path, corrupt: tuple[str, ...] = ()) -> Path:
    """A .tar.gz of `folder`'s files (and of `corrupt` members that are no images) in an order
    unlike their sorted one, as an archive built by a crawl holds them."""
    members = [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in sorted(folder.rglob("*.png"))]
    members += [(name, b"not an image") for name in corrupt]
    np.random.default_rng(0).shuffle(members)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_a_tar_is_read_once_for_all_its_chunks(labelled_folder, tmp_path, monkeypatch, capsys):
    """Each chunk of a tar read it from its start (a .tar.gz decompressed again each time):
    quadratic in its size. The chunks still to embed now share one pass, in archive order, and
    the rows still come in the source's order, corrupt members skipped and counted."""
    import selfsup.data.sources as sources_module
    from selfsup.encoder import load_encoder

    tar = shuffled_tar(labelled_folder, tmp_path / "pool.tar.gz", corrupt=("square/bad.png", "zz.png"))
    source, folder = open_source(tar), open_source(labelled_folder)
    assert source.read_order() != source.names  # chunks of the archive's order are not runs of the names
    opened = []
    open_tar = sources_module._open_tar
    monkeypatch.setattr(sources_module, "_open_tar", lambda path: opened.append(path) or open_tar(path))
    encoder = load_encoder("random:resnet18", image_size=24, small_stem=False)
    first = embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=5, show_progress=False)
    assert len(opened) == 1  # 8 chunks, one pass (there were 8)
    assert "skipped 2 of 38 files" in capsys.readouterr().err and first.skipped == ["square/bad.png", "zz.png"]
    from_folder = embedding_module.embed_source(encoder, folder, tmp_path / "emb-folder", "cpu", chunk_size=5,
                                                show_progress=False)
    assert first.names == from_folder.names == folder.names  # the rows of the same images in a folder
    np.testing.assert_allclose(first.vectors, from_folder.vectors, atol=1e-5)  # other batches: not to the bit

    chunks = sorted((tmp_path / "emb").glob("chunk-*.npz"))
    assert len(chunks) == 8
    for lost in (chunks[2], chunks[5]):  # a killed run: two chunks to embed again, still in one pass
        lost.unlink()
    opened.clear()
    again = embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=5, show_progress=False)
    assert len(opened) == 1 and again.names == first.names and again.skipped == first.skipped
    assert np.array_equal(again.vectors, first.vectors)
    opened.clear()
    embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=5, show_progress=False)
    assert opened == []  # every chunk saved: the tar is not read at all


def test_a_chunk_of_nan_embeddings_is_refused_and_never_resumed_from(labelled_folder, tmp_path, monkeypatch):
    """An encoder whose features turn NaN after the first chunk (a BatchNorm's running variance, here):
    refused at the chunk, which is not saved, counting the images embedded in all. A chunk of NaN
    that an earlier version saved is embedded again, not resumed from."""
    from selfsup.encoder import load_encoder

    source = open_source(labelled_folder)
    encoder = load_encoder("random:resnet18", image_size=24, small_stem=False)
    embed_chunk = embedding_module._embed_chunk

    def diverging_after_the_first(*args, **kwargs):
        embedded = embed_chunk(*args, **kwargs)
        encoder.backbone.net.bn1.running_var.fill_(float("nan"))
        return embedded

    monkeypatch.setattr(embedding_module, "_embed_chunk", diverging_after_the_first)
    with pytest.raises(UserError, match=r"^random:resnet18 \(random initialisation, seed 0\) gives NaN or infinite "
                                        r"features for 10 of 20 images embedded so far; draw another seed "
                                        r"\(random:resnet18@seed=1\)$"):
        embedding_module.embed_source(encoder, source, tmp_path / "emb", "cpu", chunk_size=10, show_progress=False)
    assert [p.name for p in sorted((tmp_path / "emb").iterdir())] == ["chunk-000000.npz"]

    monkeypatch.setattr(embedding_module, "_embed_chunk", embed_chunk)
    second = source.read_order()[10:20]
    embedding_module._save_chunk(tmp_path / "emb" / "chunk-000001.npz", second, np.full((10, 512), np.nan, np.float32),
                                 [], {})
    good = load_encoder("random:resnet18", image_size=24, small_stem=False)
    embedded = embedding_module.embed_source(good, source, tmp_path / "emb", "cpu", chunk_size=10, show_progress=False)
    assert len(embedded.names) == 36 and np.isfinite(embedded.vectors).all()
