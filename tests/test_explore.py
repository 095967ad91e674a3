"""`selfsup cluster` and `selfsup search`: outputs checked against the embeddings `selfsup embed`
writes, clustering scores against scikit-learn, bad input."""
from __future__ import annotations

import csv
import itertools
import json
import os

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from conftest import CLASSES, make_tar
from selfsup.cli import main
from selfsup.curate.search import kmeans
from selfsup.errors import UserError
from selfsup.explore import cluster_agreement, cluster_images, cosine_to_centre, folder_classes, search_images

ENCODER = {"checkpoint": "random:resnet18-half", "image_size": 24, "show_progress": False}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def embeddings(folder, tmp_path):
    """The L2-normalised vectors of `selfsup embed`, by file name: what cluster and search compare."""
    out = tmp_path / "embedded.npy"
    assert main(["embed", "--checkpoint", "random:resnet18-half", "--image-size", "24",
                 "--data", str(folder), "--out", str(out), "--no-progress"]) == 0
    names = (tmp_path / "embedded.files.txt").read_text().splitlines()
    return dict(zip(names, np.load(out).astype(np.float64)))


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    out = vectors - mean
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_cluster_agreement_against_scikit_learn_and_by_hand(seed):
    rng = np.random.default_rng(seed)
    clusters, classes = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    classes[:50] = clusters[:50] % 4  # partly related, so NMI is neither 0 nor 1
    got = cluster_agreement(clusters, np.array([f"class{c}" for c in classes]))
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(classes, clusters), abs=1e-12)
    purity = sum(max(np.sum((clusters == k) & (classes == c)) for c in range(4)) for k in range(5)) / 200
    assert got["purity"] == pytest.approx(purity, abs=1e-12)
    relabelled = (clusters + 3) % 5  # the same partition under other cluster numbers
    assert cluster_agreement(clusters, relabelled) == pytest.approx({"purity": 1.0, "nmi": 1.0})


def test_k_means_plus_plus_recovers_planted_groups_on_the_sphere():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(16, 16)))[0][:6]  # 6 orthogonal directions
    truth = rng.integers(0, 6, 600)
    points = centres[truth] + 0.05 * rng.normal(size=(600, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    for seed in range(5):
        _, assignment = kmeans(points, 6, seed=seed, init="k-means++", restarts=3)
        assert normalized_mutual_info_score(truth, assignment) == pytest.approx(1.0)


def test_folder_classes_look_inside_splits():
    assert folder_classes(["train/cat/1.jpg", "train/dog/2.jpg", "test/cat/3.jpg"]) == ["cat", "dog", "cat"]
    assert folder_classes(["cat/1.jpg", "dog/2.jpg"]) == ["cat", "dog"]
    assert folder_classes(["cat/1.jpg", "2.jpg"]) is None  # an image beside the folders
    assert folder_classes(["cat/1.jpg", "cat/2.jpg"]) is None  # one class


def test_cluster_writes_every_image_once_with_its_nearest_centre(labelled_folder, tmp_path):
    summary = cluster_images(labelled_folder, out=tmp_path / "run", clusters=4, **ENCODER)
    rows = read_csv(tmp_path / "run" / "clusters.csv")
    names = sorted(str(p.relative_to(labelled_folder).as_posix()) for p in labelled_folder.rglob("*.png"))
    assert sorted(r["file"] for r in rows) == names
    assignment = {r["file"]: int(r["cluster"]) for r in rows}
    sizes = [sum(1 for c in assignment.values() if c == k) for k in range(4)]
    assert summary["sizes"] == sizes and sizes == sorted(sizes, reverse=True) and min(sizes) > 0
    assert summary["folders"]["classes"] == len(CLASSES)
    assert (tmp_path / "run" / "clusters.png").stat().st_size > 0
    written = (tmp_path / "run" / "summary.json").read_text()
    assert json.loads(written)["sizes"] == sizes and written.endswith("}\n")  # a text file: cat leaves no prompt on it

    # Independently: the clusters' centres from the embeddings; each image is nearest its own
    # (k-means has converged) and the CSV's cosine is its cosine to that centre.
    vectors = embeddings(labelled_folder, tmp_path)
    files = list(vectors)
    x = centred(np.stack([vectors[f] for f in files]), np.mean([vectors[f] for f in files], axis=0))
    labels = np.array([assignment[f] for f in files])
    centres = np.stack([x[labels == k].sum(0) for k in range(4)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    assert ((x @ centres.T).argmax(1) == labels).all()
    cosine = {r["file"]: float(r["cosine_to_centre"]) for r in rows}
    np.testing.assert_allclose([cosine[f] for f in files], (x * centres[labels]).sum(1), atol=2e-4)
    for k in range(4):  # within a cluster, nearest the centre first
        listed = [float(r["cosine_to_centre"]) for r in rows if int(r["cluster"]) == k]
        assert listed == sorted(listed, reverse=True)
    first_cluster_rows = [r for r in rows if r["cluster"] == "0"]
    assert rows[:len(first_cluster_rows)] == first_cluster_rows


def test_another_number_of_clusters_embeds_nothing_again(labelled_folder, tmp_path):
    cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    chunks = sorted((tmp_path / "run" / "embeddings").rglob("chunk-*.npz"))
    written = [os.stat(c).st_mtime_ns for c in chunks]
    summary = cluster_images(labelled_folder, out=tmp_path / "run", clusters=5, **ENCODER)
    assert summary["clusters"] == 5 and len(summary["sizes"]) == 5
    assert [os.stat(c).st_mtime_ns for c in chunks] == written
    assert sorted((tmp_path / "run" / "embeddings").rglob("chunk-*.npz")) == chunks


def test_search_against_brute_force_and_without_the_query_itself(labelled_folder, tmp_path):
    summary = search_images(labelled_folder, labelled_folder, out=tmp_path / "run", k=5, **ENCODER)
    rows = read_csv(tmp_path / "run" / "neighbours.csv")
    assert summary["queries"] == summary["gallery"] == 3 * 12 and len(rows) == 36 * 5
    vectors = embeddings(labelled_folder, tmp_path)
    files = list(vectors)
    x = np.stack([vectors[f] for f in files])  # plain cosine: the dot product of embed's vectors
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)  # a query is not its own neighbour
    for q, query in enumerate(files):
        got = [r for r in rows if r["query"] == query]
        assert [int(r["rank"]) for r in got] == [1, 2, 3, 4, 5]
        expected = np.argsort(-similarity[q], kind="stable")[:5]
        assert [r["file"] for r in got] == [files[i] for i in expected]
        np.testing.assert_allclose([float(r["cosine"]) for r in got], similarity[q, expected], atol=2e-4)
    assert [r["query"] for r in rows] == sorted(r["query"] for r in rows)
    assert (tmp_path / "run" / "neighbours.png").stat().st_size > 0
    written = (tmp_path / "run" / "summary.json").read_text()
    assert json.loads(written) == summary and written.endswith("}\n")  # what --json prints, as cluster's
    assert summary["outputs"]["summary"] == str(tmp_path / "run" / "summary.json")


def test_a_pair_scores_the_same_whatever_else_the_gallery_holds(labelled_folder, tmp_path):
    query = labelled_folder / "circle" / "000.png"
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((labelled_folder / "square" / "003.png").read_bytes())
    search_images(query, one, out=tmp_path / "alone", k=1, **ENCODER)
    alone = read_csv(tmp_path / "alone" / "neighbours.csv")
    search_images(query, labelled_folder / "square", out=tmp_path / "among", k=12, **ENCODER)
    among = {r["file"]: r["cosine"] for r in read_csv(tmp_path / "among" / "neighbours.csv")}
    assert alone[0]["cosine"] == among["003.png"] and abs(float(alone[0]["cosine"])) > 0.01


def test_the_query_is_found_as_itself_under_other_names(labelled_folder, tmp_path):
    """The same member of the same tar, a hard link, a symbolic link: not its own neighbour."""
    tar = make_tar(labelled_folder, tmp_path / "gallery.tar")
    search_images(tar, tar, out=tmp_path / "tar", k=2, **ENCODER)
    assert not any(r["query"] == r["file"] for r in read_csv(tmp_path / "tar" / "neighbours.csv"))
    links = tmp_path / "links"
    links.mkdir()
    os.link(labelled_folder / "circle" / "000.png", links / "hard.png")
    (links / "soft.png").symlink_to(labelled_folder / "circle" / "001.png")
    search_images(links, labelled_folder, out=tmp_path / "links-run", k=3, **ENCODER)
    found = {(r["query"], r["file"]) for r in read_csv(tmp_path / "links-run" / "neighbours.csv")}
    assert ("hard.png", "circle/000.png") not in found and ("soft.png", "circle/001.png") not in found


def test_every_gallery_name_of_the_query_is_left_out_and_k_still_found(labelled_folder, tmp_path):
    """A gallery holding the query's file three times (itself, a symbolic and a hard link): none
    is its neighbour, and the k asked are still found among the other images."""
    gallery = labelled_folder / "circle"
    (gallery / "soft.png").symlink_to(gallery / "000.png")
    os.link(gallery / "000.png", gallery / "hard.png")
    summary = search_images(gallery / "000.png", gallery, out=tmp_path / "run", k=50, **ENCODER)
    found = [r["file"] for r in read_csv(tmp_path / "run" / "neighbours.csv")]
    assert summary["k"] == 11 and sorted(found) == [f"{i:03d}.png" for i in range(1, 12)]


def test_a_link_member_of_a_tar_is_the_query_itself(labelled_folder, tmp_path):
    import tarfile
    gallery = labelled_folder / "circle"
    (gallery / "soft.png").symlink_to("000.png")
    with tarfile.open(tmp_path / "gallery.tar", "w") as archive:  # soft.png: a link member
        archive.add(gallery, arcname="circle")
    search_images(tmp_path / "gallery.tar", tmp_path / "gallery.tar", out=tmp_path / "run", k=2, **ENCODER)
    found = {(r["query"], r["file"]) for r in read_csv(tmp_path / "run" / "neighbours.csv")}
    assert ("000.png", "soft.png") not in found and ("soft.png", "000.png") not in found
    assert len(found) == 13 * 2


def test_search_cuts_k_to_the_gallery_and_refuses_a_gallery_of_only_the_query(labelled_folder, tmp_path, capsys):
    summary = search_images(labelled_folder / "circle", labelled_folder / "circle", out=tmp_path / "run", k=50,
                            **ENCODER)
    assert summary["k"] == 11 and summary["k_asked"] == 50
    assert "11 neighbours each (k=50 asked) among 12 gallery images" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "x.png").write_bytes((labelled_folder / "circle" / "000.png").read_bytes())
    with pytest.raises(UserError, match="the gallery holds no image besides the query"):
        search_images(lone / "x.png", lone, out=tmp_path / "lone-run", **ENCODER)


def test_clusters_that_k_means_leaves_empty_are_said(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(4):  # two distinct pictures, each twice: four clusters cannot all be filled
        Image.new("RGB", (24, 24), (200, 30, 30) if i % 2 else (30, 30, 200)).save(folder / f"{i}.png")
    summary = cluster_images(folder, out=tmp_path / "run", clusters=4, **ENCODER)
    assert summary["sizes"] == [2, 2, 0, 0]
    assert "k-means left 2 clusters empty" in capsys.readouterr().err


def test_embeddings_of_files_since_changed_are_removed(labelled_folder, tmp_path):
    cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    (before,) = (tmp_path / "run" / "embeddings").iterdir()
    others = tmp_path / "run" / "embeddings" / "pool-0123456789abcdef"  # e.g. selfsup curate's, same --out
    others.mkdir()
    (labelled_folder / "circle" / "000.png").unlink()
    cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    after = sorted((tmp_path / "run" / "embeddings").iterdir())
    assert before not in after and others in after and len(after) == 2


@pytest.mark.parametrize("argv, message", [
    (["cluster", "--clusters", "1"], "--clusters must be at least 2, got 1"),
    (["cluster", "--clusters", "37"], "--clusters 37 is more than the 36 files in .*; choose fewer clusters"),
    (["cluster", "--shown", "0"], "--shown must be at least 1, got 0"),
    (["search", "--k", "0"], "--k must be at least 1, got 0"),
    (["search", "--query", "NOWHERE"],
     "--query: data path .*NOWHERE' does not exist; give an image, a folder of images or a tar of one$"),
    (["cluster", "--out", "A-FILE"], "is a file; --out takes a folder"),
])
def test_bad_input_is_one_line(labelled_folder, tmp_path, capsys, argv, message):
    import re
    command, *options = argv
    places = (["--data", str(labelled_folder)] if command == "cluster" else
              ["--gallery", str(labelled_folder)] + ([] if "--query" in options else ["--query", str(labelled_folder)]))
    (tmp_path / "A-FILE").write_text("")
    options = [str(tmp_path / o) if o in ("NOWHERE", "A-FILE") else o for o in options]
    out = [] if "--out" in options else ["--out", str(tmp_path / "run")]
    code = main([command, *places, *options, "--checkpoint", "random:resnet18-half", "--image-size", "24", *out,
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "run").exists()  # a refused start leaves no folder


@pytest.mark.parametrize("command, option, advice", [("cluster", "--clusters", "choose fewer clusters"),
                                                     ("select", "--budget", "choose a smaller budget")])
def test_a_count_beyond_the_images_is_said_with_the_images_usable(labelled_folder, tmp_path, monkeypatch, capsys,
                                                                   command, option, advice):
    """A count of images (clusters, a budget) beyond those of a folder of 37 files, of which one is
    no image, was refused as "more than the 37 images". Too few, or more than the files, is refused
    before anything is decoded; more than the 36 images once they are, in one line that counts them."""
    import selfsup.explore as explore
    import selfsup.selection as selection

    (labelled_folder / "circle" / "notes.png").write_text("not an image")

    def command_line(count: int) -> list[str]:
        return [command, "--data", str(labelled_folder), option, str(count), "--out", str(tmp_path / "out"),
                "--checkpoint", "random:resnet18-half", "--image-size", "24", "--no-progress"]

    real_embedding = explore.embed_sources
    for module in (explore, selection):
        monkeypatch.setattr(module, "embed_sources", lambda *a: pytest.fail("decoded for a count beyond the files"))
    assert main(command_line(1 if command == "cluster" else 0)) == 2
    assert f"{option} must be at least" in capsys.readouterr().err
    assert main(command_line(38)) == 2
    assert capsys.readouterr().err.strip() == (f"selfsup: error: {option} 38 is more than the 37 files in "
                                               f"{str(labelled_folder)!r}; {advice}")
    for module in (explore, selection):
        monkeypatch.setattr(module, "embed_sources", real_embedding)
    assert main(command_line(37)) == 2
    assert capsys.readouterr().err.strip() == (f"selfsup: error: {option} 37 is more than the 36 images in "
                                               f"{str(labelled_folder)!r} that could be decoded (1 of its 37 files "
                                               f"could not); {advice}")
    assert main(command_line(36)) == 0
    assert "warning: skipped 1 of 37 files" in capsys.readouterr().err  # accepted: the files skipped said


def test_cluster_and_search_through_the_cli(labelled_folder, tmp_path, capsys):
    import json
    assert main(["cluster", "--data", str(labelled_folder), "--checkpoint", "random:resnet18-half",
                 "--image-size", "24", "--clusters", "3", "--out", str(tmp_path / "c"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 36 and sum(summary["sizes"]) == 36
    assert main(["search", "--query", str(labelled_folder / "square"), "--gallery", str(labelled_folder),
                 "--checkpoint", "random:resnet18-half", "--image-size", "24", "--k", "4",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and "neighbours.png" in out
    rows = read_csv(tmp_path / "s" / "neighbours.csv")
    assert len(rows) == 12 * 4 and not any(r["file"] == "square/" + r["query"] for r in rows)
    assert list(itertools.islice((r["rank"] for r in rows), 4)) == ["1", "2", "3", "4"]


def test_embeddings_saved_in_chunks_of_another_size_are_not_taken_twice(labelled_folder, tmp_path):
    from selfsup.curate.embedding import embed_source
    from selfsup.data import open_source
    from selfsup.encoder import load_encoder
    encoder, source = load_encoder("random:resnet18-half", image_size=24), open_source(labelled_folder)
    first = embed_source(encoder, source, tmp_path / "e", "cpu", chunk_size=8, show_progress=False)
    again = embed_source(encoder, source, tmp_path / "e", "cpu", chunk_size=5, show_progress=False)
    assert again.names == first.names == source.names
    np.testing.assert_allclose(again.vectors, first.vectors, atol=1e-6)


def test_nearest_centroids_in_blocks_equal_the_whole_matrix():
    from selfsup.curate.search import _nearest_centroid
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=1)
    centroids = torch.nn.functional.normalize(torch.randn(7, 16, generator=g), dim=1)
    index, cosine = _nearest_centroid(x, centroids, block_bytes=4 * 7 * 33)  # 33 rows a block, the last short
    whole = (x @ centroids.T).max(dim=1)
    assert torch.equal(index, whole.indices) and torch.allclose(cosine, whole.values)


@pytest.mark.parametrize("damage", ["cut", "objects", "missing-key"])
def test_a_damaged_embedding_chunk_is_embedded_again(labelled_folder, tmp_path, damage):
    first = cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    (chunk,) = (tmp_path / "run" / "embeddings").glob("*/chunk-*.npz")
    good = chunk.read_bytes()
    if damage == "cut":
        chunk.write_bytes(good[:len(good) // 2])
    elif damage == "objects":
        with open(chunk, "wb") as f:
            np.savez(f, names=np.array([{"a": 1}], dtype=object), vectors=np.zeros((1, 2)), skipped=np.array([]))
    else:
        with open(chunk, "wb") as f:
            np.savez(f, names=np.array(["x"]), vectors=np.zeros((1, 2)))
    again = cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    assert again["sizes"] == first["sizes"] and chunk.read_bytes() == good


def test_cosine_to_centre_is_the_rowwise_product_without_its_copies():
    """At once, each row's centre and the products were two more (N, D) copies of the embeddings."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 64)).astype(np.float32)
    centroids = rng.normal(size=(7, 64)).astype(np.float32)
    assignment = rng.integers(0, 7, len(x))
    tracemalloc.start()
    got = cosine_to_centre(x, centroids, assignment, rows=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, (x * centroids[assignment]).sum(1))
    assert peak < 0.2 * x.nbytes


def test_search_stats_each_file_once(labelled_folder, tmp_path, monkeypatch):
    """Listing a folder stats each file (for its fingerprint); telling the query's own files in
    the gallery stat'd each again, a second walk's time at a million files. The listing's stat is kept."""
    query = tmp_path / "query"
    query.mkdir()
    os.link(labelled_folder / "circle" / "000.png", query / "hard.png")  # the gallery's file: not its neighbour
    (query / "other.png").write_bytes((labelled_folder / "square" / "001.png").read_bytes())
    files = {str(path) for path in [*labelled_folder.rglob("*.png"), *query.iterdir()]}
    stats = []
    stat = os.stat

    def counting_stat(path, *args, **kwargs):
        if str(path) in files:
            stats.append(str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    search_images(query, labelled_folder, out=tmp_path / "run", k=3, **ENCODER)
    assert sorted(stats) == sorted(files)  # each once (there were two passes)
    found = {(r["query"], r["file"]) for r in read_csv(tmp_path / "run" / "neighbours.csv")}
    assert ("hard.png", "circle/000.png") not in found and ("other.png", "square/001.png") in found


def test_cluster_centres_the_embeddings_without_a_copy(labelled_folder, tmp_path, monkeypatch):
    """A centred copy beside the embeddings was a second (N, D) array held to the end (2 GB at
    a million 512-d images): k-means now gets the embeddings themselves, centred over themselves."""
    import selfsup.explore as explore
    seen = {}
    embed, cluster = explore.embed_sources, explore.kmeans

    def clustering(x, *args, **kwargs):
        seen["clustered"] = x
        return cluster(x, *args, **kwargs)

    monkeypatch.setattr(explore, "embed_sources", lambda *a, **k: seen.setdefault("embedded", embed(*a, **k)))
    monkeypatch.setattr(explore, "kmeans", clustering)
    cluster_images(labelled_folder, out=tmp_path / "run", clusters=3, **ENCODER)
    assert np.shares_memory(seen["clustered"], seen["embedded"]["images"].vectors)
    x = np.stack(list(embeddings(labelled_folder, tmp_path).values()))
    np.testing.assert_allclose(seen["clustered"], centred(x, x.mean(0)), atol=1e-5)  # centred all the same


def test_search_resolves_a_tar_path_once_a_source_not_once_a_member(labelled_folder, tmp_path, monkeypatch):
    """A tar member's identity holds the tar's resolved path: resolved for every member, it was
    an lstat of each folder on the way per member, the tar's counterpart of a second stat of each file."""
    from pathlib import Path
    tar = make_tar(labelled_folder, tmp_path / "gallery.tar")
    resolved = []
    resolve = Path.resolve

    def counting_resolve(self, *args, **kwargs):
        if self == tar:
            resolved.append(self)
        return resolve(self, *args, **kwargs)

    monkeypatch.setattr(Path, "resolve", counting_resolve)
    search_images(tar, tar, out=tmp_path / "run", k=2, **ENCODER)
    assert len(resolved) < 36, len(resolved)  # there were two for each of the 36 members (as a query, in the gallery)
    assert not any(r["query"] == r["file"] for r in read_csv(tmp_path / "run" / "neighbours.csv"))
