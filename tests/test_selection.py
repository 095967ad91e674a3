"""`selfsup select` and `selfsup eval --subset`: the strategies against their definitions computed
independently (float64, brute force), their behaviour on planted groups, the command, bad input."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from conftest import make_tar
from selfsup import selection
from selfsup.cli import main
from selfsup.errors import UserError
from selfsup.selection import choose, choose_kcenter, choose_typiclust, select_images, typicality

ENCODER = {"checkpoint": "random:resnet18-half", "image_size": 24, "show_progress": False}
CLI_ENCODER = ["--checkpoint", "random:resnet18-half", "--image-size", "24", "--no-progress"]


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def typicality64(x: np.ndarray, k: int) -> np.ndarray:
    """TypiClust's density, by its definition: 1 / (mean squared euclidean distance to the k
    nearest other points + 1e-5)."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return 1 / (np.sort(d, axis=1)[:, :k].mean(1) + 1e-5)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("seed, k", [(0, 1), (1, 5), (2, 20)])
def test_typicality_against_float64_by_definition(seed, k):
    import torch
    x = unit_rows(np.random.default_rng(seed), 60, 8)
    want = typicality64(x, k)
    whole = typicality(torch.from_numpy(x).float(), k).double().numpy()
    in_blocks = typicality(torch.from_numpy(x).float(), k, block_bytes=4 * 60 * 7).double().numpy()  # 7 rows a block
    assert np.allclose(whole, want, rtol=1e-4) and np.allclose(in_blocks, want, rtol=1e-4)


def typiclust64(x: np.ndarray, groups: np.ndarray, budget: int, labelled: np.ndarray) -> list[int]:
    """TypiClust's choice for given groups, from the paper and its code: groups with fewer labels
    first, then larger; groups of 5 or fewer passed over; in each, the most typical unlabelled
    point (its 20 nearest, or half the group when smaller)."""
    ids = np.unique(groups)
    sizes = {g: int((groups == g).sum()) for g in ids}
    order = sorted((g for g in ids if sizes[g] > 5), key=lambda g: (int(labelled[groups == g].sum()), -sizes[g], g))
    taken, chosen = labelled.copy(), []
    for i in range(budget):
        g = order[i % len(order)]
        members = np.flatnonzero((groups == g) & ~taken)
        best = members[typicality64(x[members], min(20, len(members) // 2)).argmax()]
        taken[best] = True
        chosen.append(int(best))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_typiclust_choice_against_an_independent_float64_implementation(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 300, 16)
    labelled = np.zeros(300, dtype=bool)
    labelled[rng.choice(300, 6, replace=False)] = True
    budget = 14
    groups = rng.integers(0, 19, 300)  # fixed groups (6 + 14 in all): the choice after k-means is checked
    groups[:3] = 19  # ... with one group too small to visit
    monkeypatch.setattr(selection, "kmeans", lambda x, k, **kw: (None, groups))
    got = choose_typiclust(x, budget, labelled, seed=seed)
    assert got.rows.tolist() == typiclust64(x, groups, budget, labelled)
    assert not labelled[got.rows].any() and len(set(got.rows.tolist())) == budget
    assert 19 not in got.clusters.tolist()  # the group of 3 is passed over


@pytest.mark.parametrize("seed", range(3))
def test_typiclust_over_several_passes_and_empty_groups_against_float64(seed, monkeypatch):
    """Groups visited again and again (a budget four times their number) and group numbers that
    k-means left empty: each group's rows are found once, not by a scan of the pool per choice."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 300, 16)
    labelled = np.zeros(300, dtype=bool)
    labelled[rng.choice(300, 6, replace=False)] = True
    groups = rng.choice([0, 1, 2, 4, 6, 7, 8, 9, 11], 300)  # 3, 5 and 10 empty; 12 .. 45 too
    monkeypatch.setattr(selection, "kmeans", lambda x, k, **kw: (None, groups))
    got = choose_typiclust(x, 40, labelled, seed=seed)
    assert got.rows.tolist() == typiclust64(x, groups, 40, labelled)


def planted_groups(rng, sizes, dim=16, spread=0.08):
    """Points around orthogonal directions, `sizes[g]` around the g-th; the distance of each to its
    group's centre."""
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:len(sizes)]
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + spread * rng.normal(size=(len(truth), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, truth


@pytest.mark.parametrize("seed", range(3))
def test_typiclust_takes_a_typical_image_of_each_large_group_and_no_outlier(seed):
    rng = np.random.default_rng(seed)
    x, truth = planted_groups(rng, [80, 60, 50, 40, 30, 3])  # the last: 3 odd images
    got = choose(x, 5, np.zeros(len(x), dtype=bool), "typiclust", seed=seed)
    assert sorted(truth[got.rows].tolist()) == [0, 1, 2, 3, 4]
    for row in got.rows:  # dense where the group is: among the most typical half of its group
        members = np.flatnonzero(truth == truth[row])
        density = typicality64(x[members], 20)
        assert density[list(members).index(row)] >= np.median(density)


def test_typiclust_goes_where_nothing_is_labelled_yet():
    rng = np.random.default_rng(0)
    x, truth = planted_groups(rng, [50, 50, 50, 50])
    labelled = np.zeros(len(x), dtype=bool)
    labelled[[0, 60]] = True  # one label in each of groups 0 and 1
    got = choose(x, 2, labelled, "typiclust")
    assert sorted(truth[got.rows].tolist()) == [2, 3]


def kcenter64(x: np.ndarray, budget: int, labelled: np.ndarray) -> list[int]:
    """Greedy k-center by its definition: the point farthest (squared euclidean) from its nearest
    labelled or chosen point, one at a time."""
    chosen = []
    for _ in range(budget):
        anchors = np.flatnonzero(labelled).tolist() + chosen
        d = ((x[:, None, :] - x[anchors][None, :, :]) ** 2).sum(-1).min(1)
        d[anchors] = -1
        chosen.append(int(d.argmax()))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_kcenter_against_the_definition_in_float64(seed):
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 200, 8)
    labelled = np.zeros(200, dtype=bool)
    labelled[rng.choice(200, 3, replace=False)] = True
    got = choose_kcenter(x, 12, labelled, block_bytes=4 * 200 * 2)  # labelled rows two at a time
    assert got.rows.tolist() == kcenter64(x, 12, labelled)
    anchors = np.flatnonzero(labelled).tolist() + got.rows.tolist()
    want = [((x[r] - x[anchors[:3 + i]]) ** 2).sum(1).min() for i, r in enumerate(got.rows)]
    assert np.allclose(got.scores, want, atol=1e-5)


def test_kcenter_never_chooses_a_labelled_image_even_when_all_else_duplicates_it():
    x = np.tile(unit_rows(np.random.default_rng(0), 1, 4), (5, 1))  # five copies of one image
    labelled = np.array([True, False, False, False, False])
    got = choose(x, 4, labelled, "kcenter")
    assert sorted(got.rows.tolist()) == [1, 2, 3, 4]


def test_random_choice_is_seeded_and_skips_labelled_images():
    labelled = np.zeros(50, dtype=bool)
    labelled[:10] = True
    a, b = (choose(np.zeros((50, 4)), 40, labelled, "random", seed=3).rows for _ in range(2))
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(10, 50))
    assert choose(np.zeros((50, 4)), 40, labelled, "random", seed=4).rows.tolist() != a.tolist()


def test_budgets_beyond_the_unlabelled_images_are_refused():
    labelled = np.zeros(10, dtype=bool)
    labelled[:4] = True
    with pytest.raises(UserError, match="budget= must lie between 1 and the 6 unlabelled images of the pool, got 7"):
        choose(unit_rows(np.random.default_rng(0), 10, 4), 7, labelled)
    for strategy in ("typiclust", "kcenter", "random"):  # all of what is left, each once
        got = choose(unit_rows(np.random.default_rng(0), 10, 4), 6, labelled, strategy)
        assert sorted(got.rows.tolist()) == list(range(4, 10))


def test_select_writes_the_choice_and_a_second_round_builds_on_the_first(labelled_folder, tmp_path, capsys):
    first = select_images(labelled_folder, out=tmp_path / "round1", budget=4, copy=True, **ENCODER)
    rows = read_csv(tmp_path / "round1" / "to_label.csv")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] and len({r["file"] for r in rows}) == 4
    for r in rows:  # the copies are the files themselves
        assert (tmp_path / "round1" / "to_label" / r["file"]).read_bytes() == (labelled_folder / r["file"]).read_bytes()
    assert first["folders"]["classes"] == 3 and sum(first["folders"]["per_class"].values()) == 4
    assert (tmp_path / "round1" / "to_label.png").stat().st_size > 0

    second = select_images(labelled_folder, out=tmp_path / "round2", budget=5,
                           labelled=[tmp_path / "round1" / "to_label.csv"], **ENCODER)
    again = read_csv(tmp_path / "round2" / "to_label.csv")
    assert second["labelled"] == 4 and second["clusters"] == 9
    assert not {r["file"] for r in again} & {r["file"] for r in rows} and len(again) == 5
    # 36 images in 9 groups: most hold 5 or fewer, which TypiClust leaves to last; the summary says
    # how many, and from how many groups the choices came (the CSV's cluster column).
    for summary, chosen in ((first, rows), (second, again)):
        assert summary["clusters_chosen_from"] == len({r["cluster"] for r in chosen})
    assert second["clusters_too_small"] * 2 > 9
    assert f"{second['clusters_too_small']} of the 9 groups hold 5 images or fewer" in capsys.readouterr().err


def test_select_from_a_tar_of_a_dataset_takes_its_train_images(split_folder, tmp_path):
    tar = make_tar(split_folder, tmp_path / "ds.tar.gz")
    summary = select_images(tar, out=tmp_path / "sel", budget=3, strategy="kcenter", copy=True, **ENCODER)
    rows = read_csv(tmp_path / "sel" / "to_label.csv")
    assert summary["pool"].endswith("[train]") and summary["images"] == 48
    for r in rows:
        assert (tmp_path / "sel" / "to_label" / r["file"]).read_bytes() == \
            (split_folder / "train" / r["file"]).read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--budget", "0"], "--budget must be at least 1, got 0"),
    (["--budget", "37"], "--budget 37 is more than the 36 files in "),
    (["--budget", "3", "--labelled", "LIST.txt"], r"--labelled names 1 file not among the decoded images of .* e.g. "
                                                  r"'elsewhere/1.png'"),
    (["--budget", "3", "--labelled", "NOWHERE.csv"], "--labelled .*NOWHERE.csv' does not exist"),
    (["--budget", "3", "--labelled", "BAD.csv"], "has no 'file' column in its first line"),
    (["--budget", "36", "--labelled", "GOOD.txt"], "--budget must lie between 1 and the 35 unlabelled images"),
])
def test_select_bad_input_is_one_line(labelled_folder, tmp_path, capsys, argv, message):
    (tmp_path / "LIST.txt").write_text("circle/000.png\nelsewhere/1.png\n")
    (tmp_path / "GOOD.txt").write_text("# one name per line\ncircle/000.png\n")
    (tmp_path / "BAD.csv").write_text("name,score\ncircle/000.png,1\n")
    argv = [str(tmp_path / a) if a in ("LIST.txt", "GOOD.txt", "NOWHERE.csv", "BAD.csv") else a for a in argv]
    code = main(["select", "--data", str(labelled_folder), "--out", str(tmp_path / "sel"), *argv, *CLI_ENCODER])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def test_eval_on_the_chosen_labels_only(split_folder, tmp_path, capsys):
    assert main(["select", "--data", str(split_folder), "--budget", "6", "--out", str(tmp_path / "sel"),
                 "--json", *CLI_ENCODER]) == 0
    chosen = {r["file"] for r in read_csv(tmp_path / "sel" / "to_label.csv")}
    capsys.readouterr()
    assert main(["eval", "knn", "--data", str(split_folder), "--subset", str(tmp_path / "sel" / "to_label.csv"),
                 "--k", "3", "--json", *CLI_ENCODER]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labelled_images"] == 6
    assert re.fullmatch(r"the 6 labels listed in to_label.csv \([0-9a-f]{8}\)", result["budget"])
    saved = json.loads(open(result["subsets"][0]).read())
    assert set(saved["train"]) == chosen and saved["val"] == []
    # The saved subset is itself a --subset, and the split's folder may be named: the same labels.
    listed = tmp_path / "listed.txt"
    listed.write_text("".join(f"train/{name}\n" for name in sorted(chosen)))
    for subset in (result["subsets"][0], listed):
        assert main(["eval", "knn", "--data", str(split_folder), "--subset", str(subset), "--k", "3", "--json",
                     *CLI_ENCODER]) == 0
        assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_a_subset_csv_label_column_is_said_to_be_unused(split_folder, tmp_path, capsys, protocol):
    # A CSV's labels were silently ignored: a person who wrote 'dog' beside cat/0.png got 'cat'.
    listed = tmp_path / "labelled.csv"
    listed.write_text("file,label\ncircle/000.png,square\ncircle/001.png,circle\ntrain/square/000.png,circle\n"
                      "square/001.png,square\nstripes/000.png,\nstripes/001.png,stripes\n")
    options = ["--seeds", "2", "--epochs", "1"] if protocol == "linear" else []  # two seeds, one warning
    assert main(["eval", protocol, "--data", str(split_folder), "--subset", str(listed), *options, "--json",
                 *CLI_ENCODER]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "'label' column" in line]
    assert said == [f"warning: --subset {listed}: its 'label' column is not used, the labels come from the class "
                    f"folders; 2 of its 5 labelled rows name another class than their folder"]


def test_linear_on_a_subset_cuts_validation_from_the_listed_images(split_folder, tmp_path, capsys):
    names = [f"{c}/{i:03d}.png" for c in ("circle", "square") for i in range(10)]  # no stripes
    (tmp_path / "list.txt").write_text("\n".join(names))
    assert main(["eval", "linear", "--data", str(split_folder), "--subset", str(tmp_path / "list.txt"),
                 "--val-fraction", "0.2", "--epochs", "5", "--json", *CLI_ENCODER]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["labelled_images"], result["val_images"]) == (16, 4)
    saved = json.loads(open(result["subsets"][0]).read())
    assert sorted(saved["train"] + saved["val"]) == sorted(names)
    assert "--subset" in captured.err and "holds no image of 1 of the 3 classes (stripes)" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["knn", "--per-class", "2"], "give --per-class or --subset, not both"),
    (["knn", "--subset", "NOWHERE.txt"], "--subset .*NOWHERE.txt' does not exist"),
    (["knn", "--subset", "TEST.txt"], r"--subset names 1 file not among the decoded images of"),
    (["curve", "--per-class", "2"], "--subset is for one evaluation; eval curve draws its own subsets"),
    (["linear", "--val-fraction", "0"], "without a validation split .* give one --lr and one --weight-decay"),
])
def test_eval_subset_bad_input_is_one_line(split_folder, tmp_path, capsys, argv, message):
    (tmp_path / "list.txt").write_text("circle/000.png\nsquare/001.png\nstripes/002.png\n")
    (tmp_path / "TEST.txt").write_text("test/circle/000.png\n")  # a test image is never a training label
    protocol, *options = argv
    options = [str(tmp_path / o) if o in ("NOWHERE.txt", "TEST.txt") else o for o in options]
    if "--subset" not in options:
        options += ["--subset", str(tmp_path / "list.txt")]
    code = main(["eval", protocol, "--data", str(split_folder), *options, *CLI_ENCODER])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def test_copies_stay_inside_the_output_folder_whatever_the_names(labelled_folder, tmp_path):
    # A .txt list names its images by absolute or ../ paths: the copies must not land on them.
    (tmp_path / "lists").mkdir()
    listed = [str(labelled_folder / "circle" / "000.png"), "../labelled/square/001.png"]
    (tmp_path / "lists" / "pool.txt").write_text("\n".join(listed) + "\n")
    before = {p: p.stat().st_mtime_ns for p in labelled_folder.rglob("*.png")}
    select_images(tmp_path / "lists" / "pool.txt", out=tmp_path / "sel", budget=2, strategy="random", copy=True,
                  **ENCODER)
    copies = sorted(p.relative_to(tmp_path / "sel" / "to_label").as_posix()
                    for p in (tmp_path / "sel" / "to_label").rglob("*.png"))
    assert copies == sorted(["_root" + str(labelled_folder / "circle" / "000.png"), "__up__/labelled/square/001.png"])
    assert {p: p.stat().st_mtime_ns for p in labelled_folder.rglob("*.png")} == before  # originals untouched


def test_the_same_images_in_a_tar_or_a_folder_give_the_same_choice(labelled_folder, tmp_path):
    """Rows follow the source's sorted names, not a tar's archive order (k-means' starts, the
    random draw and ties depend on the rows)."""
    import tarfile
    tar = tmp_path / "shuffled.tar"
    files = sorted(p for p in labelled_folder.rglob("*.png"))
    with tarfile.open(tar, "w") as archive:
        for path in files[::-1]:  # archive order: the reverse of the names' order
            archive.add(path, arcname=path.relative_to(labelled_folder).as_posix())
    for strategy in ("typiclust", "kcenter", "random"):
        rows = [read_csv(select_images(source, out=tmp_path / f"{strategy}-{i}", budget=5, strategy=strategy,
                                       **ENCODER)["outputs"]["csv"]) for i, source in enumerate((labelled_folder, tar))]
        assert [r["file"] for r in rows[0]] == [r["file"] for r in rows[1]], strategy


def test_select_again_in_the_same_folder_keeps_no_earlier_copies(labelled_folder, tmp_path):
    select_images(labelled_folder, out=tmp_path / "sel", budget=6, strategy="random", copy=True, **ENCODER)
    select_images(labelled_folder, out=tmp_path / "sel", budget=2, strategy="random", copy=True, seed=1, **ENCODER)
    copies = {p.relative_to(tmp_path / "sel" / "to_label").as_posix()
              for p in (tmp_path / "sel" / "to_label").rglob("*.png")}
    assert copies == {r["file"] for r in read_csv(tmp_path / "sel" / "to_label.csv")}
    select_images(labelled_folder, out=tmp_path / "sel", budget=2, strategy="random", **ENCODER)  # no --copy
    assert not (tmp_path / "sel" / "to_label").exists()


def test_an_output_folder_inside_the_pool_is_refused(labelled_folder, capsys):
    for argv in (["select", "--budget", "2"], ["cluster", "--clusters", "2"]):
        code = main([*argv, "--data", str(labelled_folder), "--out", str(labelled_folder / "round1"), *CLI_ENCODER])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "lies inside the images read from" in err[0], err
    assert not (labelled_folder / "round1").exists()


def test_typiclust_passes_over_copies_of_what_is_labelled_or_chosen(monkeypatch):
    rng = np.random.default_rng(0)
    x, truth = planted_groups(rng, [40, 40])
    x = np.concatenate([x, np.repeat(x[:1], 10, axis=0)])  # ten copies of the first image, in its group
    groups = np.concatenate([truth, np.zeros(10, dtype=truth.dtype)])
    monkeypatch.setattr(selection, "kmeans", lambda x, k, **kw: (None, groups))
    labelled = np.zeros(len(x), dtype=bool)
    labelled[0] = True
    got = choose_typiclust(x, 3, labelled)  # group 1 first (no label), then group 0, the copies' group
    assert 0 in got.clusters.tolist()
    assert not any(np.allclose(x[row], x[0]) for row in got.rows)


def test_labelled_files_of_every_kind(labelled_folder, tmp_path, capsys):
    """An eval subset JSON counts its validation images as labelled too; a name with a backslash
    is taken as it is; one path alone is a list of one; an empty list is round 0."""
    (labelled_folder / "circle" / "a\\b.png").write_bytes((labelled_folder / "circle" / "000.png").read_bytes())
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"train": ["circle/001.png"], "val": ["square/002.png"]}))
    listed = tmp_path / "listed.txt"
    listed.write_text("circle/a\\b.png\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    summary = select_images(labelled_folder, out=tmp_path / "sel", budget=3, labelled=[subset, listed, empty],
                            **ENCODER)
    assert summary["labelled"] == 3
    chosen = {r["file"] for r in read_csv(tmp_path / "sel" / "to_label.csv")}
    assert not chosen & {"circle/001.png", "square/002.png", "circle/a\\b.png"}
    assert select_images(labelled_folder, out=tmp_path / "sel", budget=3, labelled=str(listed),
                         **ENCODER)["labelled"] == 1
    with pytest.raises(UserError, match=r"seed= must lie in \[0, 2\^32\), got -1"):
        select_images(labelled_folder, out=tmp_path / "sel2", budget=3, seed=-1, **ENCODER)


def test_a_subset_json_that_eval_saved_is_its_own_split_again(split_folder, tmp_path, capsys):
    names = [f"{c}/{i:03d}.png" for c in ("circle", "square", "stripes") for i in range(4)]
    (tmp_path / "list.txt").write_text("\n".join(names))
    options = ["--data", str(split_folder), "--val-fraction", "0.25", "--epochs", "3", "--json", *CLI_ENCODER]
    assert main(["eval", "linear", "--subset", str(tmp_path / "list.txt"), *options]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["eval", "linear", "--subset", first["subsets"][0], *options]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["labelled_images"], again["val_images"]) == (first["labelled_images"], first["val_images"]) == (9, 3)
    assert again["top1"] == first["top1"]


def test_two_lists_of_the_same_name_and_size_are_told_apart(split_folder, tmp_path):
    from selfsup.eval.subsets import Budget
    for folder, names in (("a", ["circle/000.png", "square/000.png"]), ("b", ["circle/001.png", "square/001.png"])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "to_label.csv").write_text("rank,file\n" + "".join(f"1,{n}\n" for n in names))
    texts = {Budget(subset=str(tmp_path / f / "to_label.csv")).describe() for f in ("a", "b")}
    assert len(texts) == 2 and all(t.startswith("the 2 labels listed in to_label.csv (") for t in texts)


def test_two_chosen_images_never_share_one_copy(labelled_folder, tmp_path):
    """a.png and ../a.png are two files: their copies keep apart (the second overwrote the first)."""
    (tmp_path / "lists" / "circle").mkdir(parents=True)
    (tmp_path / "lists" / "circle" / "000.png").write_bytes((labelled_folder / "square" / "000.png").read_bytes())
    (tmp_path / "lists" / "pool.txt").write_text("circle/000.png\n../labelled/circle/000.png\n")
    select_images(tmp_path / "lists" / "pool.txt", out=tmp_path / "sel", budget=2, strategy="random", copy=True,
                  **ENCODER)
    copied = tmp_path / "sel" / "to_label"
    assert (copied / "circle" / "000.png").read_bytes() == (labelled_folder / "square" / "000.png").read_bytes()
    assert (copied / "__up__" / "labelled" / "circle" / "000.png").read_bytes() == \
        (labelled_folder / "circle" / "000.png").read_bytes()


def test_typiclust_takes_copies_only_when_nothing_else_is_left_anywhere(monkeypatch):
    """A group left with nothing but copies of what is labelled or chosen is used up: the other
    large groups, then the small ones, come first; copies fill the budget last, and are counted
    (the review's select --budget 10 ranked copies of ranks 2 and 3 at 8 and 9)."""
    rng = np.random.default_rng(0)
    x, truth = planted_groups(rng, [10, 8, 3, 2])
    x[:10] = x[0]  # group 0: ten copies of one image
    monkeypatch.setattr(selection, "kmeans", lambda x, k, **kw: (None, truth))
    labelled = np.zeros(len(x), dtype=bool)
    got = choose_typiclust(x, 16, labelled)  # 1 + 8 + 3 + 2 = 14 distinct images, then 2 copies
    assert got.clusters.tolist() == [0, 1] + [1] * 7 + [2, 3, 2, 3, 2] + [0, 0]
    assert got.copies == 2 and len(set(got.rows.tolist())) == 16
    assert choose_typiclust(x, 14, labelled).copies == 0

    labelled[0] = True  # the image labelled: its copies come after every other image
    got = choose_typiclust(x, 15, labelled)
    assert got.clusters.tolist() == [1] * 8 + [2, 3, 2, 3, 2] + [0, 0] and got.copies == 2


def test_select_warns_when_the_budget_takes_copies(labelled_folder, tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, name in enumerate(["circle/000.png", "square/000.png", "stripes/000.png"]):
        data = (labelled_folder / name).read_bytes()
        for copy in range(2):
            (pool / f"{i}_{copy}.png").write_bytes(data)
    summary = select_images(pool, out=tmp_path / "sel", budget=5, **ENCODER)
    chosen = [r["file"] for r in read_csv(tmp_path / "sel" / "to_label.csv")]
    assert {name[0] for name in chosen[:3]} == {"0", "1", "2"} and summary["copies_chosen"] == 2
    assert "2 of the 5 chosen images are exact copies" in capsys.readouterr().err


def test_typiclust_passes_over_a_group_of_exactly_five_images(monkeypatch):
    """TypiClust skips groups of 5 or fewer: a group of exactly MIN_CLUSTER_SIZE images is an outlier
    group too, visited only when the larger groups have nothing left."""
    rng = np.random.default_rng(0)
    x, truth = planted_groups(rng, [10, 8, 5])
    monkeypatch.setattr(selection, "kmeans", lambda x, k, **kw: (None, truth))
    got = choose_typiclust(x, 3, np.zeros(len(x), dtype=bool))  # groups of 10 and 8, then the 10 again
    assert got.clusters.tolist() == [0, 1, 0] and got.small_groups == 1


@pytest.mark.parametrize("seed", range(2))
def test_distances_are_taken_after_centring_on_the_pools_mean(seed):
    """Embeddings share a common direction (every image of a collection does): `choose` measures
    distances between the embeddings minus the pool's mean, renormalised, as `selfsup cluster`."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 80, 8) + 3 * unit_rows(rng, 1, 8)  # a strong shared direction
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labelled = np.zeros(80, dtype=bool)
    labelled[:2] = True
    centred = x - x.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    assert choose(x, 10, labelled, "kcenter").rows.tolist() == kcenter64(centred, 10, labelled)


@pytest.mark.parametrize("strategy", ["typiclust", "kcenter"])
def test_select_centres_the_embeddings_without_a_copy(labelled_folder, tmp_path, monkeypatch, strategy):
    """A centred copy beside the embeddings was a second (N, D) array held to the end (2 GB at a
    million 512-d images): the strategy now gets the embeddings themselves, centred over themselves."""
    seen = {}
    embed, chooser = selection.embed_sources, getattr(selection, f"choose_{strategy}")

    def choosing(x, *args, **kwargs):
        seen["chosen from"] = x
        return chooser(x, *args, **kwargs)

    monkeypatch.setattr(selection, "embed_sources", lambda *a, **k: seen.setdefault("embedded", embed(*a, **k)))
    monkeypatch.setattr(selection, f"choose_{strategy}", choosing)
    select_images(labelled_folder, out=tmp_path / "sel", budget=3, strategy=strategy, **ENCODER)
    assert np.shares_memory(seen["chosen from"], seen["embedded"]["pool"].vectors)


def test_choose_centres_in_place_only_when_asked():
    x = unit_rows(np.random.default_rng(0), 40, 8).astype(np.float32)
    kept = x.copy()
    assert np.array_equal(choose(x, 5, np.zeros(40, bool), "kcenter").rows,
                          choose(x.copy(), 5, np.zeros(40, bool), "kcenter", in_place=True).rows)
    assert np.array_equal(x, kept)  # not asked: left as it was
    choose(x, 5, np.zeros(40, bool), "kcenter", in_place=True)
    mean = kept.mean(0)
    np.testing.assert_allclose(x, (kept - mean) / np.linalg.norm(kept - mean, axis=1, keepdims=True), atol=1e-6)
