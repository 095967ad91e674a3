"""Evaluation protocols: label subsets, intervals, retrieval, kNN and the probe sweep against
independent computations; fine-tuning; feature caching; weights files; test labels read last."""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from selfsup.cli import main
from selfsup.curate.search import nearest
from selfsup.data import ImageCache
from selfsup.encoder import Encoder, load_encoder
from selfsup.errors import UserError
from selfsup.eval import evaluate_finetune, evaluate_knn, evaluate_linear, evaluate_retrieval, protocols
from selfsup.eval.data import Setup
from selfsup.eval.finetune import FinetuneConfig, freeze, param_groups, Classifier
from selfsup.eval.linear import predict_linear, sweep_linear, train_linear
from selfsup.eval.knn import topk_accuracy
from selfsup.eval.retrieval import RETRIEVAL_SEARCH, mean_average_precision, precision_at_k, ranking_keys, unit_rows
from selfsup.eval.stats import wilson_interval
from selfsup.eval.subsets import Budget, make_split, save_split

from conftest import write_dataset
from test_cli import Evil
from test_eval import reference_knn_predictions

TINY = dict(image_size=16, small_stem=False, device="cpu", show_progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small gain nothing from a second thread, which only waits on the other (and
    stalls for seconds per step when the machine's cores are busy)."""
    torch.set_num_threads(1)


def synthetic_setup(train_x, train_y, test_x, test_y, num_classes) -> Setup:
    """A Setup whose features are given: protocols run on them without an encoder."""
    classes = [f"c{i}" for i in range(num_classes)]

    def cache(labels):
        return ImageCache(images=np.zeros((len(labels), 4, 4, 3), np.uint8), labels=np.asarray(labels),
                          names=[f"{classes[c]}/{i}.png" for i, c in enumerate(labels)], classes=classes,
                          skipped=[], grayscale_rows=np.empty(0, np.int64), median_side=None, source="synthetic")

    encoder = Encoder(backbone=None, image_size=4, cache_size=4, description="synthetic features")
    return Setup("synthetic", encoder, cache(train_y), cache(test_y), torch.device("cpu"),
                 _features=(torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float()))


# ---------------------------------------------------------------------------------------------
# Label subsets


@pytest.mark.parametrize("seed", range(3))
def test_subsets_are_class_balanced_disjoint_and_fixed_by_seed(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(8, 40, size=int(rng.integers(2, 7)))
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    classes = [f"c{i}" for i in range(len(counts))]
    k, fraction, val_fraction = int(rng.integers(1, 6)), float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.05, 0.3))
    for budget, expected in [(Budget(per_class=k), lambda n: k),
                             (Budget(fraction=fraction), lambda n: max(1, round(fraction * n))),
                             (Budget(), lambda n: n - max(1, round(val_fraction * n)))]:
        split = make_split(labels, classes, budget, seed, val_fraction)
        again = make_split(labels, classes, budget, seed, val_fraction)
        assert np.array_equal(split.train, again.train) and np.array_equal(split.val, again.val)
        assert not set(split.train) & set(split.val)
        for c, n in enumerate(counts):
            assert (labels[split.train] == c).sum() == expected(n)
            assert (labels[split.val] == c).sum() == max(1, round(val_fraction * n))
    # Another seed draws other images; a protocol without validation (kNN) gets the same subset.
    other = make_split(labels, classes, Budget(per_class=k), seed + 1, val_fraction)
    assert not np.array_equal(other.train, make_split(labels, classes, Budget(per_class=k), seed, val_fraction).train)
    no_val = make_split(labels, classes, Budget(per_class=k), seed, 0.0)
    assert np.array_equal(no_val.train, make_split(labels, classes, Budget(per_class=k), seed, val_fraction).train)
    assert len(no_val.val) == 0
    # Larger budgets hold the smaller ones: a label-efficiency curve adds labels, it never swaps them.
    small, large = (make_split(labels, classes, Budget(per_class=kk), seed, val_fraction).train for kk in (1, 5))
    assert set(small) <= set(large)


def test_saved_subset_names_the_files():
    labels = np.repeat(np.arange(3), 10)
    setup = synthetic_setup(np.zeros((30, 2)), labels, np.zeros((3, 2)), np.arange(3), 3)
    split = make_split(labels, setup.train.classes, Budget(per_class=2), 4, 0.2)
    saved = json.loads(save_split(split, setup.train, Budget(per_class=2), 0.2).read_text())
    assert saved["train"] == [setup.train.names[i] for i in split.train] and saved["seed"] == 4
    assert saved["val"] == [setup.train.names[i] for i in split.val] and len(saved["val"]) == 6


def test_budgets_that_cannot_be_met_are_refused():
    labels = np.repeat(np.arange(2), [10, 4])
    with pytest.raises(UserError, match=r"per_class=5 is more than class 'b' has: 4 training images \(3 after"):
        make_split(labels, ["a", "b"], Budget(per_class=5), 0, 0.1)
    make_split(labels, ["a", "b"], Budget(per_class=4), 0, 0.0)  # without validation, 4 fit
    for bad in [dict(fraction=0.5, per_class=2), dict(fraction=0.0), dict(fraction=1.5), dict(per_class=0)]:
        with pytest.raises(UserError):
            Budget(**bad)


# ---------------------------------------------------------------------------------------------
# Figures against independent computations


def test_wilson_interval_solves_its_defining_quadratic():
    """The Wilson bounds are the p with |p_hat - p| = z sqrt(p (1 - p) / n) (Wilson 1927)."""
    rng = np.random.default_rng(0)
    z = 1.959964
    for _ in range(50):
        n = int(rng.integers(1, 5000))
        p_hat = int(rng.integers(0, n + 1)) / n
        # (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0
        roots = np.sort(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
        np.testing.assert_allclose(wilson_interval(p_hat, n), roots, atol=1e-9)
    low, high = wilson_interval(1.0, 20)
    assert high == 1.0 and 0.8 < low < 0.9


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_metrics_match_brute_force_float64(seed):
    rng = np.random.default_rng(seed)
    q, g, d, c = 30, 120, int(rng.integers(3, 16)), int(rng.integers(2, 6))
    queries, gallery = rng.normal(size=(q, d)), rng.normal(size=(g, d))
    q_labels, g_labels = rng.integers(0, c, q), rng.integers(0, c, g)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = g_labels[order] == q_labels[:, None]
    aps = [np.mean([relevant[i, :r + 1].sum() / (r + 1) for r in np.flatnonzero(relevant[i])])
           for i in range(q) if relevant[i].any()]
    _, idx, _ = nearest(unit_rows(torch.from_numpy(queries)), unit_rows(torch.from_numpy(gallery)), 10,
                        policy=dataclasses.replace(RETRIEVAL_SEARCH, query_rows=7))
    assert np.array_equal(idx, order[:, :10])
    idx = torch.from_numpy(idx)
    got = precision_at_k(torch.from_numpy(g_labels)[idx], torch.from_numpy(q_labels), ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert got[f"precision@{k}"] == pytest.approx(relevant[:, :k].mean())
    got_map = mean_average_precision(torch.from_numpy(queries), torch.from_numpy(gallery), torch.from_numpy(q_labels),
                                     torch.from_numpy(g_labels), max_elements=500)
    assert got_map == pytest.approx(np.mean(aps), rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_map_with_ties_ranks_them_in_gallery_order(seed):
    """Tied scores (signed one-hot vectors score -1, 0 or 1 exactly; repeated gallery rows score
    alike) are ranked in gallery order, as a stable argsort ranks them; AP in float64 by hand."""
    rng = np.random.default_rng(seed)
    g, q, d, c = int(rng.integers(20, 200)), int(rng.integers(1, 40)), int(rng.integers(2, 6)), int(rng.integers(1, 5))
    if seed % 2:
        gallery = np.eye(d)[rng.integers(0, d, g)] * rng.choice([-1.0, 1.0], (g, 1))
        queries = np.eye(d)[rng.integers(0, d, q)] * rng.choice([-1.0, 1.0], (q, 1))
    else:
        gallery = rng.normal(size=(g // 4, d))[rng.integers(0, g // 4, g)]
        queries = gallery[rng.integers(0, g, q)]
    q_labels, g_labels = rng.integers(0, c + 1, q), rng.integers(0, c, g)  # label c: none in the gallery
    chunk = int(rng.integers(1, q + 1))
    unit_q, unit_g = (torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1) for x in (queries, gallery))
    sims = torch.cat([unit_q[i:i + chunk] @ unit_g.T for i in range(0, q, chunk)]).double().numpy()
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = g_labels[order] == q_labels[:, None]
    aps = [np.mean([relevant[i, :r + 1].sum() / (r + 1) for r in np.flatnonzero(relevant[i])])
           for i in range(q) if relevant[i].any()]
    got = mean_average_precision(torch.from_numpy(queries), torch.from_numpy(gallery), torch.from_numpy(q_labels),
                                 torch.from_numpy(g_labels), max_elements=chunk * g)
    assert got == pytest.approx(np.mean(aps) if aps else 0.0, abs=1e-12)


def test_ranking_keys_order_as_a_stable_sort_from_the_highest():
    rng = np.random.default_rng(0)
    values = np.array([-np.inf, -2.5, -1, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1, np.inf], np.float32)
    for _ in range(100):
        scores = rng.choice(values, int(rng.integers(1, 300)))
        keys = ranking_keys(scores, np.arange(len(scores)))
        assert np.array_equal(np.argsort(keys), np.argsort(-scores, kind="stable"))


def test_few_label_knn_matches_brute_force_on_the_subset():
    rng = np.random.default_rng(1)
    train_y, test_y = rng.integers(0, 4, 200), rng.integers(0, 4, 40)
    train_x, test_x = rng.normal(size=(200, 8)) + train_y[:, None], rng.normal(size=(40, 8)) + test_y[:, None]
    setup = synthetic_setup(train_x, train_y, test_x, test_y, 4)
    result = protocols.knn_protocol(setup, Budget(per_class=5), seeds=2, k=(3, 11), temperature=0.1)
    tops = []
    for seed in range(2):
        subset = make_split(train_y, setup.train.classes, Budget(per_class=5), seed, 0.0).train
        scores = reference_knn_predictions(train_x[subset], train_y[subset], test_x, 11, 0.1, 4)
        tops.append((scores.argmax(1) == test_y).mean())
        assert result["per_seed"][seed]["top1"] == pytest.approx(tops[-1])
    assert result["top1"] == pytest.approx(np.mean(tops)) and result["top1_std"] == pytest.approx(np.std(tops, ddof=1))
    assert result["by_k"]["11"]["top1"] == result["top1"] and result["labelled_images"] == 20
    assert result["top1_ci"] == pytest.approx(list(wilson_interval(result["top1"], 40)))


@pytest.mark.parametrize("classes", [5, 6])
def test_top5_is_recorded_only_with_more_than_five_classes(classes):
    # With 5 classes or fewer every class is in the top 5: top-5 was 1.0 in --json and the report.
    from selfsup.report.tables import EVAL_HEADERS, eval_rows
    rng = np.random.default_rng(2)
    train_y, test_y = np.repeat(np.arange(classes), 6), np.arange(classes)
    setup = synthetic_setup(rng.normal(size=(len(train_y), 4)), train_y, rng.normal(size=(classes, 4)), test_y, classes)
    knn = protocols.knn_protocol(setup, seeds=1, k=(3, 5))
    linear = protocols.linear_protocol(setup, Budget(per_class=2), seeds=2, lr=1e-2, weight_decay=0.0, epochs=2)
    keys = [*knn, *knn["by_k"]["5"], *knn["per_seed"][0], *linear, *linear["per_seed"][0]]
    named = {k for k in keys if "top5" in k}
    assert named == set() if classes <= 5 else {"top5", "top5_std", "top5_ci"} <= named
    cells = [dict(zip(EVAL_HEADERS, row))["top-5"] for row in eval_rows([knn, linear])]
    assert all(cells) == (classes > 5) and all(cell == "" for cell in cells) == (classes <= 5)


def test_linear_sweep_keeps_the_best_on_validation_and_never_sees_test():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    x = centres[labels] + 1.5 * torch.randn(300, 16, generator=g)
    train, val = slice(0, 200), slice(200, 300)
    lrs, wds = (1e-4, 1e-2), (0.0, 5.0)
    _, _, _, chosen = sweep_linear(x[train], labels[train], x[val], labels[val], 4, lrs, wds, epochs=10, batch_size=64)
    accuracies = {}
    for lr in lrs:  # each grid point trained again, independently, and scored on validation
        for wd in wds:
            head, mean, scale = train_linear(x[train], labels[train], 4, epochs=10, lr=lr, weight_decay=wd, batch_size=64)
            accuracies[(lr, wd)] = topk_accuracy(predict_linear(head, mean, scale, x[val]), labels[val], ks=(1,))["top1"]
    best = max(accuracies.values())
    assert chosen["val_top1"] == pytest.approx(best)
    assert (chosen["lr"], chosen["weight_decay"]) == next(k for k, v in accuracies.items() if v == best)
    with pytest.raises(UserError, match="give one lr= and one weight_decay="):
        sweep_linear(x[train], labels[train], x[:0], labels[:0], 4, lrs, wds)


@pytest.mark.parametrize("seed", range(3))
def test_a_dimension_constant_on_the_training_images_does_not_sway_the_probe(seed):
    """A unit that is zero on every labelled image (a ReLU, few labels) and not on test images
    is ignored: the probe's scores do not depend on what it holds there, and the others are
    standardised as without it."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g)
    labels = torch.randint(0, 4, (400,), generator=g)
    x = torch.cat([centres[labels] + torch.randn(400, 16, generator=g), torch.zeros(400, 1)], dim=1)
    head, mean, scale = train_linear(x[:200], labels[:200], 4, epochs=20, seed=seed)
    assert scale[-1] == 0 and torch.isfinite(scale).all()
    torch.testing.assert_close(scale[:-1], 1 / x[:200, :-1].std(dim=0))
    test = x[200:].clone()
    scores = predict_linear(head, mean, scale, test)
    for value in (0.01, 5.0, 1e4):  # what the unit holds on the test images
        test[:, -1] = value * torch.rand(200, generator=g)
        assert torch.equal(predict_linear(head, mean, scale, test), scores)
    assert (scores.argmax(1) == labels[200:]).float().mean() > 0.6


# ---------------------------------------------------------------------------------------------
# Test labels are read only to score


def poison_test_labels(monkeypatch):
    """Replace the test labels by wrong ones everywhere except where scoring reads them."""
    real, reveals = {}, []
    prepare = protocols.prepare

    def poisoned_prepare(*args, **kwargs):
        setup = prepare(*args, **kwargs)
        real["labels"] = setup.test.labels.copy()
        setup.test = dataclasses.replace(setup.test, labels=(setup.test.labels + 1) % len(setup.test.classes))
        return setup

    def reveal(setup):
        reveals.append(1)
        return torch.from_numpy(real["labels"])

    monkeypatch.setattr(protocols, "prepare", poisoned_prepare)
    monkeypatch.setattr(protocols, "reveal_test_labels", reveal)
    return reveals


def figures_of(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "subsets"}


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune", "retrieval"])
def test_no_test_label_is_read_before_scoring(protocol, split_folder, monkeypatch):
    evaluate, options = {
        "knn": (evaluate_knn, dict(k=(3, 10))),
        "linear": (evaluate_linear, dict(epochs=3, lr=(1e-3, 1e-2), weight_decay=0.0)),
        "finetune": (evaluate_finetune, dict(config=dict(epochs=2, min_steps=2, batch_size=8))),
        "retrieval": (evaluate_retrieval, dict(ks=(1, 5))),
    }[protocol]
    backbone = "random:resnet18-half" if protocol == "finetune" else "random:resnet18"
    run = lambda: evaluate(backbone, data=split_folder, per_class=6, seeds=2, **options, **TINY)  # noqa: E731
    clean = run()
    reveals = poison_test_labels(monkeypatch)
    assert figures_of(run()) == figures_of(clean)
    assert len(reveals) == 2  # once per seed, to score
    if protocol == "knn":  # the sentinel is noticed where labels are read: scoring with it changes the result
        monkeypatch.setattr(protocols, "reveal_test_labels", lambda setup: torch.from_numpy(setup.test.labels))
        assert run()["top1"] != clean["top1"]


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def test_frozen_stages_stay_put_and_the_encoder_learns_slower():
    net_backbone = load_encoder("random:resnet18-half", 16, False).backbone
    model = Classifier(net_backbone, 3, torch.Generator().manual_seed(0))
    frozen = freeze(model.backbone.net, 2)
    net = model.backbone.net
    assert all(not p.requires_grad for m in (net.conv1, net.bn1, net.layer1, net.layer2) for p in m.parameters())
    assert all(p.requires_grad for m in (net.layer3, net.layer4) for p in m.parameters())
    assert set(frozen) == {net.conv1, net.bn1, net.layer1, net.layer2}
    groups = param_groups(model, FinetuneConfig(lr=0.01, encoder_lr_ratio=0.1))
    head = {id(p) for p in model.head.parameters()}
    for group in groups:
        assert group["lr"] == pytest.approx(0.01 if {id(p) for p in group["params"]} <= head else 0.001)
        assert group["weight_decay"] == 0 or all(p.ndim > 1 for p in group["params"])
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(UserError, match="more than the 4 stages"):
        freeze(load_encoder("random:resnet18-half", 16, False).backbone.net, 5)


def test_vits_freeze_blocks_and_learn_slower_block_by_block():
    model = Classifier(load_encoder("random:timm:vit_tiny_patch16_224", 32).backbone, 3, torch.Generator())
    net = model.backbone.net
    frozen = freeze(net, 2)
    assert set(frozen) == {net.patch_embed, net.blocks[0], net.blocks[1]}
    assert not net.cls_token.requires_grad and not net.pos_embed.requires_grad
    assert net.blocks[2].norm1.weight.requires_grad
    lr_of = {id(p): g["peak_lr"] for g in param_groups(model, FinetuneConfig(lr=1.0, layer_decay=0.5))
             for p in g["params"]}
    depth = len(net.blocks)  # 12: block i learns at 0.5 ** (depth - i), the head and final norm at 1
    assert lr_of[id(model.head.weight)] == 1.0 and lr_of[id(net.norm.weight)] == 1.0
    for i in range(2, depth):
        assert lr_of[id(net.blocks[i].attn.qkv.weight)] == pytest.approx(0.5 ** (depth - i))
    assert id(net.blocks[1].attn.qkv.weight) not in lr_of and id(net.cls_token) not in lr_of


def test_finetuning_with_frozen_stages_changes_only_the_rest(split_folder, monkeypatch):
    from selfsup.eval import finetune as finetune_module

    kept = {}
    original = finetune_module.finetune

    def keep_model(*args, **kwargs):
        kept["tuned"] = original(*args, **kwargs)
        kept["backbone"] = args[0]
        return kept["tuned"]

    monkeypatch.setattr(protocols, "finetune", keep_model)
    result = evaluate_finetune("random:resnet18-half", data=split_folder, **TINY,
                               config=dict(freeze_stages=3, epochs=3, min_steps=3, batch_size=16, lr=0.05))
    before, after = kept["backbone"].net.state_dict(), kept["tuned"].model.backbone.net.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == (not key.startswith("layer4")), key  # stem, layer1-3 (and their BN statistics) frozen
    assert 0 <= result["top1"] <= 1 and result["val_images"] == 6 and result["steps"] <= 9
    assert result["config"]["freeze_stages"] == 3


# ---------------------------------------------------------------------------------------------
# Features cached; plain weights files; the command line


def test_features_are_cached_per_encoder_and_data(split_folder, monkeypatch):
    from selfsup.eval import features

    calls = []
    original = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    data = dict(train=split_folder / "train", test=split_folder / "test")
    first = evaluate_knn("random:resnet18", **data, k=(5,), **TINY)
    assert len(calls) == 2  # train and test
    assert evaluate_knn("random:resnet18", **data, k=(5,), **TINY)["top1"] == first["top1"]
    assert len(calls) == 2  # read back from the cache
    evaluate_knn("random:resnet18-half", **data, k=(5,), **TINY)
    assert len(calls) == 4  # another encoder
    write_dataset(split_folder / "test", per_class=7, seed=3)  # the test data changes
    evaluate_knn("random:resnet18", **data, k=(5,), **TINY)
    assert len(calls) == 5  # only the test features are computed again


def test_weights_files_load_and_mismatches_are_one_line_errors(tmp_path, split_folder, capsys):
    encoder = load_encoder("random:resnet18", 16, False, seed=3)
    state = encoder.backbone.net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "fc.weight": torch.zeros(2)},
               tmp_path / "w.pth")
    x = torch.rand(2, 3, 16, 16)
    for name in ("w.safetensors", "w.pth"):
        loaded = load_encoder(f"weights:{tmp_path / name}", 16, backbone="resnet18").backbone.eval()
        assert torch.equal(loaded(x), encoder.backbone.eval()(x))
        assert loaded.net.conv1.kernel_size == (7, 7)  # the stem read from the weights
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": Evil(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="cannot be read as a weights file"):
        load_encoder(f"weights:{tmp_path / 'evil.pth'}", 16, backbone="resnet18")
    assert not marker.exists(), "reading a weights file ran code from it"
    common = ["--data", split_folder, "--no-progress", "--image-size", "16"]
    for args, message in [
        (["--checkpoint", f"weights:{tmp_path / 'w.pth'}", "--backbone", "resnet34"],
         "does not fit backbone 'resnet34'"),
        (["--checkpoint", f"weights:{tmp_path / 'w.pth'}", "--backbone", "resnet18-half"], "of other shapes"),
        (["--checkpoint", f"weights:{tmp_path / 'w.pth'}"], "--backbone NAME"),
        (["--checkpoint", "random:resnet18", "--backbone", "resnet50"], "holds a resnet18, not a resnet50"),
        (["--checkpoint", "random:resnet18", "--per-class", "20"], "more than class 'circle' has: 16"),
        (["--checkpoint", "random:resnet18", "--per-class", "2", "--fraction", "0.5"], "not both"),
    ]:
        assert main(["eval", "knn", *map(str, args), *map(str, common)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("selfsup: error: ") and message in err, err


def main_curve_lines(tmp_path, split_folder, capsys) -> list[dict]:
    assert main(["eval", "curve", "--checkpoint", "random:resnet18", "--data", str(split_folder), "--per-class", "1",
                 "4", "--seeds", "2", "--protocol", "knn", "--image-size", "16", "--out", str(tmp_path / "c.png"),
                 "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)["lines"]


def test_retrieval_and_curve_through_the_command_line(tmp_path, split_folder, capsys):
    assert main(["eval", "retrieval", "--checkpoint", "random:resnet18", "--data", str(split_folder), "--json",
                 "--no-progress", "--image-size", "16", "--k", "1", "3", "--out", str(tmp_path / "nn.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"precision@1", "precision@3", "map"} <= set(result)
    neighbours = json.loads((tmp_path / "nn.json").read_text())
    assert len(neighbours["queries"]) == 18 and all(len(n) == 3 for n in neighbours["neighbours"])
    assert main(["eval", "curve", "--checkpoint", "random:resnet18", "random:resnet18-half",
                 "--data", str(split_folder),
                 "--per-class", "1", "4", "--seeds", "2", "--protocol", "knn", "--image-size", "16",
                 "--out", str(tmp_path / "curve.png"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and out.count("/class") == 4
    # Each point keeps each seed's figure, as every evaluation's record does.
    points = [p for line in main_curve_lines(tmp_path, split_folder, capsys) for p in line["points"]]
    assert all([s["seed"] for s in p["per_seed"]] == [0, 1] for p in points)
    assert all(np.mean([s["top1"] for s in p["per_seed"]]) == pytest.approx(p["top1"]) for p in points)
    # An --out without a suffix gets .png, and --json reports the file that was written.
    assert main(["eval", "curve", "--checkpoint", "random:resnet18", "--data", str(split_folder), "--per-class", "1",
                 "--seeds", "1", "--protocol", "knn", "--image-size", "16", "--out", str(tmp_path / "plain"),
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(tmp_path / "plain.png")
    assert (tmp_path / "plain.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "file").write_text("")  # a plot under a file: one line, no traceback
    assert main(["eval", "curve", "--checkpoint", "random:resnet18", "--data", str(split_folder), "--per-class", "1",
                 "--seeds", "1", "--protocol", "knn", "--image-size", "16", "--out", str(tmp_path / "file" / "c.png"),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"selfsup: error: cannot create '{tmp_path / 'file'}' (")


def test_a_curve_point_names_its_label_subsets_as_a_single_evaluation_does(tmp_path, split_folder, capsys):
    # Curve records held no subset files: a rerun could not tell whether it drew the same labels.
    # Each point now keeps its files, each seed the digest of its images' names, its seeds and k.
    import hashlib
    [line] = main_curve_lines(tmp_path, split_folder, capsys)
    single = evaluate_knn("random:resnet18", data=split_folder, per_class=4, seeds=2, image_size=16, device="cpu",
                          show_progress=False)
    one, four = line["points"]
    assert four["subsets"] == single["subsets"] and len(set(one["subsets"] + four["subsets"])) == 4
    digests = [s["subset_sha256"] for s in four["per_seed"]]
    assert digests == [s["subset_sha256"] for s in single["per_seed"]]
    assert len(set(digests + [s["subset_sha256"] for s in one["per_seed"]])) == 4  # per seed, per budget
    for file, digest in zip(four["subsets"], digests):  # the digest is of the file's names, training then validation
        listed = json.loads(open(file).read())
        assert hashlib.sha256("\n".join(["train", *listed["train"], "val", *listed["val"]]).encode()).hexdigest() == \
            digest
    assert (four["seeds"], four["k"], four["k_asked"], four["labelled_images"]) == (2, 12, 200, 12)
    assert (line["train_pixels_sha256"], line["test_pixels_sha256"]) == \
        (single["train_pixels_sha256"], single["test_pixels_sha256"])


def test_options_out_of_range_are_one_line_errors_before_any_image_is_read(tmp_path, capsys):
    missing = tmp_path / "no-data"  # read only after the options are checked: its error must not come first
    (tmp_path / "file").write_text("")
    for evaluate, options, message in [
        (evaluate_knn, dict(k=0), "k= must be in [1, inf], got 0"),
        (evaluate_knn, dict(k=(5, -3)), "k= must be in [1, inf], got -3"),
        (evaluate_knn, dict(temperature=0), "temperature= must be in [1e-06, inf], got 0.0"),
        (evaluate_knn, dict(temperature=-1), "temperature= must be in [1e-06, inf], got -1.0"),
        (evaluate_retrieval, dict(ks=0), "ks= must be in [1, inf], got 0"),
        (evaluate_retrieval, dict(ks=(1, -3)), "ks= must be in [1, inf], got -3"),
        (evaluate_retrieval, dict(out=tmp_path), f"{str(tmp_path)!r} is a folder"),
        (evaluate_retrieval, dict(out=tmp_path / "file" / "nn.json"), f"cannot create {str(tmp_path / 'file')!r}"),
        (evaluate_linear, dict(epochs=0), "epochs= must be in [1, inf], got 0"),
        (evaluate_linear, dict(lr=(1e-3, -1)), "lr= must be in [0.0, inf], got -1.0"),
        (evaluate_linear, dict(weight_decay=-1), "weight_decay= must be in [0.0, inf], got -1.0"),
        (evaluate_linear, dict(batch_size=0), "batch_size= must be in [1, inf], got 0"),
        (evaluate_finetune, dict(config={"epochs": 0}), "config['epochs'] must be in [1, inf], got 0"),
        (evaluate_finetune, dict(config={"freeze_stages": -1}), "config['freeze_stages'] must be in [0, inf], got -1"),
        (evaluate_linear, dict(val_fraction=0.9), "val_fraction= must lie in [0, 0.5], got 0.9"),
        (evaluate_finetune, dict(val_fraction=-1), "val_fraction= must lie in [0, 0.5], got -1"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate("random:resnet18", data=missing, **options, **TINY)
    for args, message in [(["knn", "--k", "-3"], "error: --k must be in [1, inf], got -3"),
                          (["knn", "--temperature", "0"], "error: --temperature must be in"),
                          (["retrieval", "--k", "0"], "error: --k must be in"),
                          (["retrieval", "--out", str(tmp_path / "file" / "nn.json")], "cannot create"),
                          (["linear", "--batch-size", "0"], "error: --batch-size must be in"),
                          (["linear", "--lr", "-1"], "error: --lr must be in [0.0, inf], got -1.0"),
                          (["finetune", "--freeze-stages", "-1"], "error: --freeze-stages must be in [0, inf], got -1"),
                          (["finetune", "--lr", "-1"], "error: --lr must be in [0.0, inf]"),
                          (["linear", "--val-fraction", "0.9"], "error: --val-fraction must lie in [0, 0.5]")]:
        assert main(["eval", *args, "--checkpoint", "random:resnet18", "--data", str(missing), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("selfsup: error: ") and message in err, err


def test_fine_tuning_options_for_the_other_kind_of_encoder_are_refused_before_any_image_is_read(tmp_path, capsys):
    missing = tmp_path / "no-data"
    for checkpoint, config, message in [
        ("random:resnet18", {"layer_decay": 0.65}, "config['layer_decay'] is for ViT encoders and this one is a CNN"),
        ("random:resnet18", {"drop_path_rate": 0.2}, "config['drop_path_rate'] is for ViT encoders"),
        ("random:vit-tiny", {"encoder_lr_ratio": 0.5}, "config['encoder_lr_ratio'] is for CNN encoders; a ViT is "
                                                       "fine-tuned with layer-wise decay "
                                                       "(config={'layer_decay': 0.75})"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate_finetune(checkpoint, data=missing, config=config, image_size=32, show_progress=False)
    # Each where it belongs (and a ViT at --layer-decay 1 learns at --encoder-lr-ratio): on to the data.
    for checkpoint, config in [("random:resnet18", {"encoder_lr_ratio": 0.5}), ("random:vit-tiny", {"layer_decay": 0.5}),
                               ("random:vit-tiny", {"encoder_lr_ratio": 0.5, "layer_decay": 1.0})]:
        with pytest.raises(UserError, match="does not exist"):
            evaluate_finetune(checkpoint, data=missing, config=config, image_size=32, show_progress=False)
    # (With --image-size: without it a random: encoder takes the images' size, so their listing comes first.)
    assert main(["eval", "finetune", "--checkpoint", "random:resnet18", "--data", str(missing), "--layer-decay", "0.5",
                 "--image-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("selfsup: error: --layer-decay is for ViT encoders"), err


def test_knn_options_are_checked_whoever_calls_the_protocol():
    """The label-efficiency curve and other callers go through the protocols, not evaluate_*."""
    setup = synthetic_setup(np.eye(4), [0, 1, 2, 3], np.eye(4), [0, 1, 2, 3], 4)
    with pytest.raises(UserError, match=re.escape("temperature= must be in")):
        protocols.knn_protocol(setup, k=3, temperature=0.0)
    assert protocols.knn_protocol(setup, k=1, temperature=1e-6)["top1"] == 1.0  # a plain int k; no overflow


def test_a_run_folder_that_cannot_be_written_still_gets_its_result(tmp_path, capsys):
    from selfsup.eval.record import EVALS_FILE, read_evals, record_result
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: simclr\n")
    assert record_result(str(run / "last.pt"), {"top1": 0.5}) == run / EVALS_FILE
    assert read_evals(run)[0]["top1"] == 0.5
    (run / EVALS_FILE).unlink()
    (run / EVALS_FILE).mkdir()  # unwritable whoever runs the test (root ignores permissions)
    assert record_result(str(run / "last.pt"), {"top1": 0.5}) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not add the result to" in err[0] and "(record=False skips this)" in err[0]


def test_a_curve_gives_size_and_stem_to_random_encoders_and_a_run_keeps_its_own(tmp_path, split_folder, capsys):
    import selfsup
    run = selfsup.pretrain(method="simclr", data=split_folder / "train", out=tmp_path / "run", epochs=1,
                           batch_size=8, image_size=16, backbone="resnet18-half", small_stem=True,
                           show_progress=False)
    assert main(["eval", "curve", "--checkpoint", str(run.out), "random:resnet18-half", "--data", str(split_folder),
                 "--per-class", "2", "--seeds", "1", "--protocol", "knn", "--image-size", "24", "--no-small-stem",
                 "--out", str(tmp_path / "curve.png"), "--no-progress", "--json"]) == 0
    lines = json.loads(capsys.readouterr().out)["lines"]
    assert len(lines) == 2 and lines[0]["checkpoint"] == str(run.out)
    assert [line["image_size"] for line in lines] == [24, 24]  # --image-size is for every encoder
    # Without --image-size a random: baseline is drawn at the run's size (not 224), wherever it is listed.
    assert main(["eval", "curve", "--checkpoint", "random:resnet18-half", str(run.out), "--data", str(split_folder),
                 "--per-class", "2", "--seeds", "1", "--protocol", "knn", "--out", str(tmp_path / "curve2.png"),
                 "--no-progress", "--json"]) == 0
    lines = json.loads(capsys.readouterr().out)["lines"]
    assert [(line["checkpoint"], line["image_size"]) for line in lines] == [("random:resnet18-half", 16),
                                                                           (str(run.out), 16)]
    with pytest.raises(UserError, match="was trained with the small stem, which its weights fix"):
        evaluate_knn(run.out, data=split_folder, small_stem=False, show_progress=False)


def test_evaluating_a_run_on_the_images_it_was_pretrained_on_is_said(tmp_path, split_folder, capsys):
    # A run pretrained on the test folder was scored on images it had seen, without a word; the
    # records now keep its pretraining images' digest, and a match with the test images is said.
    import selfsup
    common = dict(data=split_folder, k=(5,), device="cpu", show_progress=False)
    runs = {name: selfsup.pretrain(method="simclr", data=split_folder / name, out=tmp_path / name, epochs=1,
                                   batch_size=8, image_size=16, backbone="resnet18-half", show_progress=False).out
            for name in ("train", "test")}
    capsys.readouterr()
    result = evaluate_knn(runs["train"], **common)
    assert "pretrained on the test images" not in capsys.readouterr().err
    assert result["pretrain_pixels_sha256"] == result["train_pixels_sha256"]  # pretrained on the training split
    result = evaluate_knn(runs["test"], **common)
    err = capsys.readouterr().err.strip().splitlines()
    assert result["pretrain_pixels_sha256"] == result["test_pixels_sha256"] == \
        torch.load(runs["test"] / "last.pt", weights_only=True)["data"]["pixels_sha256"]
    assert len(err) == 1 and f"{runs['test']} was pretrained on the test images ({split_folder} [test])" in err[0], err
    assert "(a `data` root holding train/ uses train/ alone)" in err[0]  # from Python: the keyword, not --data


def test_an_unknown_keyword_names_the_public_function_before_any_image_is_read(tmp_path):
    from selfsup.eval import label_efficiency_curve
    for function in (evaluate_knn, evaluate_linear, evaluate_finetune, evaluate_retrieval, label_efficiency_curve):
        with pytest.raises(TypeError, match=rf"^{function.__name__}\(\) got an unexpected keyword argument "
                                            r"'imagesize' \(did you mean 'image_size'\?\); besides its own"):
            function("random:resnet18", data=tmp_path / "missing", imagesize=16)


def test_fine_tuning_options_from_a_yaml_file_are_checked_like_a_dict(tmp_path):
    missing = tmp_path / "no-data"
    (tmp_path / "ft.yaml").write_text("layer_decay: 0.65\n")
    with pytest.raises(UserError, match="config\\['layer_decay'\\] is for ViT encoders and this one is a CNN"):
        evaluate_finetune("random:resnet18", data=missing, config=tmp_path / "ft.yaml", image_size=32,
                          show_progress=False)
    (tmp_path / "ft.yaml").write_text("epochs: 3\nfreeze_stages: 2\n")
    with pytest.raises(UserError, match="does not exist"):  # accepted: on to the data
        evaluate_finetune("random:resnet18", data=missing, config=str(tmp_path / "ft.yaml"), image_size=32,
                          show_progress=False)
    (tmp_path / "ft.yaml").write_text("epoch: 3\n")
    with pytest.raises(UserError, match="unknown config key 'finetune.epoch'"):
        evaluate_finetune("random:resnet18", data=missing, config=tmp_path / "ft.yaml", image_size=32)
    with pytest.raises(UserError, match="config= takes a dict of fine-tuning options, a YAML file of them"):
        evaluate_finetune("random:resnet18", data=missing, config=[("epochs", 3)], image_size=32)
