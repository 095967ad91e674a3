"""Losses and label generators against independent computations on random inputs.

Each test here checks a function of src/selfsup that the rest of the suite checked only on one
hand-made example, only against its own code path, or not at all. The references are written
from the papers' definitions (or plain geometry), in float64 or integer loops, and share no
helper with the code under test. Tiny tensors: the whole file runs in seconds on one core.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import Backbone
from selfsup.data.video import VideoCache
from selfsup.eval.video import equivariance_error, fit_maps
from selfsup.losses import cosine_similarity, cross_view_entropy, sinkhorn_knopp
from selfsup.methods import colorization as colorization_module
from selfsup.methods import dino as dino_module
from selfsup.methods import interaction as interaction_module
from selfsup.methods.common import Batch, Progress
from selfsup.nn import Queue, ema_momentum
from selfsup.views import pretext
from selfsup.views.masks import block_mask, num_visible, random_patch_mask, visible_indices
from selfsup.views.temporal import is_ordered, kmeans, motion_pairs, order_tuple, order_tuples, reading_scale

from conftest import log_softmax64


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("seed", range(4))
def test_cosine_similarity_matches_a_float64_loop_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    a, b = rng.normal(size=(n, d)) * rng.uniform(0.1, 10), rng.normal(size=(n, d))
    b[0] = -3.0 * a[0]  # exactly opposite: -1
    if n > 1:
        b[1] = 0.5 * a[1]  # same direction: +1
    expected = [sum(x * y for x, y in zip(a[i], b[i])) / (math.sqrt(sum(x * x for x in a[i])) *
                                                          math.sqrt(sum(y * y for y in b[i]))) for i in range(n)]
    got = cosine_similarity(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    got32 = cosine_similarity(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert got[0].item() == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_cross_view_entropy_matches_a_loop_over_view_pairs_with_arbitrary_targets(seed):
    """Targets that are no softmax of anything (Sinkhorn-Knopp's), S student and T teacher crops:
    the mean over pairs (t, s), t != s, of the image-mean of -sum_k q log p."""
    rng = np.random.default_rng(seed)
    n_teacher, n_local = int(rng.integers(2, 4)), int(rng.integers(0, 4))
    b, k = int(rng.integers(1, 5)), int(rng.integers(2, 9))
    student = rng.normal(size=(n_teacher + n_local, b, k)) * 2
    targets = rng.dirichlet(np.ones(k) * 0.5, size=(n_teacher, b))
    t_s = float(rng.uniform(0.05, 0.5))
    terms = []
    for t in range(n_teacher):
        for s in range(n_teacher + n_local):
            if s == t:
                continue
            terms.append(np.mean([-(targets[t, i] * log_softmax64(student[s, i] / t_s)).sum() for i in range(b)]))
    got = cross_view_entropy(torch.from_numpy(student), torch.from_numpy(targets), t_s)
    assert got.item() == pytest.approx(float(np.mean(terms)), rel=1e-10)


def sinkhorn_log64(logits: np.ndarray, temperature: float, iterations: int) -> np.ndarray:
    """SwAV / DINOv2's Sinkhorn-Knopp in the log domain, float64: exp(logits / T) made to give each
    prototype an equal share of the batch, then each image a distribution, `iterations` times."""
    log_q = np.asarray(logits, np.float64).T / temperature  # (K, B)
    k, b = log_q.shape

    def logsumexp(x, axis=None):
        m = x.max(axis=axis, keepdims=True)
        return m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))

    log_q -= logsumexp(log_q)
    for _ in range(iterations):
        log_q -= logsumexp(log_q, axis=1) + np.log(k)
        log_q -= logsumexp(log_q, axis=0) + np.log(b)
    return np.exp(log_q + np.log(b)).T


@pytest.mark.parametrize("seed", range(2))
def test_sinkhorn_knopp_in_float32_stays_finite_when_one_image_sits_far_below_the_rest(seed):
    rng = np.random.default_rng(seed)
    b, k, temperature = 6, 5, 0.04  # DINO's starting teacher temperature
    logits = rng.uniform(-1, 1, size=(b, k))
    logits[0] += 4.5  # say, prototypes with a learned gain (norm_last_layer false) this image is near
    expected = sinkhorn_log64(logits, temperature, 3)
    assert np.isfinite(expected).all()
    got = sinkhorn_knopp(torch.from_numpy(logits).float(), temperature, iterations=3).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_knopp_matches_the_log_domain_definition_on_moderate_logits(seed):
    rng = np.random.default_rng(seed)
    b, k, t = int(rng.integers(2, 20)), int(rng.integers(2, 12)), float(rng.uniform(0.04, 0.5))
    logits = rng.uniform(-1, 1, size=(b, k))  # cosines, as a DINO head with unit prototypes gives
    iterations = int(rng.integers(1, 6))
    expected = sinkhorn_log64(logits, t, iterations)
    np.testing.assert_allclose(sinkhorn_knopp(torch.from_numpy(logits), t, iterations).numpy(), expected,
                               rtol=1e-9, atol=1e-12)
    got32 = sinkhorn_knopp(torch.from_numpy(logits).float(), t, iterations).double().numpy()
    np.testing.assert_allclose(got32, expected, rtol=2e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DINO's head


@pytest.mark.parametrize("layers,batch_norm,norm_last_layer", [(3, False, True), (2, True, False), (1, False, True)])
def test_dino_head_is_an_mlp_to_the_unit_sphere_then_a_weight_normalised_layer(layers, batch_norm, norm_last_layer):
    # facebookresearch/dino vision_transformer.py DINOHead: Linear (+ BatchNorm) + GELU per hidden
    # layer, a Linear to the bottleneck, L2 normalisation, then weight_norm(Linear, no bias) whose
    # gain starts at 1 and is frozen with norm_last_layer; the MLP drawn from N(0, 0.02) truncated.
    from selfsup.nn import DINOHead
    torch.manual_seed(0)
    head = DINOHead(6, out_dim=11, hidden_dim=8, bottleneck_dim=5, layers=layers, batch_norm=batch_norm,
                    norm_last_layer=norm_last_layer).double().eval()
    gain, direction = head.last_layer.parametrizations.weight.original0, head.last_layer.parametrizations.weight.original1
    assert torch.equal(gain, torch.ones(11, 1, dtype=torch.float64)) and gain.requires_grad != norm_last_layer
    assert head.last_layer.bias is None
    rng = np.random.default_rng(layers)
    with torch.no_grad():  # a gain and batch statistics other than their starting values
        gain.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=(11, 1))))
        for module in head.mlp:
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.copy_(torch.from_numpy(rng.normal(size=8)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=8)))
                module.weight.copy_(torch.from_numpy(rng.normal(size=8)))
                module.bias.copy_(torch.from_numpy(rng.normal(size=8)))
    x = rng.normal(size=(4, 6))
    modules, h = list(head.mlp), x
    widths = []
    while modules:
        linear = modules.pop(0)
        assert isinstance(linear, nn.Linear)
        widths.append(linear.out_features)
        h = h @ linear.weight.detach().numpy().T + (linear.bias.detach().numpy() if linear.bias is not None else 0)
        if modules and isinstance(modules[0], nn.BatchNorm1d):
            bn = modules.pop(0)
            h = ((h - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps) * bn.weight.detach().numpy()
                 + bn.bias.detach().numpy())
        if modules:
            assert isinstance(modules.pop(0), nn.GELU)
            h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    assert widths == [8] * (layers - 1) + [5]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == (layers - 1 if batch_norm else 0)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    v = direction.detach().numpy()
    prototypes = gain.detach().numpy() * v / np.linalg.norm(v, axis=1, keepdims=True)  # each row: length = its gain
    np.testing.assert_allclose(head(torch.from_numpy(x)).detach().numpy(), z @ prototypes.T, rtol=1e-10)

    wide = DINOHead(64, out_dim=16, hidden_dim=256, bottleneck_dim=256, layers=3)
    for linear in (m for m in wide.mlp if isinstance(m, nn.Linear)):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05) and not linear.bias.any()


# ---------------------------------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize("seed", range(3))
def test_rotation_labels_are_counter_clockwise_quarter_turns_by_pixel_coordinates(seed):
    """Label k: the image turned k x 90 degrees counter-clockwise, written as index maps (the top
    right corner comes to the top left for k = 1), not with rot90."""
    g = torch.Generator().manual_seed(seed)
    n, s = 5, int(torch.randint(3, 9, (1,), generator=g))
    x = torch.rand(n, 2, s, s, generator=g, dtype=torch.float64)
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    source = {0: (i, j), 1: (j, s - 1 - i), 2: (s - 1 - i, s - 1 - j), 3: (s - 1 - j, i)}  # out[i, j] = in[src]
    every, labels = pretext.all_rotations(x)
    assert every.shape == (4 * n, 2, s, s) and labels.tolist() == [r for r in range(4) for _ in range(n)]
    xn = x.numpy()
    for m in range(4 * n):
        r, image = int(labels[m]), m % n
        expected = xn[image][:, source[r][0], source[r][1]]
        np.testing.assert_array_equal(every[m].numpy(), expected)
    k = torch.randint(0, 4, (n,), generator=g)
    one = pretext.rotate(x, k)
    for b in range(n):
        r = int(k[b])
        np.testing.assert_array_equal(one[b].numpy(), xn[b][:, source[r][0], source[r][1]])


# ---------------------------------------------------------------------------------------------
# Jigsaw


def _all_perms() -> np.ndarray:
    return np.array(list(itertools.permutations(range(9))), dtype=np.int8)  # (9!, 9), built here


@pytest.mark.parametrize("seed", range(3))
def test_jigsaw_set_is_greedy_max_min_hamming_over_all_9_factorial_permutations(seed):
    """Each permutation added is one of those whose smallest Hamming distance to the ones before is
    the largest any of the 9! permutations has (Noroozi & Favaro's algorithm, max-min form)."""
    every = _all_perms()
    chosen = pretext.jigsaw_permutations(10, seed=seed).numpy()
    nearest = None
    for j, p in enumerate(chosen):
        assert sorted(p.tolist()) == list(range(9))
        if j:
            assert nearest[(every == p).all(1)].item() == nearest.max(), f"pick {j} is not a farthest one"
        distance = (every != p[None]).sum(1)
        nearest = distance if nearest is None else np.minimum(nearest, distance)
    assert pretext.min_hamming_distance(torch.from_numpy(chosen)) == min(
        int((a != b).sum()) for a, b in itertools.combinations(chosen, 2))


@pytest.mark.parametrize("seed", range(3))
def test_shuffle_tiles_puts_tile_perm_i_at_position_i(seed):
    g = torch.Generator().manual_seed(seed)
    n = 6
    tiles = torch.rand(n, 9, 2, 3, 3, generator=g)
    perms = torch.stack([torch.randperm(9, generator=g) for _ in range(n)])
    got = pretext.shuffle_tiles(tiles, perms)
    for b in range(n):
        for position in range(9):
            assert torch.equal(got[b, position], tiles[b, int(perms[b, position])])


@pytest.mark.parametrize("seed", range(3))
def test_standardize_tiles_gives_each_tile_and_channel_zero_mean_unit_deviation(seed):
    g = torch.Generator().manual_seed(seed)
    tiles = torch.rand(3, 9, 3, 5, 5, generator=g, dtype=torch.float64) * torch.rand(3, 9, 3, 1, 1, generator=g) * 4 + 2
    got = pretext.standardize_tiles(tiles).numpy()
    x = tiles.numpy()
    for b, t, c in itertools.product(range(3), range(9), range(3)):
        v = x[b, t, c].ravel()
        mean = sum(v) / len(v)
        std = math.sqrt(sum((u - mean) ** 2 for u in v) / (len(v) - 1))  # unbiased, as torch.std
        np.testing.assert_allclose(got[b, t, c].ravel(), (v - mean) / (std + 1e-5), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Colorization: ab and L bins, their decoding, and the method's targets


def cie_lab64(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* of sRGB colours (N, 3) from the chromaticities of the primaries and D65."""
    def xyz(x, y):
        return np.array([x / y, 1.0, (1 - x - y) / y])

    primaries = np.stack([xyz(0.64, 0.33), xyz(0.30, 0.60), xyz(0.15, 0.06)], axis=1)
    white = xyz(0.3127, 0.3290)
    matrix = primaries * np.linalg.solve(primaries, white)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    ratio = linear @ matrix.T / white
    f = np.where(ratio > 216 / 24389, np.cbrt(ratio), (24389 / 27 * ratio + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


@pytest.fixture(scope="module")
def ab_bins():
    return {grid: pretext.ABBins(grid) for grid in (10.0, 16.0)}


def reference_ab_bin(ab: np.ndarray, centres_cells: np.ndarray, grid: float) -> tuple[np.ndarray, np.ndarray]:
    """(nearest distance, distance of each centre) of each ab (N, 2) to its square's nearest in-gamut
    square, in units of squares."""
    cell = np.round(ab / grid)  # half to even, as torch.round
    distance = np.sqrt(((cell[:, None, :] - centres_cells[None]) ** 2).sum(-1))  # (N, Q)
    return distance.min(1), distance


@pytest.mark.parametrize("grid", [10.0, 16.0])
def test_ab_bins_are_the_squares_srgb_reaches_and_each_colour_goes_to_the_nearest(ab_bins, grid):
    bins = ab_bins[grid]
    cells = (bins.centres.double() / grid).numpy()
    assert np.allclose(cells, np.round(cells)) and len({tuple(c) for c in np.round(cells)}) == len(bins)
    rng = np.random.default_rng(int(grid))
    # Every square a random sRGB colour falls in (by an independent Lab) is a bin, ...
    lab = cie_lab64(rng.random((4000, 3)))
    scaled = lab[:, 1:] / grid
    clear = (np.abs(scaled - np.floor(scaled) - 0.5) > 0.01).all(1)  # not on a square's edge
    own = {tuple(c) for c in np.round(cells)}
    assert all(tuple(c) in own for c in np.round(scaled[clear]))
    # ... and any ab, in gamut or not, goes to the in-gamut square nearest its own square.
    ab = rng.uniform(-119, 119, size=(3000, 2))
    got = bins.quantize(torch.from_numpy(ab).T.reshape(1, 2, 3000, 1))[0, :, 0].numpy()
    nearest, distance = reference_ab_bin(ab, np.round(cells), grid)
    np.testing.assert_allclose(distance[np.arange(3000), got], nearest, atol=1e-9)
    inside = nearest == 0
    assert inside.any() and (~inside).any()  # both cases were drawn


@pytest.mark.parametrize("seed", range(3))
def test_annealed_mean_and_expected_lightness_on_random_logits(ab_bins, seed):
    """Zhang et al.'s annealed mean: sum_q softmax(z / 0.38)_q centre_q; L: sum_k softmax(z)_k (k + 1/2) 100/K."""
    bins = ab_bins[10.0]
    rng = np.random.default_rng(seed)
    q, k = len(bins), int(rng.integers(2, 60))
    logits = rng.normal(size=(2, q, 2, 3)) * 2
    centres = bins.centres.double().numpy()
    got = bins.decode(torch.from_numpy(logits).float()).double().numpy()
    for b, y, x in itertools.product(range(2), range(2), range(3)):
        p = np.exp(log_softmax64(logits[b, :, y, x] / 0.38))
        np.testing.assert_allclose(got[b, :, y, x], p @ centres, rtol=1e-4, atol=1e-3)
    l_logits = rng.normal(size=(2, k, 2, 3)) * 3
    got_l = pretext.decode_lightness(torch.from_numpy(l_logits)).double().numpy()
    for b, y, x in itertools.product(range(2), range(2), range(3)):
        p = np.exp(log_softmax64(l_logits[b, :, y, x]))
        assert got_l[b, 0, y, x] == pytest.approx(sum(p[i] * (i + 0.5) * 100 / k for i in range(k)), rel=1e-5)


def tiny_cnn(channels: int = 8) -> Backbone:
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
    return Backbone("tiny", net, channels, "cnn", lambda m, x: m(x).mean((2, 3)), lambda m, x: m(x))


@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_colorization_targets_are_the_binned_block_means_of_lab(loss, monkeypatch):
    """The method's targets, from the Lab image it predicts from: each channel averaged over
    stride x stride blocks; ab to its nearest in-gamut bin, L to floor(L K / 100); the loss is the
    two cross-entropies (or the two mean squared errors of L / 50 - 1 and ab / 110)."""
    torch.manual_seed(0)
    stride, size, bins_l = 4, 16, int(np.random.default_rng(1).integers(5, 60))
    config = colorization_module.Config(loss=loss, lightness_bins=bins_l, prediction_stride=stride)
    method = colorization_module.Method(config, tiny_cnn(), size)
    seen = {}
    predict = method.predict

    def spy(lab):
        out = predict(lab)
        seen["lab"], seen["out"] = lab.detach().double(), [o.detach().double() for o in out]
        return out

    method.predict = spy
    images = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = method(Batch(images, torch.Generator().manual_seed(3)), Progress(0, 1, 1))
    lab = seen["lab"].numpy()  # (B, 3, S, S)
    b, s = lab.shape[0], size // stride
    pooled = np.zeros((b, 3, s, s))
    for i, c, y, x in itertools.product(range(b), range(3), range(s), range(s)):
        pooled[i, c, y, x] = lab[i, c, y * stride:(y + 1) * stride, x * stride:(x + 1) * stride].mean()
    ab_out, l_out = (o.numpy() for o in seen["out"])
    if loss == "regression":
        expected = ((ab_out - pooled[:, 1:] / 110) ** 2).mean() + ((l_out - (pooled[:, :1] / 50 - 1)) ** 2).mean()
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
        return
    cells = np.round(method.bins.centres.double().numpy() / config.ab_grid)
    ab = pooled[:, 1:].transpose(0, 2, 3, 1).reshape(-1, 2)
    nearest, distance = reference_ab_bin(ab, cells, config.ab_grid)
    l_bins = np.clip(np.floor(pooled[:, 0] * bins_l / 100), 0, bins_l - 1).astype(int).ravel()
    ab_logits = ab_out.transpose(0, 2, 3, 1).reshape(-1, len(cells))
    l_logits = l_out.transpose(0, 2, 3, 1).reshape(-1, bins_l)
    # Where two squares are equally near, either bin is right: take the one the loss is lowest for.
    ab_ce = -log_softmax64(ab_logits)  # (P, Q)
    ab_term = np.mean([ab_ce[p][np.isclose(distance[p], nearest[p])].min() for p in range(len(ab))])
    ab_term_max = np.mean([ab_ce[p][np.isclose(distance[p], nearest[p])].max() for p in range(len(ab))])
    l_term = np.mean(-log_softmax64(l_logits)[np.arange(len(l_bins)), l_bins])
    assert ab_term + l_term - 1e-4 <= out.loss.item() <= ab_term_max + l_term + 1e-4


# ---------------------------------------------------------------------------------------------
# Inpainting masks and block masks


@pytest.mark.parametrize("seed", range(4))
def test_inpainting_masks_against_their_geometric_definitions(seed):
    rng = np.random.default_rng(seed)
    size, fraction, blocks = int(rng.integers(8, 40)), float(rng.uniform(0.05, 0.6)), int(rng.integers(1, 6))
    n = 5
    centre = pretext.inpainting_masks(n, size, "center", fraction, blocks, torch.Generator(), "cpu")[:, 0].numpy()
    side = max(1, round(size * math.sqrt(fraction)))
    for m in centre:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert m.sum() == side * side and len(rows) == len(cols) == side  # one full square
        before, after = rows[0], size - 1 - rows[-1]
        assert abs(before - after) <= 1 and (cols == rows).all()  # centred, to the pixel
    g = torch.Generator().manual_seed(seed)
    masks = pretext.inpainting_masks(n, size, "blocks", fraction, blocks, g, "cpu")[:, 0].numpy()
    side = max(1, round(size * math.sqrt(fraction / blocks)))
    for m in masks:
        # A union of side x side squares inside the image: every hidden pixel lies in a fully hidden
        # square (the morphological opening is the mask itself); at most `blocks` squares' area.
        opened = np.zeros_like(m)
        for r, c in itertools.product(range(size - side + 1), repeat=2):
            if m[r:r + side, c:c + side].all():
                opened[r:r + side, c:c + side] = True
        assert (opened == m).all() and side * side <= m.sum() <= blocks * side * side
    regions = pretext.inpainting_masks(n, size, "regions", fraction, blocks, g, "cpu")
    assert (regions.flatten(1).sum(1) == max(1, round(fraction * size * size))).all()


@pytest.mark.parametrize("seed", range(3))
def test_one_round_of_block_masking_hides_one_rectangle_of_beits_area_and_aspect(seed):
    """With one proposal per image, a mask is empty or one rectangle of h x w patches with h, w
    the rounded sqrt(area * r), sqrt(area / r): area in [min(4, target), target], r in [0.3, 1/0.3],
    smaller than the grid, and hiding no more than the target."""
    g = torch.Generator().manual_seed(seed)
    height, width = 6 + seed, 9 - seed
    target = torch.randint(1, height * width // 2, (300,), generator=g)
    masks = block_mask(300, (height, width), target, g, rounds=1).view(300, height, width).numpy()
    kept = 0
    for m, t in zip(masks, target.tolist()):
        if not m.any():
            continue
        kept += 1
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        h, w = len(rows), len(cols)
        assert m.sum() == h * w and m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one rectangle
        assert h < height and w < width and h * w <= t
        assert (h - 0.5) * (w - 0.5) <= t + 1e-9 and (h + 0.5) * (w + 0.5) >= min(4, t) - 1e-9
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 + 1e-9 and (h + 0.5) / (w - 0.5) >= 0.3 - 1e-9
    assert kept > 100


@pytest.mark.parametrize("seed", range(3))
def test_mae_mask_at_224_with_16_pixel_patches_keeps_49_of_196(seed):
    """README's arithmetic: (224 / 16)^2 = 196 patches, int(196 x (1 - 0.75)) = 49 visible, a
    different 49 in each image; and the official code's rounding of the float product, which
    num_visible's docstring warns of: 100 patches at 0.9 leave 9 visible, not 10."""
    assert (224 // 16) ** 2 == 196 and num_visible(196, 0.75) == 49
    assert num_visible(100, 0.9) == 9 and 100 * (1 - 0.9) < 10
    mask = random_patch_mask(6, 196, 0.75, torch.Generator().manual_seed(seed))
    assert ((~mask).sum(1) == 49).all()
    keep = visible_indices(mask, 49)
    assert keep.shape == (6, 49) and len({tuple(row.tolist()) for row in keep}) == 6
    for row, kept in zip(mask, keep):
        assert not row[kept].any() and int(row.sum()) == 196 - 49


def test_the_readme_arithmetic_runs_as_written_and_prints_what_it_says(capsys):
    """README's "The arithmetic, by hand" block, run as a student would paste it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The arithmetic, by hand", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "0.3692 = 0.3692" and lines[1] == "[4, 5, 6, 7, 0, 1, 2, 3]" and lines[3] == "196 49"
    by_hand, library = lines[2].split(" = ")
    assert by_hand == library
    assert scope["compared"].tolist() == [7] * 8  # 1 positive + 2N - 2 = 6 negatives per view
    # the comment's claim, from the definition in float64: row i's positive is the other view of image i
    z = torch.nn.functional.normalize(torch.cat([scope["z_a"], scope["z_b"]]).double(), dim=1)
    sim = z @ z.T / 0.5
    sim.fill_diagonal_(float("-inf"))
    expected = -(sim.log_softmax(1)[torch.arange(8), (torch.arange(8) + 4) % 8]).mean()
    assert float(library) == pytest.approx(float(expected), abs=2e-6)


# ---------------------------------------------------------------------------------------------
# Temporal order


def test_order_tuples_built_exactly_as_the_paper_says_on_random_frames():
    rng = np.random.default_rng(3)
    for k in (3, 5):
        for _ in range(300):
            f = np.sort(rng.choice(100, size=k + 2, replace=False))
            positive, reverse, outside = bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(2))
            expected = list(f[1:k + 1])
            if not positive:
                expected[k // 2] = f[0] if outside == 0 else f[-1]
            if reverse:
                expected = expected[::-1]
            assert order_tuple(f, positive, reverse, outside).tolist() == [int(v) for v in expected]
    for _ in range(300):
        t = rng.integers(0, 6, size=int(rng.integers(2, 6)))
        increasing = all(a < b for a, b in zip(t, t[1:]))
        decreasing = all(a > b for a, b in zip(t, t[1:]))
        assert is_ordered(t) == (increasing or decreasing)


def fake_clips(lengths, seed, still=(), motion_columns=0):
    """A stand-in for a VideoCache: clips of the given lengths, rows shuffled (so frame order must
    come from the frame index), random frames (a still clip repeats one frame), random motion."""
    rng = np.random.default_rng(seed)
    clip = np.concatenate([np.full(n, c) for c, n in enumerate(lengths)])
    frame = np.concatenate([np.arange(n) for n in lengths])
    order = rng.permutation(len(clip))
    clip, frame = clip[order], frame[order]
    images = rng.integers(0, 256, (len(clip), 4, 4, 3), dtype=np.uint8)
    for c in still:
        images[clip == c] = images[np.flatnonzero(clip == c)[0]]
    cache = SimpleNamespace(clip=clip, frame=frame, clip_names=[f"clip{c}" for c in range(len(lengths))],
                            images=images, incomplete=set(), gapped=set(), source="fake", labels=None,
                            motion=rng.normal(size=(len(clip), motion_columns)).astype(np.float32)
                            if motion_columns else None)
    cache.clip_rows = lambda: VideoCache.clip_rows(cache)
    return cache


def test_clip_rows_are_each_clips_rows_in_frame_order():
    cache = fake_clips([5, 1, 7, 3], seed=0)
    for c, rows in enumerate(cache.clip_rows()):
        expected = sorted(np.flatnonzero(cache.clip == c).tolist(), key=lambda r: cache.frame[r])
        assert rows.tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_order_tuples_labels_and_frames_follow_the_definition(seed):
    rng = np.random.default_rng(seed)
    length, min_gap, max_span = int(rng.choice([3, 5])), int(rng.integers(1, 3)), int(rng.integers(12, 20))
    cache = fake_clips([int(rng.integers(14, 30)) for _ in range(3)] + [20], seed, still=(3,))
    rows, labels = order_tuples(cache, length, 40, max_span, min_gap, 0.5, 0.0, seed)
    assert rows.shape[1] == length and set(labels.tolist()) <= {0, 1} and 0.3 < labels.mean() < 0.7
    for r, label in zip(rows, labels):
        clip = set(cache.clip[r].tolist())
        assert len(clip) == 1 and 3 not in clip  # one clip, never the still one
        f = cache.frame[r].astype(int)
        n = int((cache.clip == cache.clip[r[0]]).sum())
        steps = np.diff(f)
        ordered = bool((steps > 0).all() or (steps < 0).all())
        assert ordered == bool(label)
        middle, others = f[length // 2], np.delete(f, length // 2)
        lo, hi = min(f), max(f)
        assert hi - lo <= max_span and lo >= 0 and hi < n
        if label:  # drawn frames on both sides of the tuple, min_gap apart
            assert np.abs(steps).min() >= min_gap and lo >= min_gap and hi <= n - 1 - min_gap
        else:  # the middle frame out of place: before or after all the others
            assert middle < others.min() or middle > others.max()
            assert abs(middle - (others.min() if middle < others.min() else others.max())) >= min_gap


# ---------------------------------------------------------------------------------------------
# Ego-motion: pairs, motion classes, equivariance error


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_motion_pairs_sum_the_readings_between_the_two_frames(gap):
    cache = fake_clips([6, 2, 9], seed=gap, motion_columns=3)
    pairs = motion_pairs(cache, gap)
    expected_rows, expected_motion = [], []
    for c in range(3):
        by_frame = {int(cache.frame[r]): r for r in np.flatnonzero(cache.clip == c)}
        for i in range(len(by_frame) - gap):
            expected_rows.append((by_frame[i], by_frame[i + gap]))
            expected_motion.append([sum(float(cache.motion[by_frame[t], m]) for t in range(i + 1, i + gap + 1))
                                    for m in range(3)])
    assert pairs.rows.tolist() == [list(p) for p in expected_rows]
    np.testing.assert_allclose(pairs.motion, expected_motion, rtol=1e-9, atol=1e-9)


def test_readings_are_scaled_by_their_deviation():
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(50, 4)) * np.array([0.1, 5.0, 30.0, 1.0])
    motion[:, 3] = 2.5  # a constant reading stays as it is
    got = motion / reading_scale(motion)
    for m in range(4):
        v = motion[:, m]
        std = math.sqrt(sum((x - v.mean()) ** 2 for x in v) / len(v))
        np.testing.assert_allclose(got[:, m], v / std if std > 0 else v, rtol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_kmeans_recovers_separated_motion_groups_numbered_by_first_appearance(seed):
    rng = np.random.default_rng(seed)
    k, d = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    centres = rng.normal(size=(k, d)) * 20
    while min(np.linalg.norm(a - b) for a, b in itertools.combinations(centres, 2)) < 5:
        centres = rng.normal(size=(k, d)) * 20
    truth = rng.permutation(np.repeat(np.arange(k), 8))
    x = centres[truth] + rng.normal(size=(len(truth), d)) * 0.3
    got = kmeans(x, k, seed=seed)
    first_seen = {}
    for t in truth:
        first_seen.setdefault(int(t), len(first_seen))
    assert got.tolist() == [first_seen[int(t)] for t in truth]


@pytest.mark.parametrize("seed", range(3))
def test_equivariance_error_with_given_maps_and_fitted_ridge_maps(seed):
    rng = np.random.default_rng(seed)
    n, d, groups = 40, 4, 3
    z, z_later = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    classes = rng.integers(0, groups, n)
    maps = rng.normal(size=(groups, d, d))
    got = equivariance_error(z, z_later, classes, maps=maps)
    for g in range(groups):
        idx = [i for i in range(n) if classes[i] == g]
        predicted = np.mean([np.linalg.norm(maps[g] @ z[i] - z_later[i]) for i in idx])
        change = np.mean([np.linalg.norm(z[i] - z_later[i]) for i in idx])
        assert got[g] == pytest.approx(predicted / change, rel=1e-10)
    ridge = float(rng.uniform(0.01, 1.0))
    m = fit_maps(z, z_later, ridge)
    # min |z M^T - Y|^2 + ridge |M|^2 is least squares on [z; sqrt(ridge) I] against [Y; 0].
    a = np.vstack([z, math.sqrt(ridge) * np.eye(d)])
    target = np.vstack([z_later, np.zeros((d, d))])
    np.testing.assert_allclose(m, np.linalg.lstsq(a, target, rcond=None)[0].T, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Interaction: the angle bin and the three losses


class TinyEncoder(nn.Module):
    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 6)

    def forward(self, x):
        return torch.tanh(self.linear(x.mean((2, 3))))


@pytest.mark.parametrize("seed", range(3))
def test_interaction_losses_and_grasp_angle_bins_against_a_float64_loop(seed):
    """Grasp: BCE of the logit of bin floor((angle mod pi) / (pi / bins)) against success, over
    grasps; push: Huber summed over x, y, over pushes; poke: Huber against log(1 + |d| scale), over pokes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bins, beta, scale = int(rng.integers(2, 20)), float(rng.uniform(0.05, 0.5)), float(rng.uniform(1, 80))
    config = interaction_module.Config(angle_bins=bins, hidden_dim=8, huber_beta=beta, poke_scale=scale,
                                       grasp_weight=0.7, push_weight=1.3, poke_weight=0.4)
    method = interaction_module.Method(config, TinyEncoder(), 8)
    seen = {}
    for name in ("grasp_head", "push_head", "poke_head"):
        getattr(method, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.detach().double()}))
    n = 12
    kind = np.array([0, 1, 2] * 4)
    angle = rng.uniform(-7, 7, n).astype(np.float32)
    success = (rng.random(n) < 0.5).astype(np.float32)
    displacement = (rng.normal(size=(n, 2)) * 0.2).astype(np.float32)
    side = interaction_module.Actions(*(torch.from_numpy(a) for a in (kind, angle, success, displacement)))
    images = torch.randint(0, 256, (n, 1, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    out = method(Batch(images, torch.Generator(), side), Progress(0, 1, 1))

    def huber(x):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    grasp_logits, push, poke = seen["grasp_head"].numpy(), seen["push_head"].numpy(), seen["poke_head"].numpy()[:, 0]
    grasp_terms, push_terms, poke_terms = [], [], []
    for i in range(n):
        if kind[i] == 0:
            a = math.fmod(float(angle[i]), math.pi) % math.pi
            logit = grasp_logits[i, min(int(a // (math.pi / bins)), bins - 1)]
            y = float(success[i])
            grasp_terms.append(-(y * math.log(1 / (1 + math.exp(-logit))) + (1 - y) * math.log(1 / (1 + math.exp(logit)))))
        elif kind[i] == 1:
            push_terms.append(sum(huber(push[i, j] - float(displacement[i, j])) for j in range(2)))
        else:
            distance = math.log(1 + math.hypot(*displacement[i].astype(float)) * scale)
            poke_terms.append(huber(poke[i] - distance))
    expected = {"grasp_loss": np.mean(grasp_terms), "push_loss": np.mean(push_terms), "poke_loss": np.mean(poke_terms)}
    for key, value in expected.items():
        assert out.metrics[key].item() == pytest.approx(value, rel=1e-5, abs=1e-7), key
    total = 0.7 * expected["grasp_loss"] + 1.3 * expected["push_loss"] + 0.4 * expected["poke_loss"]
    assert out.loss.item() == pytest.approx(total, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Schedules of the momentum teachers, and MoCo's queue


@pytest.mark.parametrize("seed", range(3))
def test_teacher_temperature_and_ema_momentum_on_random_progress(seed):
    rng = np.random.default_rng(seed)
    start, end = float(rng.uniform(0.01, 0.05)), float(rng.uniform(0.05, 0.1))
    warmup, epochs, total = float(rng.uniform(1, 30)), int(rng.integers(2, 60)), int(rng.integers(10, 5000))
    config = dino_module.Config(teacher_temperature_start=start, teacher_temperature=end,
                                teacher_temperature_warmup_epochs=warmup)
    base, final = float(rng.uniform(0.9, 0.999)), float(rng.choice([1.0, 0.9995]))
    for step in rng.integers(0, total + 1, 20):
        progress = Progress(int(step), total, epochs)
        epoch = step / total * epochs
        expected_t = start + min(1.0, epoch / warmup) * (end - start)  # linear warm-up (DINO sec. 3.1)
        assert dino_module.teacher_temperature(config, progress) == pytest.approx(expected_t, rel=1e-12)
        # BYOL sec. 3.2: tau = tau_end - (tau_end - tau_base)(cos(pi k / K) + 1) / 2
        expected_m = final - (final - base) * (math.cos(math.pi * step / total) + 1) / 2
        assert ema_momentum(progress, base, final) == pytest.approx(expected_m, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_queue_holds_the_newest_keys_oldest_first_like_a_bounded_deque(seed):
    rng = np.random.default_rng(seed)
    size, dim = int(rng.integers(1, 9)), 3
    queue, reference = Queue(size, dim), deque(maxlen=size)
    for _ in range(12):
        keys = torch.from_numpy(rng.normal(size=(int(rng.integers(1, 2 * size + 2)), dim)).astype(np.float32))
        queue.push(keys)
        reference.extend(keys)
        count = len(reference)
        assert int(queue.filled().sum()) == count
        newest = queue.oldest_first()[size - count:]  # unwritten slots, if any, come first
        assert torch.equal(newest, torch.stack(list(reference)))
        filled = {tuple(k.tolist()) for k in queue.keys[queue.filled()]}
        assert filled == {tuple(k.tolist()) for k in reference}


# ---------------------------------------------------------------------------------------------
# Presets against the numbers of the sources their comments cite


def test_ibot_presets_take_dinov2s_default_rate_scaled_by_the_square_root():
    """DINOv2 (ssl_default_config.yaml, utils/config.py): lr = 0.004 x sqrt(batch / 1024), weight
    decay 0.04 -> 0.4. Both presets, at their own batch and at others."""
    from selfsup.config import resolve
    from selfsup.optim import peak_lr
    for size in (32, 224):
        optim = resolve({"method": "ibot", "data": {"image_size": size}}).optim
        for batch in (64, 256, 1024, 4096):
            assert peak_lr(optim, batch) == pytest.approx(0.004 * math.sqrt(batch / 1024))
        assert (optim.weight_decay, optim.weight_decay_end) == (0.04, 0.4)


def test_dinos_vit_preset_holds_main_dinos_teacher_temperature():
    # main_dino.py: warmup_teacher_temp 0.04, teacher_temp 0.04, warmup_teacher_temp_epochs 0.
    from selfsup.config import resolve
    cfg = resolve({"method": "dino", "preset": "cifar-vit"})
    epochs = cfg.train.epochs
    for epoch in (0, 15, 30, epochs - 1):
        assert dino_module.teacher_temperature(cfg.method_config, Progress(epoch * 10, epochs * 10, 10)) == 0.04


def test_a_vit_gets_dinos_and_moco_v3s_own_vit_recipes_from_the_automatic_preset():
    # DINO's main_dino.py defaults (ViT-S/16) and MoCo v3's CONFIG.md ViT-Small, not their ResNet-50 recipes.
    from selfsup.config import resolve
    from selfsup.optim import peak_lr
    dino = resolve({"method": "dino", "backbone": {"name": "vit-small"}})
    assert (dino.preset, dino.optim.name, dino.optim.clip_grad, dino.backbone.drop_path_rate) == (
        "imagenet-vit", "adamw", 3.0, 0.1)
    assert (peak_lr(dino.optim, 256), dino.optim.weight_decay, dino.optim.weight_decay_end) == (5e-4, 0.04, 0.4)
    assert dino.method_config.global_view_1.crop_scale == (0.4, 1.0)
    assert dino.method_config.local_view.crop_scale == (0.05, 0.4)
    assert resolve({"method": "dino", "data": {"image_size": 32},
                    "backbone": {"name": "timm:vit_tiny_patch16_224"}}).preset == "cifar-vit"
    moco = resolve({"method": "moco-v3", "backbone": {"name": "vit-small"}})
    assert (moco.preset, moco.optim.name, peak_lr(moco.optim, 256), moco.optim.weight_decay) == (
        "imagenet-vit", "adamw", 1.5e-4, 0.1)
    assert (moco.method_config.temperature, moco.optim.exclude_bias_and_norm, moco.optim.warmup_epochs) == (
        0.2, False, 40.0)
    # ResNets keep the ResNet-50 recipes; a method without a ViT recipe keeps its regime's preset.
    assert resolve({"method": "dino"}).preset == resolve({"method": "moco-v3"}).preset == "imagenet"
    assert resolve({"method": "dino", "backbone": {"name": "resnet18"}}).optim.name == "sgd"
    assert resolve({"method": "byol", "backbone": {"name": "vit-small"}}).preset == "imagenet"


def test_inpaintings_presets_take_the_official_encoder_decoders_rate():
    # train.lua: the network that inpaints learns at 10 x opt.lr (2e-4) when wtl2 = 0.999, in batches of 64.
    from selfsup.config import resolve
    from selfsup.optim import peak_lr
    for size in (32, 224):
        optim = resolve({"method": "inpainting", "data": {"image_size": size}}).optim
        assert (peak_lr(optim, 64), optim.betas[0], optim.weight_decay) == (pytest.approx(2e-3), 0.5, 0.0)
