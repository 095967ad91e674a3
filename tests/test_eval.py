"""Evaluation: kNN against a brute-force float64 reference, the linear probe, the protocols."""
import numpy as np
import pytest
import torch

from selfsup.errors import UserError
from selfsup.eval import evaluate_knn, evaluate_linear
from selfsup.eval.knn import knn_accuracy, knn_scores
from selfsup.eval.linear import linear_accuracy

from conftest import write_dataset


def reference_knn_predictions(train, train_labels, test, k, temperature, num_classes):
    """Wu et al. 2018: weighted vote exp(s/T) of the k most cosine-similar training images."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sims = train @ q
        for j in np.argsort(-sims, kind="stable")[:k]:
            scores[i, train_labels[j]] += np.exp(sims[j] / temperature)
    return scores


@pytest.mark.parametrize("seed", range(4))
def test_knn_matches_brute_force_float64(seed):
    rng = np.random.default_rng(seed)
    n_train, n_test, d, c = 200, 50, int(rng.integers(4, 32)), int(rng.integers(2, 8))
    k, temperature = int(rng.integers(1, 60)), float(rng.uniform(0.05, 0.5))
    train, test = rng.normal(size=(n_train, d)), rng.normal(size=(n_test, d))
    train_labels = rng.integers(0, c, n_train)
    expected = reference_knn_predictions(train, train_labels, test, k, temperature, c)
    got = knn_scores(torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(test), k,
                     temperature, c, chunk=17)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    test_labels = rng.integers(0, c, n_test)
    top1 = knn_accuracy(torch.from_numpy(train).float(), torch.from_numpy(train_labels),
                        torch.from_numpy(test).float(), torch.from_numpy(test_labels), k, temperature, c)["top1"]
    assert top1 == pytest.approx((expected.argmax(1) == test_labels).mean())


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


def test_protocols_on_a_random_encoder(split_folder):
    knn = evaluate_knn("random:resnet18", data=split_folder, image_size=16, k=(5, 20), device="cpu",
                       show_progress=False)
    assert knn["protocol"] == "knn" and set(knn["by_k"]) == {"5", "20"} and knn["k"] == 20
    assert 0 <= knn["top1"] <= knn["top5"] <= 1 and knn["test_images"] == 18 and knn["classes"] == 3
    linear = evaluate_linear("random:resnet18", train=split_folder / "train", test=split_folder / "test",
                             image_size=16, epochs=5, device="cpu", show_progress=False)
    assert 0 <= linear["top1"] <= 1 and linear["train_images"] == 48


def test_train_and_test_classes_must_match(tmp_path):
    write_dataset(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_dataset(tmp_path / "b")
    (tmp_path / "b" / "stripes").rename(tmp_path / "b" / "zigzag")
    with pytest.raises(UserError, match=r"only in train: \['stripes'\]; only in test: \['zigzag'\]"):
        evaluate_knn("random:resnet18", train=tmp_path / "a", test=tmp_path / "b", image_size=16, show_progress=False)


def test_unlabelled_data_and_missing_arguments(tmp_path):
    write_dataset(tmp_path / "flat" / "only")  # 3 classes nested one level lower...
    flat = tmp_path / "loose"
    flat.mkdir()
    for p in (tmp_path / "flat" / "only" / "circle").iterdir():
        p.rename(flat / p.name)
    with pytest.raises(UserError, match="no class labels"):
        evaluate_knn("random:resnet18", train=flat, test=flat, image_size=16, show_progress=False)
    with pytest.raises(UserError, match="give labelled data"):
        evaluate_knn("random:resnet18", train=flat, image_size=16, show_progress=False)
