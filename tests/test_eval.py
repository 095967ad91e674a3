"""Evaluation: kNN against a brute-force float64 reference, the linear probe, the protocols."""
import shutil

import numpy as np
import pytest
import torch

from selfsup.errors import UserError
from selfsup.eval import evaluate_knn, evaluate_linear, evaluate_retrieval
from selfsup.eval.knn import knn_accuracy, knn_scores, topk_accuracy
from selfsup.eval.linear import linear_accuracy

from conftest import write_dataset


def reference_knn_predictions(train, train_labels, test, k, temperature, num_classes):
    """Wu et al. 2018: weighted vote exp(s/T) of the k most cosine-similar training images, as each
    class's share of the vote, in float64 (each weight divided by the largest, so that exp cannot
    overflow even in float64 at T = 0.001; the shares are unchanged)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sims = train @ q
        for j in np.argsort(-sims, kind="stable")[:k]:
            scores[i, train_labels[j]] += np.exp((sims[j] - sims.max()) / temperature)
    return scores / scores.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed, temperature", [(0, 0.5), (1, 0.07), (2, 0.01), (3, 0.005), (4, 0.001)])
def test_knn_matches_brute_force_float64(seed, temperature):
    """Down to T = 0.001, where exp(s / T) itself overflows float32 (and float64)."""
    rng = np.random.default_rng(seed)
    n_train, n_test, d, c = 200, 50, int(rng.integers(4, 32)), int(rng.integers(6, 10))
    k = int(rng.integers(1, 60))
    train, test = rng.normal(size=(n_train, d)), rng.normal(size=(n_test, d))
    train_labels = rng.integers(0, c, n_train)
    expected = reference_knn_predictions(train, train_labels, test, k, temperature, c)
    got = knn_scores(torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(test), k,
                     temperature, c, chunk=17)
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-3, atol=1e-6)
    test_labels = rng.integers(0, c, n_test)
    accuracy = knn_accuracy(torch.from_numpy(train).float(), torch.from_numpy(train_labels),
                            torch.from_numpy(test).float(), torch.from_numpy(test_labels), k, temperature, c)
    assert accuracy["top1"] == pytest.approx((expected.argmax(1) == test_labels).mean())
    # Top-5: the true class got a vote and fewer than 5 classes have a larger share. Two cases
    # are left to the code's own count: the true share within float tolerance of the 5th largest,
    # and a true share near float32's smallest (~1e-38; a vote below it is lost, as it is worth
    # nothing: a share of 1e-60 is no vote).
    true_share = expected[np.arange(n_test), test_labels]
    ranked = -np.sort(-expected, axis=1)
    ahead = (expected > true_share[:, None]).sum(1)
    ambiguous = (np.isclose(true_share, ranked[:, 4], rtol=2e-3, atol=1e-6) & (true_share > 1e-6)) | \
                ((true_share > 1e-46) & (true_share < 1e-36))
    top = got.topk(5)
    code = ((top.indices == torch.from_numpy(test_labels)[:, None]) & (top.values > 0)).any(1).numpy()
    assert accuracy["top5"] == pytest.approx(np.where(ambiguous, code, (true_share > 1e-38) & (ahead < 5)).mean())


def test_knn_top5_counts_only_classes_that_got_a_vote():
    """With k = 1 only one class is voted for: top-5 is top-1, whatever the labels' numbers (an
    arbitrary order of the tied unvoted classes made it 0.48 to 0.57 on 10 classes)."""
    rng = np.random.default_rng(0)
    train, test = torch.from_numpy(rng.normal(size=(100, 8))), torch.from_numpy(rng.normal(size=(60, 8)))
    train_labels = torch.from_numpy(rng.integers(0, 10, 100))
    for test_labels in (torch.zeros(60, dtype=torch.long), torch.full((60,), 9), torch.from_numpy(rng.integers(0, 10, 60))):
        accuracy = knn_accuracy(train, train_labels, test, test_labels, k=1, temperature=0.07, num_classes=10)
        assert accuracy["top5"] == accuracy["top1"]


@pytest.mark.parametrize("seed", range(3))
def test_topk_accuracy_is_the_exact_fraction_of_hits(seed):
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(5, 40)), int(rng.integers(6, 12))
    scores, labels = rng.random((n, classes)), rng.integers(0, classes, n)
    ranks = (scores > scores[np.arange(n), labels][:, None]).sum(1)  # how many classes score higher
    got = topk_accuracy(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got["top1"] == int((ranks < 1).sum()) / n and got["top5"] == int((ranks < 5).sum()) / n  # no float32 noise


def test_linear_probe_separates_separable_features_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g) * 3
    labels = torch.randint(0, 5, (600,), generator=g)
    features = centres[labels] + 0.3 * torch.randn(600, 32, generator=g)
    result = linear_accuracy(features[:500], labels[:500], features[500:], labels[500:], 5, epochs=30)
    assert result["top1"] == 1.0
    noise = torch.randn(600, 32, generator=g)
    random_labels = torch.randint(0, 5, (600,), generator=g)
    result = linear_accuracy(noise[:500], random_labels[:500], noise[500:], random_labels[500:], 5, epochs=30)
    assert result["top1"] < 0.4  # chance is 0.2; 100 test points leave room for luck


def test_protocols_on_a_random_encoder(split_folder, capsys):
    knn = evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=(5, 20), device="cpu",
                       show_progress=False)
    assert knn["protocol"] == "knn" and set(knn["by_k"]) == {"5", "20"} and knn["k"] == 20
    assert 0 <= knn["top1"] <= 1 and knn["test_images"] == 18 and knn["classes"] == 3
    one_k = evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=20, device="cpu", show_progress=False)
    assert list(one_k["by_k"]) == ["20"] and one_k["top1"] == knn["top1"]  # a plain int is one k
    retrieval = evaluate_retrieval("random:resnet18", data=split_folder, image_size=16, ks=3, device="cpu",
                                   show_progress=False)
    assert retrieval["ks"] == [3] and 0 <= retrieval["precision@3"] <= 1
    # Counted exactly (18 queries x 3 neighbours), and no interval claimed where none is given.
    assert (retrieval["precision@3"] * 54).is_integer() and "interval" not in retrieval
    assert knn["image_size"] == retrieval["image_size"] == 16 and "interval" in knn
    few = evaluate_retrieval("random:resnet18", data=split_folder, image_size=16, ks=(1, 5, 50), per_class=4,
                             device="cpu", show_progress=False)  # a gallery of 12 images: no precision@50
    assert few["ks"] == [1, 5] and few["ks_asked"] == [1, 5, 50] and "precision@50" not in few
    assert capsys.readouterr().err.count("no precision@50: the gallery has 12 images") == 1
    linear = evaluate_linear("random:resnet18", train=split_folder / "train", test=split_folder / "test",
                             image_size=16, epochs=5, device="cpu", show_progress=False)
    assert 0 <= linear["top1"] <= 1 and linear["train_images"] == 48


def test_a_random_baseline_names_its_seed_and_weights_in_results_and_curve_lines(split_folder, tmp_path):
    """Which random: baseline a figure is of was not recorded: its seed (and the torch that drew
    it) fix its weights. The result and a curve's line name the seed and the weights' SHA-256."""
    from selfsup.encoder import load_encoder
    from selfsup.eval import label_efficiency_curve
    from selfsup.eval.record import checkpoint_identity, weights_sha256

    common = dict(data=split_folder, image_size=16, device="cpu", show_progress=False)
    result = evaluate_knn("random:resnet18", k=5, **common)
    drawn = {seed: weights_sha256(load_encoder("random:resnet18", image_size=16, seed=seed).backbone)
             for seed in (0, 1)}
    assert (result["init_seed"], result["encoder_weights_sha256"]) == (0, drawn[0]) and drawn[0] != drawn[1]
    assert "checkpoint_sha256" not in result
    other = load_encoder("random:resnet18", image_size=16, seed=1)
    assert checkpoint_identity(other) == {"init_seed": 1, "encoder_weights_sha256": drawn[1]}
    assert other.description == "random:resnet18 (random initialisation, seed 1)"
    curve = label_efficiency_curve("random:resnet18", protocol="knn", per_class=(2,), seeds=1,
                                   out=tmp_path / "c.png", **common)
    [line] = curve["lines"]
    assert (line["init_seed"], line["encoder_weights_sha256"]) == (0, drawn[0])
    assert line["encoder"] == "random:resnet18 (random initialisation, seed 0)"


def test_a_random_baselines_seed_is_chosen_in_its_spec_and_a_bad_one_says_what_to_type(split_folder, tmp_path,
                                                                                      capsys):
    """Every random: baseline was drawn with seed 0, so the spread of untrained draws could not be
    seen. random:BACKBONE@seed=N draws with seed N: two seeds give other weights and features, one
    seed the same twice (random:resnet18 is random:resnet18@seed=0, under one name and cache key)."""
    from selfsup.cli import main
    from selfsup.encoder import load_encoder
    from selfsup.eval import label_efficiency_curve
    from selfsup.eval.record import checkpoint_identity

    images = torch.rand(4, 3, 16, 16)

    def drawn(spec):
        encoder = load_encoder(spec, image_size=16)
        with torch.no_grad():
            return encoder, checkpoint_identity(encoder), encoder.backbone(images)

    (three, digest3, features3), (again, digest_again, features_again) = drawn("random:resnet18@seed=3"), \
        drawn("random:resnet18@seed=3")
    four, digest4, features4 = drawn("random:resnet18@seed=4")
    assert digest3["init_seed"] == 3 and digest4["init_seed"] == 4 and digest3 == digest_again
    assert digest3["encoder_weights_sha256"] != digest4["encoder_weights_sha256"]
    assert torch.equal(features3, features_again) and not torch.allclose(features3, features4)
    assert three.description == "random:resnet18 (random initialisation, seed 3)" and three.key == again.key != four.key
    plain, zero = load_encoder("random:resnet18", image_size=16), load_encoder("random:resnet18@seed=0", image_size=16)
    assert (plain.description, plain.key) == (zero.description, zero.key) and plain.init_seed == 0
    assert load_encoder("random:resnet18@seed=3", image_size=16, seed=3).key == three.key
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_encoder("random:resnet18@seed=3", image_size=16)
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is left as it was
    with pytest.raises(UserError, match="names seed 3 and seed=4 another"):
        load_encoder("random:resnet18@seed=3", image_size=16, seed=4)

    curve = label_efficiency_curve(["random:resnet18@seed=3", "random:resnet18@seed=4"], protocol="knn",
                                   per_class=(2,), seeds=1, out=tmp_path / "c.png", data=split_folder,
                                   image_size=16, device="cpu", show_progress=False)
    assert [(line["checkpoint"], line["init_seed"], line["encoder"]) for line in curve["lines"]] == [
        ("random:resnet18@seed=3", 3, "random:resnet18 (random initialisation, seed 3)"),
        ("random:resnet18@seed=4", 4, "random:resnet18 (random initialisation, seed 4)")]
    assert curve["lines"][0]["encoder_weights_sha256"] == digest3["encoder_weights_sha256"]

    for bad in ("seed=-1", "seed=x", "seed=", "3", "sed=3", "seed=18446744073709551616"):
        assert main(["eval", "knn", "--checkpoint", f"random:resnet18@{bad}", "--data", str(split_folder),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"selfsup: error: 'random:resnet18@{bad}': a random: encoder takes its seed as @seed=N, N a "
                       f"whole number from 0 (below 2**64), e.g. random:resnet18@seed=3"), err


def test_a_curve_lists_its_labelled_data_once_and_warns_of_it_once(split_folder, tmp_path, monkeypatch, capsys):
    """Each encoder of a curve opened the same labelled data: it was listed again for each, and
    what could not be used in it (here a corrupt JPEG) was said once per encoder. The first
    encoder's listing is used by all, and each warning is said once."""
    import selfsup.eval.data as eval_data
    from selfsup.eval import label_efficiency_curve

    first_class = sorted(p for p in (split_folder / "train").iterdir() if p.is_dir())[0]
    (first_class / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    listed = []
    real_listing = eval_data.labelled_sources
    monkeypatch.setattr(eval_data, "labelled_sources", lambda *a: listed.append(a) or real_listing(*a))
    specs = ["random:resnet18@seed=1", "random:resnet18@seed=2", "random:resnet18@seed=3"]
    curve = label_efficiency_curve(specs, protocol="knn", per_class=(2,), seeds=1, out=tmp_path / "c.png",
                                   data=split_folder, image_size=16, device="cpu", show_progress=False)
    assert len(curve["lines"]) == 3 and len(listed) == 1, listed
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 1 of 49 files" in warnings[0] and "broken.jpg" in warnings[0], warnings
    # Said once per curve, not once per process: two curves of one encoder each say it each.
    for spec in specs[:2]:
        label_efficiency_curve(spec, protocol="knn", per_class=(2,), seeds=1, out=tmp_path / "d.png",
                               data=split_folder, image_size=16, device="cpu", show_progress=False)
    again = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert sorted(again) == sorted(warnings * 2), (again, warnings)


def test_a_weights_baseline_records_its_files_sha256(split_folder, tmp_path, monkeypatch):
    """Which file a weights: baseline's figure is of was not recorded: a file replaced under the
    same name gave results that read as the same baseline's. Its result and curve line hold the
    SHA-256 of the file's bytes."""
    import hashlib

    from safetensors.torch import save_file
    from selfsup.encoder import load_encoder
    from selfsup.eval import label_efficiency_curve
    from selfsup.eval.record import checkpoint_identity

    file = tmp_path / "w.safetensors"
    common = dict(backbone="resnet18", data=split_folder, image_size=16, device="cpu", show_progress=False)
    digests = []
    for seed in (1, 2):  # the second replaces the first under the same name
        state = load_encoder("random:resnet18", image_size=16, small_stem=False, seed=seed).backbone.net.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(file))
        digests.append(hashlib.sha256(file.read_bytes()).hexdigest())
        result = evaluate_knn(f"weights:{file}", k=5, **common)
        assert result["weights_file_sha256"] == digests[-1] and "init_seed" not in result
    assert digests[0] != digests[1]
    assert checkpoint_identity(load_encoder(f"weights:{file}", image_size=16, backbone="resnet18")) == \
        {"weights_file_sha256": digests[1], "encoder_weights_sha256": result["encoder_weights_sha256"]}
    curve = label_efficiency_curve(f"weights:{file}", protocol="knn", per_class=(2,), seeds=1,
                                   out=tmp_path / "c.png", **common)
    assert curve["lines"][0]["weights_file_sha256"] == digests[1]

    import os
    import selfsup.weights

    read_weights = selfsup.weights.read_weights

    def read_then_replaced(path):  # another process writes the file while it is read
        read = read_weights(path)
        os.utime(file, ns=(0, 0))
        return read

    monkeypatch.setattr(selfsup.weights, "read_weights", read_then_replaced)
    with pytest.raises(UserError, match="w.safetensors' changed while it was read; run again once it is written"):
        load_encoder(f"weights:{file}", image_size=16, backbone="resnet18")


def test_a_random_baseline_takes_the_images_size_and_weights_their_own_with_a_warning(split_folder, tmp_path,
                                                                                         capsys):
    """random: has no size of its own: it takes the images' (24 px here, as a run on them trains), not
    224, at which it would see them enlarged 9x and beat runs trained at 24 px for that alone. weights:
    keeps the size it was made at, as timm's models do, and says what enlarging the images costs."""
    import torchvision
    from selfsup.eval.command import describe

    result = evaluate_knn("random:resnet18", data=split_folder, k=5, device="cpu", show_progress=False)
    assert describe(result).splitlines()[0] == \
        "knn evaluation of random:resnet18 (random initialisation, seed 0) at 24 px"
    assert "is evaluated at" not in capsys.readouterr().err
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    result = evaluate_knn(f"weights:{weights}", backbone="resnet18", data=split_folder, k=5, device="cpu",
                          show_progress=False)
    assert result["image_size"] == 224
    err = capsys.readouterr().err
    assert "resnet18.pth is evaluated at 224 px, its own size, while the images are mostly 24 px" in err
    assert "enlarged 9x, at 87x the compute; pass image_size=24" in err  # from Python: the keyword


def test_a_random_encoders_size_follows_the_images(tmp_path):
    from PIL import Image
    from selfsup.data.sources import open_source
    from selfsup.encoder import random_size

    def images(side, count=5):
        folder = tmp_path / f"side{side}"
        folder.mkdir()
        for i in range(count):
            Image.new("RGB", (side + 3 * i, side)).save(folder / f"{i}.png")  # the shorter side: `side`
        return open_source(folder)

    small, odd, large = images(24), images(50), images(600)
    sizes = random_size("resnet18", small), random_size("resnet18", odd), random_size("resnet50", large)
    assert sizes == (24, 50, 224)
    assert (random_size("vit-tiny", odd), random_size("vit-small", large)) == (48, 224)  # whole patches of 4, of 16
    assert random_size("timm:resnet18", small) is None  # a timm model: its own default, 224
    (tmp_path / "side24" / "3.png").write_bytes(b"not a png")  # unreadable ones are passed over
    assert random_size("resnet18", open_source(tmp_path / "side24")) == 24


def test_a_random_encoders_size_reads_only_the_headers_of_a_folders_images(tmp_path, monkeypatch):
    """A folder's images are sized from their headers, not read whole: 32 satellite tiles or
    mammograms of hundreds of MB each were read in full before each evaluation, for a size."""
    import pathlib
    from PIL import Image
    from selfsup.data.sources import open_source
    from selfsup.encoder import random_size

    for i in range(5):
        Image.new("RGB", (40 + i, 30)).save(tmp_path / f"{i}.png")
    with open(tmp_path / "0.png", "ab") as f:
        f.write(b"\0" * (1 << 20))  # what follows the header is never read
    source = open_source(tmp_path)

    def whole(path):
        raise AssertionError(f"{path} read whole for its size")

    monkeypatch.setattr(pathlib.Path, "read_bytes", whole)
    assert random_size("resnet18", source) == 30


def test_retrieval_keeps_a_k_equal_to_the_gallery_and_writes_the_first_seeds_neighbours(split_folder, tmp_path):
    """precision@6 of a gallery of 6 images is defined (every image is a neighbour): kept. With
    --seeds 2, the neighbour lists are the first seed's, not overwritten by the second's."""
    import json
    from pathlib import Path

    result = evaluate_retrieval("random:resnet18", data=split_folder, image_size=16, ks=(1, 6), per_class=2, seeds=2,
                                out=tmp_path / "nn.json", device="cpu", show_progress=False)
    assert result["ks"] == [1, 6] and "ks_asked" not in result and "precision@6" in result
    galleries = [set(json.loads(Path(f).read_text())["train"]) for f in result["subsets"]]
    assert len(galleries) == 2 and galleries[0] != galleries[1]
    listed = json.loads((tmp_path / "nn.json").read_text())["neighbours"]
    assert {name for row in listed for name in row} == galleries[0]


def test_train_and_test_classes_must_match(tmp_path):
    write_dataset(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_dataset(tmp_path / "b")
    (tmp_path / "b" / "stripes").rename(tmp_path / "b" / "zigzag")
    with pytest.raises(UserError, match=r"only in train: \['stripes'\]; only in test: \['zigzag'\]; "
                                        r"give both the same class folders$"):
        evaluate_knn("random:resnet18", train=tmp_path / "a", test=tmp_path / "b", image_size=16, show_progress=False)


def test_what_cannot_be_used_in_the_labelled_data_is_said_once(split_folder, tmp_path, capsys):
    """A dangling link under --data ROOT, or under --test (a root or a class folder): one warning, where
    each was listed three times and twice (to find the splits, then once per split)."""
    (split_folder / "test" / "circle" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=5, device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: left out 1 file or folder") == 1
    evaluate_knn("random:resnet18", train=split_folder / "train", test=split_folder, image_size=16, k=5,
                 device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: left out 1 file or folder") == 1
    evaluate_knn("random:resnet18", train=split_folder / "train", test=split_folder / "test", image_size=16, k=5,
                 device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: left out 1 file or folder") == 1


def test_evaluating_on_the_training_images_is_warned_of(split_folder, tmp_path, capsys):
    """The same folder (or a copy of it) as --train and --test: kNN finds each test image itself
    among its neighbours, a linear probe is scored on what it was fitted to. Said; other test
    images are not."""
    train = split_folder / "train"
    evaluate_knn("random:resnet18", train=train, test=train, image_size=16, k=5, device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: the test images are the training images") == 1
    copy = shutil.copytree(train, tmp_path / "copy")  # the same pixels under another name
    evaluate_knn("random:resnet18", train=train, test=copy, image_size=16, k=5, device="cpu", show_progress=False)
    assert "warning: the test images are the training images" in capsys.readouterr().err
    evaluate_knn("random:resnet18", train=train, test=split_folder / "test", image_size=16, k=5, device="cpu",
                 show_progress=False)
    assert "the test images are the training images" not in capsys.readouterr().err


def test_unlabelled_data_and_missing_arguments(tmp_path):
    write_dataset(tmp_path / "flat" / "only")  # 3 classes nested one level lower...
    flat = tmp_path / "loose"
    flat.mkdir()
    for p in (tmp_path / "flat" / "only" / "circle").iterdir():
        p.rename(flat / p.name)
    with pytest.raises(UserError, match="no class labels: its images lie in no subfolders"):
        evaluate_knn("random:resnet18", train=flat, test=flat, image_size=16, show_progress=False)
    # One class folder, and class folders with an image beside them: each said as it is.
    one = write_dataset(tmp_path / "one", per_class=2)
    for cls in ("square", "stripes"):
        shutil.rmtree(one / cls)
    with pytest.raises(UserError, match=r"one class folder \('circle'\); classes need at least 2"):
        evaluate_knn("random:resnet18", train=one, test=one, image_size=16, show_progress=False)
    stray = write_dataset(tmp_path / "stray", per_class=2)
    shutil.copy(next((stray / "circle").iterdir()), stray / "cover.png")
    with pytest.raises(UserError, match=r"1 of its images sit beside the class folders, in none \(e.g. 'cover.png'\)"):
        evaluate_knn("random:resnet18", train=stray, test=stray, image_size=16, show_progress=False)
    with pytest.raises(UserError, match="give labelled data"):
        evaluate_knn("random:resnet18", train=flat, image_size=16, show_progress=False)


def test_seeds_that_cannot_differ_run_once_and_say_so(split_folder, capsys):
    # kNN with every label has no randomness: 3 seeds would report the same figure with a spread of 0.
    once = evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=5, seeds=3, device="cpu",
                        show_progress=False)
    assert once["seeds"] == 1 and len(once["per_seed"]) == 1
    assert "kNN with all labels gives the same result for every seed" in capsys.readouterr().err
    subsets = evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=5, seeds=2, per_class=4,
                           device="cpu", show_progress=False)
    assert subsets["seeds"] == 2 and capsys.readouterr().err == ""


def test_finetune_records_only_the_settings_its_backbone_has(split_folder):
    from selfsup.eval import evaluate_finetune
    result = evaluate_finetune("random:resnet18", data=split_folder, image_size=16, device="cpu", show_progress=False,
                               config={"epochs": 1, "min_steps": 1})
    assert "layer_decay" not in result["config"] and "drop_path_rate" not in result["config"]
    assert result["config"]["epochs"] == 1 and "encoder_lr_ratio" in result["config"]


@pytest.mark.parametrize("damage", ["cut", "empty", "objects", "one-dimensional", "nan"])
def test_a_damaged_feature_file_is_computed_again(split_folder, tmp_path, damage, monkeypatch):
    """A feature file cut short, emptied or not ours (objects are never unpickled) was a
    traceback; the features are computed again and the file replaced. So is one holding a NaN,
    saved before such features were refused (they gave wrong figures)."""
    import os
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    options = dict(data=split_folder, image_size=16, device="cpu", show_progress=False, record=False, k=5)
    first = evaluate_knn("random:resnet18", **options)
    files = sorted((tmp_path / "cache" / "features").glob("*.npy"))  # the train and the test images'
    originals = [f.read_bytes() for f in files]
    for saved, saved_bytes in zip(files, originals):
        if damage == "objects":
            np.save(saved, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
        elif damage == "one-dimensional":
            np.save(saved, np.zeros(48, np.float32))
        elif damage == "nan":
            features = np.load(saved)
            features[:, 0] = np.nan
            np.save(saved, features)
        else:
            saved.write_bytes(saved_bytes[:len(saved_bytes) // 2] if damage == "cut" else b"")
    assert evaluate_knn("random:resnet18", **options)["top1"] == first["top1"]
    assert [f.read_bytes() for f in files] == originals
    assert not [f for f in os.listdir(files[0].parent) if f.endswith(".tmp")]


def test_features_that_cannot_be_kept_are_used_and_said_once(split_folder, tmp_path, monkeypatch, capsys):
    # A full disk under the cache: the features are computed; keeping them for next time is a
    # saving, so it costs a warning, not the evaluation.
    import errno
    import os

    from selfsup.eval import features
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    options = dict(data=split_folder, image_size=16, device="cpu", show_progress=False, record=False, k=5)
    expected = evaluate_knn("random:resnet18", **options)["top1"]
    for saved in (tmp_path / "cache" / "features").glob("*.npy"):
        saved.unlink()

    def full(path, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(features, "save_npy", full)
    capsys.readouterr()
    assert evaluate_knn("random:resnet18", **options)["top1"] == expected
    warnings = [l for l in capsys.readouterr().err.splitlines() if "not kept" in l]
    assert len(warnings) == 2 and "(No space left on device); free space there" in warnings[0]
    assert not list((tmp_path / "cache" / "features").glob("*.npy"))


def test_records_name_the_weights_so_two_runs_of_the_same_weights_are_seen_equal(tmp_path, split_folder):
    """Two runs that trained the same weights in other folders have checkpoints that differ (each
    holds its --out): the record's weights digest is what tells a rerun matched."""
    import shutil

    from selfsup.config import merge_dicts
    from selfsup.eval.record import read_evals
    from selfsup.train import run_pretraining
    from conftest import TINY_RUN

    first = tmp_path / "first"
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(first), "data": {"path": str(split_folder)}}))
    again = tmp_path / "again"
    shutil.copytree(first, again)
    checkpoint = torch.load(again / "last.pt", weights_only=True)
    checkpoint["config"]["out"] = str(again)
    torch.save(checkpoint, again / "last.pt")
    for run in (first, again):
        evaluate_knn(run, data=split_folder, k=5, device="cpu", show_progress=False)
    a, b = (read_evals(run)[-1] for run in (first, again))
    assert a["checkpoint_sha256"] != b["checkpoint_sha256"]
    assert a["encoder_weights_sha256"] == b["encoder_weights_sha256"]
    checkpoint["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, again / "last.pt")
    evaluate_knn(again, data=split_folder, k=5, device="cpu", show_progress=False)
    assert read_evals(again)[-1]["encoder_weights_sha256"] != a["encoder_weights_sha256"]
