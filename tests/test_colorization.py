"""Colorization's ab loss options from Zhang et al. 2016: the soft encoding and the rare-colour
weights against float64 computations from the paper's definitions, the default (the split-brain
paper's one-hot, unweighted loss) unchanged, a tiny run that learns with both, and a resume that
carries the colour counts."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import config as config_lib
from selfsup.backbones import Backbone
from selfsup.errors import UserError
from selfsup.methods import build_method
from selfsup.methods import colorization
from selfsup.methods.common import Batch, Progress
from selfsup.views import pretext

from conftest import assert_onnx_gives_the_encoders_features, assert_same_state, interrupted_then_resumed, write_dataset
from test_pretext import sample_images

SIGMA_PAPER, LAMBDA_PAPER, NEIGHBOURS_PAPER = 5.0, 0.5, 5
STEPS = 40


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # the CPU is shared (see test_pretext.py)


@pytest.fixture(scope="module")
def bins():
    return pretext.ABBins(10.0)


def reference_soft_encoding(ab: np.ndarray, centres: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """(N, Q): the k nearest centres by brute force, weights exp(-d^2 / (2 sigma^2)) normalised."""
    d2 = ((ab[:, None, :] - centres[None]) ** 2).sum(-1)  # (N, Q)
    nearest = np.argsort(d2, axis=1)[:, :k]
    w = np.exp(-np.take_along_axis(d2, nearest, 1) / (2 * sigma ** 2))
    out = np.zeros_like(d2)
    np.put_along_axis(out, nearest, w / w.sum(1, keepdims=True), 1)
    return out


def dense(indices: torch.Tensor, weights: torch.Tensor, q: int) -> np.ndarray:
    """(B, k, H, W) sparse encoding -> (B * H * W, Q) float64, pixels in raster order."""
    k = indices.shape[1]
    flat_i = indices.movedim(1, -1).reshape(-1, k)
    flat_w = weights.movedim(1, -1).reshape(-1, k).double()
    return torch.zeros(len(flat_i), q, dtype=torch.float64).scatter_add_(1, flat_i, flat_w).numpy()


@pytest.mark.parametrize("k, sigma", [(NEIGHBOURS_PAPER, SIGMA_PAPER), (10, SIGMA_PAPER), (2, 12.0)])
def test_soft_encoding_is_the_papers_gaussian_over_the_nearest_bins(bins, k, sigma):
    rng = np.random.default_rng(k)
    ab = rng.uniform(-110, 110, size=(2, 2, 30, 20))
    indices, weights = bins.encode(torch.from_numpy(ab).float(), k, sigma)
    assert indices.shape == weights.shape == (2, k, 30, 20)
    flat = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    reference = reference_soft_encoding(flat, bins.centres.double().numpy(), k, sigma)
    np.testing.assert_allclose(dense(indices, weights, len(bins)), reference, atol=1e-5)
    # nearest first: the bin the paper's rebalancing looks up is the target's most likely one
    assert (indices[:, 0].flatten().numpy() == reference.argmax(1)).all()


def test_one_neighbour_is_the_hard_bin(bins):
    ab = torch.from_numpy(np.random.default_rng(0).uniform(-119, 119, size=(3, 2, 7, 5))).float()
    indices, weights = bins.encode(ab, 1, SIGMA_PAPER)
    assert torch.equal(indices[:, 0], bins.quantize(ab)) and torch.equal(weights, torch.ones(3, 1, 7, 5))


def reference_rebalancing(counts: np.ndarray, centres: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(w, p~): p~ the empirical distribution smoothed by a Gaussian of sigma 5 over the bins,
    w proportional to ((1 - lam) p~ + lam / Q)^-1 with E_p~[w] = 1 (Zhang et al. 2016, eq. 4)."""
    d2 = ((centres[:, None, :] - centres[None]) ** 2).sum(-1)
    smoothed = np.exp(-d2 / (2 * SIGMA_PAPER ** 2)) @ (counts / counts.sum())
    smoothed /= smoothed.sum()
    w = 1 / ((1 - lam) * smoothed + lam / len(counts))
    return w / (smoothed * w).sum(), smoothed


@pytest.mark.parametrize("lam", [LAMBDA_PAPER, 0.1, 1.0])
def test_rebalancing_weights_are_the_papers(bins, lam):
    rng = np.random.default_rng(int(lam * 10))
    counts = (rng.pareto(1.0, len(bins)) * 1000).astype(np.int64)  # a few common colours, many rare
    counts[rng.random(len(bins)) < 0.3] = 0  # and some never seen
    got = bins.rebalancing_weights(torch.from_numpy(counts), lam).double().numpy()
    expected, smoothed = reference_rebalancing(counts.astype(np.float64), bins.centres.double().numpy(), lam)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert (smoothed * got).sum() == pytest.approx(1.0, abs=1e-5)
    if lam < 1:  # rarer colours weigh more
        order = np.argsort(smoothed)
        assert (np.diff(got[order]) <= 1e-6).all() and got[order[0]] > 1.5 * got[order[-1]]
    assert torch.equal(bins.rebalancing_weights(torch.zeros(len(bins), dtype=torch.long), lam), torch.ones(len(bins)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: still float32
        np.testing.assert_allclose(bins.rebalancing_weights(torch.from_numpy(counts), lam).numpy(), expected, rtol=1e-5)
        indices, weights = bins.encode(torch.full((1, 2, 1, 1), 33.3), NEIGHBOURS_PAPER, SIGMA_PAPER)
        assert weights.dtype == torch.float32


def tiny_cnn(channels: int = 8) -> Backbone:
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
    return Backbone("tiny", net, channels, "cnn", lambda m, x: m(x).mean((2, 3)), lambda m, x: m(x))


def spied_step(config: colorization.Config, size: int = 16, seed: int = 2, method=None):
    """One forward of the method on random images: its loss, its predictions (float64) and the
    Lab image they were made from, and the method."""
    torch.manual_seed(0)
    method = method or colorization.Method(config, tiny_cnn(), size)
    seen, predict = {}, method.predict

    def spy(lab):
        out = predict(lab)
        seen["lab"], seen["out"] = lab.detach().double().numpy(), [o.detach().double().numpy() for o in out]
        return out

    method.predict = spy
    images = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    out = method(Batch(images, torch.Generator().manual_seed(3)), Progress(0, 1, 1))
    return out.loss, seen["out"], seen["lab"], method


def block_means(lab: np.ndarray, stride: int) -> np.ndarray:
    b, c, s = lab.shape[0], lab.shape[1], lab.shape[2] // stride
    return lab.reshape(b, c, s, stride, s, stride).mean((3, 5))


def log_softmax64(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def test_the_default_loss_is_the_one_hot_unweighted_cross_entropy():
    """The split-brain paper's loss (and this method's before the options): one bin per target,
    unweighted; rebalancing with lambda 1 (a uniform prior: every weight 1) gives it too."""
    config = colorization.Config()
    assert (config.soft_encoding_neighbours, config.rebalance) == (1, 0.0)
    loss, (ab_out, l_out), lab, method = spied_step(config)
    assert "ab_counts" not in method.state_dict()
    target = torch.from_numpy(block_means(lab, config.prediction_stride)).float()
    old = (F.cross_entropy(torch.from_numpy(ab_out).float(), method.bins.quantize(target[:, 1:]))
           + F.cross_entropy(torch.from_numpy(l_out).float(), pretext.quantize_lightness(target[:, 0], 50)))
    assert torch.equal(loss, old)
    uniform, *_, weighted = spied_step(colorization.Config(rebalance=1.0))
    assert float(uniform.detach()) == pytest.approx(float(old), abs=1e-6)
    assert int(weighted.ab_counts.sum()) == 3 * 4 * 4  # every target was counted


@pytest.mark.parametrize("k, lam", [(NEIGHBOURS_PAPER, LAMBDA_PAPER), (1, LAMBDA_PAPER), (10, 0.0)])
def test_soft_rebalanced_loss_against_float64(k, lam):
    """mean over pixels of v(q*) * -sum_q Z_q log softmax(z)_q (ab) + the L cross-entropy, with Z
    the soft encoding of the block-mean ab, q* its nearest bin and v from the counts of this
    batch's q* (the first step's prior)."""
    config = colorization.Config(soft_encoding_neighbours=k, rebalance=lam)
    loss, (ab_out, l_out), lab, method = spied_step(config)
    target = block_means(lab, config.prediction_stride)  # (B, 3, s, s)
    ab = target[:, 1:].transpose(0, 2, 3, 1).reshape(-1, 2)
    centres = method.bins.centres.double().numpy()
    if k == 1:  # the hard bin: nearest to the target's square (pretext.ABBins.quantize)
        z = np.eye(len(centres))[method.bins.quantize(torch.from_numpy(target[:, 1:]).float()).flatten().numpy()]
    else:
        z = reference_soft_encoding(ab, centres, k, SIGMA_PAPER)
    logits = ab_out.transpose(0, 2, 3, 1).reshape(-1, len(centres))
    ce = -(z * log_softmax64(logits, 1)).sum(1)
    if lam:
        q_star = z.argmax(1)
        v, _ = reference_rebalancing(np.bincount(q_star, minlength=len(centres)).astype(np.float64), centres, lam)
        ce = ce * v[q_star]
        assert torch.equal(method.ab_counts, torch.from_numpy(np.bincount(q_star, minlength=len(centres))))
    l_bins = np.clip(np.floor(target[:, 0] * 50 / 100), 0, 49).astype(int).reshape(-1)
    l_ce = -np.take_along_axis(log_softmax64(l_out.transpose(0, 2, 3, 1).reshape(-1, 50), 1), l_bins[:, None], 1)
    assert float(loss.detach()) == pytest.approx(ce.mean() + l_ce.mean(), rel=1e-5)


def test_counts_grow_only_in_training_and_neighbours_beyond_the_bins_are_refused():
    config = colorization.Config(rebalance=LAMBDA_PAPER, soft_encoding_neighbours=NEIGHBOURS_PAPER)
    *_, method = spied_step(config)
    first = method.ab_counts.clone()
    method.eval()
    spied_step(config, seed=5, method=method)
    assert torch.equal(method.ab_counts, first)
    method.train()
    spied_step(config, seed=5, method=method)
    assert int(method.ab_counts.sum()) == 2 * int(first.sum())
    with pytest.raises(UserError, match="soft_encoding_neighbours is 9, but ab_grid 110 makes only 8 bins"):
        colorization.Method(colorization.Config(ab_grid=110.0, soft_encoding_neighbours=9), tiny_cnn(), 16)
    for options in ({"rebalance": 0.5}, {"soft_encoding_neighbours": 5}):  # regression has no bins: not silently ignored
        with pytest.raises(UserError, match="which colorization.loss=regression has none of"):
            colorization.Method(colorization.Config(loss="regression", **options), tiny_cnn(), 16)


def test_colorization_learns_with_the_2016_loss():
    """The weights move while the counts grow, so the training losses are not comparable: the
    loss of a few fixed batches before and after STEPS steps, both under the final counts."""
    torch.manual_seed(0)
    settings = {"soft_encoding_neighbours": NEIGHBOURS_PAPER, "rebalance": LAMBDA_PAPER}
    cfg = config_lib.resolve({"method": "colorization", "backbone": {"name": "resnet18-half", "small_stem": False},
                              "data": {"image_size": 16}, "colorization": settings})
    model = build_method(cfg)
    untrained = copy.deepcopy(model)
    images, generator = sample_images(32), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(STEPS):
        chosen = torch.randint(0, len(images), (16,), generator=generator)
        loss = model(Batch(images[chosen], generator), Progress(step, STEPS, 1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert int(model.ab_counts.sum()) == STEPS * 16 * 4 * 4
    untrained.ab_counts.copy_(model.ab_counts)

    def losses(method):  # each batch adds the same counts to both
        with torch.no_grad():
            return [float(method(Batch(images[i::4], torch.Generator().manual_seed(i)), Progress(0, 1, 1)).loss)
                    for i in range(4)]

    before, after = losses(untrained), losses(model)
    assert torch.equal(untrained.ab_counts, model.ab_counts)
    assert np.mean(after) < 0.85 * np.mean(before)  # measured: 0.77


def test_a_resumed_run_carries_the_colour_counts(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", per_class=6, size=32)
    user = {"method": "colorization", "out": str(tmp_path / "runs"),
            "data": {"path": str(data), "image_size": 16, "holdout_fraction": 0.0},
            "backbone": {"name": "resnet18-half", "small_stem": False},
            "colorization": {"soft_encoding_neighbours": NEIGHBOURS_PAPER, "rebalance": LAMBDA_PAPER,
                             "prediction_stride": 2},
            "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    whole, at_interruption, resumed = interrupted_then_resumed(user, stop_after_steps=3, monkeypatch=monkeypatch)
    assert 0 < at_interruption["position"]["step"] < whole["position"]["step"]
    per_step = 8 * (16 // 2) ** 2  # every target of every step
    assert int(at_interruption["model"]["ab_counts"].sum()) == at_interruption["position"]["step"] * per_step
    assert int(whole["model"]["ab_counts"].sum()) == whole["position"]["step"] * per_step
    assert_same_state(whole, resumed)


def test_a_colorization_encoder_exports_to_onnx_with_its_lab_conversion(tmp_path):
    """Both branches and the RGB -> Lab conversion in one graph (an inverse taken in the forward
    pass once stopped the export), checked with onnxruntime against the encoder."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from selfsup.encoder import load_encoder
    from selfsup.export import export_encoder
    from selfsup.train import run_pretraining

    data = write_dataset(tmp_path / "data", per_class=4, size=16)
    run_pretraining({"method": "colorization", "out": str(tmp_path / "run"),
                     "data": {"path": str(data), "image_size": 16, "holdout_fraction": 0.0},
                     "backbone": {"name": "resnet18-half", "small_stem": False},
                     "train": {"epochs": 1, "batch_size": 4, "progress": False}})
    encoder = load_encoder(tmp_path / "run")
    export_encoder(encoder, tmp_path / "encoder.onnx")
    assert_onnx_gives_the_encoders_features(tmp_path / "encoder.onnx", encoder)
