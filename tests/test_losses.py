"""Losses against independent computations: textbook numbers and float64 references."""
import math

import numpy as np
import pytest
import torch

from selfsup.losses import cosine_similarity, nt_xent, nt_xent_logits


@pytest.mark.parametrize("a, b, expected", [
    ([1.0, 0.0], [0.9, 0.4], 0.914),
    ([1.0, 0.0], [-0.5, 0.8], -0.530),
    ([2.0, 1.0], [3.0, 2.0], 0.992),
    ([2.0, 1.0], [-2.0, 1.0], -0.600),
])
def test_cosine_similarity_textbook_numbers(a, b, expected):
    by_hand = sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
    assert round(by_hand, 3) == expected
    assert cosine_similarity(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(expected, abs=5e-4)


def reference_nt_xent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """Chen et al. 2020, eq. 1, summed over all 2N views, one view at a time in float64."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2, n = len(z), len(z) // 2
    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        logits = np.array([z[i] @ z[k] / temperature for k in others])
        log_denominator = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        total += -(z[i] @ z[positive] / temperature - log_denominator)
    return total / n2


@pytest.mark.parametrize("seed", range(5))
def test_nt_xent_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    n, d = rng.integers(2, 12), rng.integers(3, 40)
    temperature = float(rng.uniform(0.05, 1.0))
    z_a, z_b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    expected = reference_nt_xent(z_a, z_b, temperature)
    got64 = nt_xent(torch.from_numpy(z_a), torch.from_numpy(z_b), temperature)
    got32 = nt_xent(torch.from_numpy(z_a).float(), torch.from_numpy(z_b).float(), temperature)
    assert got64.item() == pytest.approx(expected, rel=1e-10)
    assert got32.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_each_view_has_one_positive_and_2n_minus_2_negatives(n):
    z_a, z_b = torch.randn(n, 8), torch.randn(n, 8)
    logits, positives = nt_xent_logits(z_a, z_b, temperature=0.5)
    assert logits.shape == (2 * n, 2 * n)
    for i in range(2 * n):
        finite = torch.isfinite(logits[i])
        assert not finite[i], "a view must not be compared with itself"
        assert positives[i].item() == (i + n) % (2 * n)  # the other view of the same image
        negatives = finite.clone()
        negatives[positives[i]] = False
        assert negatives.sum().item() == 2 * n - 2


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    z = torch.randn(8, 16)
    aligned = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1)
    shuffled = nt_xent(z, z[torch.roll(torch.arange(8), 1)], 0.1)
    assert aligned < shuffled
    # Perfect agreement with orthogonal images: loss -> log(1 + 0) as temperature -> 0.
    eye = torch.eye(4)
    assert nt_xent(eye, eye, 0.01).item() < 1e-6


def test_nt_xent_gradients_are_finite_despite_masked_diagonal():
    z_a = torch.randn(4, 8, requires_grad=True)
    z_b = torch.randn(4, 8, requires_grad=True)
    nt_xent(z_a, z_b, 0.2).backward()
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()


@pytest.mark.parametrize("seed", range(3))
def test_masked_mse_matches_reference_and_ignores_visible_units(seed):
    from selfsup.losses import masked_mse
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(3, 10, 6, generator=g, dtype=torch.float64), torch.randn(3, 10, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 10, generator=g) < 0.6
    mask[0, 0] = True
    expected = np.mean([((pred[b, n] - target[b, n]) ** 2).mean().item()
                        for b in range(3) for n in range(10) if mask[b, n]])
    assert masked_mse(pred, target, mask).item() == pytest.approx(expected, rel=1e-6)
    changed = pred.clone()
    changed[~mask] += 100.0  # anything where nothing was hidden
    assert masked_mse(changed, target, mask).item() == pytest.approx(expected, rel=1e-6)
    exact = torch.where(mask[..., None], target, pred + 5)
    assert masked_mse(exact, target, mask).item() == 0.0
    # Whatever it is: inf or NaN outside the mask changes neither the loss nor a gradient.
    wild = pred.masked_fill(~mask[..., None], float("inf"))
    wild[..., 0].masked_fill_(~mask, float("nan"))
    wild.requires_grad_(True)
    loss = masked_mse(wild, target, mask)
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-6) and torch.isfinite(wild.grad).all()
    assert (wild.grad[~mask] == 0).all()
    # Images: (B, C, H, W) with a (B, 1, H, W) mask.
    img_p, img_t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    img_m = torch.zeros(2, 1, 8, 8)
    img_m[:, :, 2:6, 2:6] = 1
    ref = ((img_p - img_t) ** 2).mean(dim=1)[:, 2:6, 2:6].mean().item()
    assert masked_mse(img_p, img_t, img_m).item() == pytest.approx(ref, rel=1e-5)
    img_wild = torch.where(img_m.bool(), img_p, torch.tensor(1e30))  # 1e30 squared: inf in float32
    assert masked_mse(img_wild, img_t, img_m[:, 0]).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_contrastive_losses_compute_in_float32_inside_bf16_autocast(seed):
    """Under autocast a float32 matmul would run in bf16 (cosines rounded to ~3 digits, then
    divided by the temperature); the losses switch autocast off and keep float32 accuracy."""
    from selfsup.losses import equivariance_loss, info_nce, info_nce_queue, koleo_loss
    from selfsup.losses.distillation import cross_view_entropy
    rng = np.random.default_rng(seed)
    n, d, temperature = 64, 128, 0.1
    z_a, z_b, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(256, d))
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    expected = reference_nt_xent(z_a, z_b, temperature)
    a32, b32, queue32 = (torch.from_numpy(x).float() for x in (z_a, z_b, queue))
    crops = torch.from_numpy(rng.normal(size=(4, n, d))).float()  # DINO's (S, B, K): 2 global crops, 2 local
    targets = torch.softmax(crops[:2] / 0.04, dim=-1)
    maps = torch.from_numpy(rng.normal(size=(3, d, d)) / d ** 0.5).float()
    classes = torch.from_numpy(rng.integers(0, 3, n))

    def losses():
        return {"queue": info_nce_queue(a32, b32, queue32, temperature), "batch": info_nce(a32, b32, temperature),
                "koleo": koleo_loss(a32), "dino": cross_view_entropy(crops, targets, temperature),
                "equivariance": equivariance_loss(a32, b32, classes, maps, margin=1.0)}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = nt_xent_logits(a32, b32, temperature)
        got = nt_xent(a32, b32, temperature)
        in_autocast = losses()
        bf16_matmul = (a32 @ b32.T).dtype
    assert bf16_matmul == torch.bfloat16  # what the losses must not do
    assert logits.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    outside = losses()
    for name, value in in_autocast.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(outside[name].item(), rel=1e-6), name


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("output_batch_norm", [False, True])
def test_simclr_scores_each_view_against_the_other_view_of_its_image(seed, output_batch_norm):
    """The method's loss is eq. 1 on z = g(f(x)) of the two views it drew, both views as one batch
    of 2N (global BN), against the float64 reference: not a view with itself, nor with a view of
    another image as its positive."""
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch, Progress
    from selfsup.views import make_view

    cfg = resolve({"method": "simclr", "backbone": {"name": "resnet18-half", "small_stem": False},
                   "data": {"image_size": 16},
                   "simclr": {"projection_hidden_dim": 32, "projection_dim": 16, "temperature": 0.3,
                              "projection_output_batch_norm": output_batch_norm}})
    torch.manual_seed(seed)
    method = build_method(cfg)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (6, 16, 16, 3), generator=g, dtype=torch.uint8)
    loss = method(Batch(images, torch.Generator().manual_seed(seed)), Progress(0, 1, 1)).loss
    again = torch.Generator().manual_seed(seed)  # the same two views, drawn again
    x_a, x_b = (make_view(images, cfg.method_config.views, 16, again) for _ in range(2))
    with torch.no_grad():
        z_a, z_b = method.projection(method.backbone(torch.cat([x_a, x_b]))).double().chunk(2)
    expected = reference_nt_xent(z_a.numpy(), z_b.numpy(), 0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # A test that can tell: the positive shifted to another image's view scores differently.
    assert abs(loss.item() - reference_nt_xent(z_a.numpy(), np.roll(z_b.numpy(), 1, axis=0), 0.3)) > 1e-3
