"""The DINOv2 recipe: iBOT's patch loss, KoLeo and Sinkhorn-Knopp against float64 references; masks;
the method end to end."""
import math

import numpy as np
import pytest
import torch

from selfsup.errors import UserError
from selfsup.losses import cross_view_entropy, dino_loss, ibot_patch_loss, koleo_loss, sinkhorn_knopp
from selfsup.methods.ibot import Config, patch_masks
from selfsup.train import run_pretraining

from conftest import assert_same_state, interrupted_then_resumed, log_softmax64, write_dataset


@pytest.mark.parametrize("seed", range(4))
def test_ibot_patch_loss_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    b, n, k, temperature = 5, 9, 7, float(rng.uniform(0.05, 0.5))
    masks = rng.random((b, n)) < 0.4
    masks[0] = False  # an image without masked patches counts as zero
    masks[1, 3] = True
    m = int(masks.sum())
    student = rng.normal(size=(m, k))
    targets = rng.dirichlet(np.ones(k), size=m)
    # Reference: per image, the mean over its masked patches of -sum_k t log softmax(s / T); mean over images.
    total, row = 0.0, 0
    for i in range(b):
        count = int(masks[i].sum())
        if count:
            losses = [-(targets[row + j] * log_softmax64(student[row + j] / temperature)).sum() for j in range(count)]
            total += sum(losses) / count
            row += count
    expected = total / b
    got = ibot_patch_loss(torch.from_numpy(student), torch.from_numpy(targets), torch.from_numpy(masks), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_koleo_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12, 6))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = [min(np.linalg.norm(unit[i] - unit[j]) for j in range(12) if j != i) for i in range(12)]
    expected = -np.mean(np.log(np.array(nearest) + 1e-8))
    assert koleo_loss(torch.from_numpy(x)).item() == pytest.approx(expected, rel=1e-6)
    spread, crowded = torch.eye(6), torch.eye(6) + 0.01 * torch.ones(6, 6)
    crowded[1] = crowded[0] + 1e-3  # two images nearly on top of each other
    assert koleo_loss(crowded) > koleo_loss(spread)


def sinkhorn_reference(logits, temperature, iterations):
    q = np.exp(np.asarray(logits, np.float64) / temperature).T  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_knopp_rows_and_columns_sum_as_specified(seed):
    rng = np.random.default_rng(seed)
    b, k = 24, 8
    logits = rng.normal(size=(b, k)) * 3
    got = sinkhorn_knopp(torch.from_numpy(logits), 0.5, iterations=3).numpy()
    np.testing.assert_allclose(got, sinkhorn_reference(logits, 0.5, 3), rtol=1e-8)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)  # each image: a distribution
    converged = sinkhorn_knopp(torch.from_numpy(logits), 0.5, iterations=200).numpy()
    np.testing.assert_allclose(converged.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(converged.sum(axis=0), b / k, rtol=1e-6)  # each prototype: an equal share
    assert sinkhorn_knopp(torch.zeros(0, k), 0.5).shape == (0, k)  # a process without masked patches


def test_cross_view_entropy_is_dino_loss_given_the_teachers_distributions():
    g = torch.Generator().manual_seed(0)
    student, teacher, center = torch.randn(4, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g), torch.randn(10, generator=g)
    targets = torch.softmax((teacher - center) / 0.04, dim=-1)
    assert cross_view_entropy(student, targets, 0.1).item() == pytest.approx(
        dino_loss(student, teacher, center, 0.1, 0.04).item(), rel=1e-6)


@pytest.mark.parametrize("n, probability", [(2000, 0.5), (16, 0.5), (7, 0.3), (5, 1.0), (1, 0.5)])
def test_patch_masks_mask_dinov2s_number_of_images_with_stratified_ratios(n, probability):
    """DINOv2's collate (data/collate.py): int(n * p) images masked, the i-th of them hiding a
    fraction drawn from the i-th of int(n * p) equal parts of (0.1, 0.5); which images, at random."""
    config = Config(mask_probability=probability, mask_ratio=(0.1, 0.5))
    masks = patch_masks(n, (8, 8), config, torch.Generator().manual_seed(0))
    counts = masks.sum(dim=1)
    m = int(n * probability)
    assert int((counts > 0).sum()) == m
    # block masks can stop short of their count (BEiT), so a stratum bounds each count from above
    # exactly and from below loosely; sorted, the i-th count lies at most in the i-th stratum.
    strata = [0.1 + 0.4 * i / max(m, 1) for i in range(m + 1)]
    for i, count in enumerate(sorted(counts[counts > 0].tolist())):
        assert count <= int(strata[i + 1] * 64) + 1e-9
    hidden = counts[counts > 0].float() / 64
    if m >= 100:  # spread over the whole range, as stratification promises
        assert hidden.min() < 0.12 and hidden.max() > 0.45 and 0.25 < hidden.mean() < 0.32
    again = patch_masks(n, (8, 8), config, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    if 0 < m < n:  # which images are masked depends on the seed
        other = [patch_masks(n, (8, 8), config, torch.Generator().manual_seed(s)).any(dim=1) for s in range(1, 6)]
        assert any(not torch.equal(o, masks.any(dim=1)) for o in other)


def tiny_ibot(data, out, **ibot):
    return {"method": "ibot", "data": {"path": str(data), "image_size": 16}, "out": str(out),
            "backbone": {"name": "vit-tiny", "patch_size": 4},
            "train": {"epochs": 2, "batch_size": 8, "progress": False, "seed": 1},
            "ibot": {"out_dim": 128, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2, "local_size": 8,
                     "mask_probability": 1.0, **ibot}}


@pytest.mark.parametrize("centering", ["sinkhorn", "centre"])
def test_ibot_trains_and_resumes_exactly(tmp_path, monkeypatch, centering):
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    user = tiny_ibot(data, tmp_path, centering=centering, shared_head=centering == "sinkhorn")
    whole, at_stop, resumed = interrupted_then_resumed(user, stop_after_steps=3, monkeypatch=monkeypatch)
    assert at_stop["position"] == {"epoch": 1, "batch": 0, "step": 2}  # 2 steps per epoch
    assert_same_state(whole, resumed)
    teacher = {k: v for k, v in whole["model"].items() if k.startswith("teacher.")}
    student = {k: whole["model"]["student." + k[len("teacher."):]] for k in teacher}
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # an EMA, not a copy
    if centering == "centre":
        assert whole["model"]["center"].abs().sum() > 0 and whole["model"]["patch_center"].abs().sum() > 0


def test_the_mask_token_gets_gradients_and_the_losses_are_logged(tmp_path):
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch, Progress
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    method = build_method(resolve(tiny_ibot(data, tmp_path / "unused")))
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    out = method(Batch(images=images, generator=torch.Generator().manual_seed(0)), Progress(0, 10, 2))
    out.loss.backward()
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0  # [MASK] was seen
    assert all(p.grad is None for p in method.teacher.parameters())
    result = run_pretraining(tiny_ibot(data, tmp_path / "run"))
    last = result.metrics[-1]
    for key in ("dino_loss", "ibot_loss", "koleo", "masked_fraction", "momentum", "teacher_temperature"):
        assert math.isfinite(last[key])
    assert 0.05 < last["masked_fraction"] < 0.55


def test_the_mask_token_starts_at_zero_as_ibots_and_dinov2s(tmp_path):
    # iBOT's models/vision_transformer.py (masked_embed) and DINOv2's vision_transformer.py
    # (mask_token) create the token as zeros and never initialise it otherwise.
    from selfsup.config import resolve
    from selfsup.methods import build_method
    torch.manual_seed(0)
    method = build_method(resolve(tiny_ibot(tmp_path, tmp_path)))
    assert method.mask_token.requires_grad and torch.equal(method.mask_token, torch.zeros_like(method.mask_token))


def test_weight_decay_spares_what_ibots_rule_spares_and_decays_the_mask_token(tmp_path):
    # iBOT's get_params_groups (as DINO's and DINOv2's): no decay for biases and 1-D parameters.
    # Its mask token is (1, D), so decayed; selfsup's (D,) must be decayed too.
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.optim import parameter_groups
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    cfg = resolve(tiny_ibot(data, tmp_path / "unused"))
    assert cfg.optim.exclude_bias_and_norm
    method = build_method(cfg)
    groups = parameter_groups(method, cfg.optim)
    decayed, spared = ({id(p) for g in groups if g["decay"] == kind for p in g["params"]} for kind in (True, False))
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        official = "mask_token" in name or not (name.endswith(".bias") or param.ndim == 1)
        assert (id(param) in decayed) == official and (id(param) in spared) != official, name
    assert id(method.mask_token) in decayed


def test_learning_rates_fall_by_layer_as_dinov2s_get_vit_lr_decay_rate(tmp_path):
    # dinov2/train/param_groups.py: layer 0 for the patch embedding, positions, class and mask
    # tokens, i + 1 for block i, depth + 1 for the rest (the final norm, the heads); the rate is
    # layerwise_decay ** (depth + 1 - layer), times patch_embed_lr_mult in the patch embedding.
    import re

    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.optim import parameter_groups, set_schedule
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    cfg = resolve(tiny_ibot(data, tmp_path / "unused"))
    assert (cfg.optim.layer_decay, cfg.optim.patch_embed_lr_ratio) == (0.9, 0.2)  # the preset's, DINOv2's
    method = build_method(cfg)
    depth = len(method.student["backbone"].net.blocks)
    optimizer = torch.optim.AdamW(parameter_groups(method, cfg.optim), lr=1.0)
    set_schedule(optimizer, lr=1e-3, weight_decay=0.04)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        block = re.search(r"\.blocks\.(\d+)\.", name)
        layer = (int(block.group(1)) + 1 if block else
                 0 if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token")) else depth + 1)
        expected = 1e-3 * 0.9 ** (depth + 1 - layer) * (0.2 if "patch_embed" in name else 1.0)
        assert rate[id(param)] == pytest.approx(expected, rel=1e-12), name
    with pytest.raises(UserError, match="optim.layer_decay and optim.patch_embed_lr_ratio are for ViTs"):
        resolve({"method": "simclr", "optim": {"layer_decay": 0.9}})
    timm_vit = {"name": "timm:vit_tiny_patch16_224", "patch_size": 4}
    assert resolve({"method": "dino", "backbone": timm_vit, "data": {"image_size": 32},
                    "optim": {"layer_decay": 0.9}}).optim.layer_decay == 0.9


@pytest.mark.parametrize("shared_head", [True, False])
def test_the_heads_last_layers_learn_their_gain_and_are_frozen_in_the_first_epoch(tmp_path, shared_head):
    """DINOv2's head: a trainable weight-norm gain, no gradient to the last layer before epoch 1."""
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch, Progress
    cfg = resolve(tiny_ibot(tmp_path, tmp_path, shared_head=shared_head))
    assert not cfg.method_config.norm_last_layer and cfg.method_config.freeze_last_layer_epochs == 1.0
    method = build_method(cfg)
    heads = [method.student["head"]] + ([] if shared_head else [method.student["patch_head"]])
    last = [p for head in heads for p in head.last_layer.parameters()]
    assert len(last) == 2 * len(heads) and all(p.requires_grad for p in last)  # gain and direction
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    for epoch, frozen in [(0.5, True), (1.0, False)]:
        method.zero_grad(set_to_none=True)
        out = method(Batch(images=images, generator=torch.Generator().manual_seed(0)), Progress(int(epoch * 10), 20, 2))
        out.loss.backward()
        assert all((p.grad is None) == frozen for p in last), epoch
        assert method.student["head"].mlp[0].weight.grad is not None


def test_patches_are_compared_with_the_teachers_patches_of_the_same_crop_and_koleo_is_summed(tmp_path):
    """The method's losses against the same losses computed by hand from its submodules."""
    from selfsup.backbones.vit import encode
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch, Progress
    from selfsup.methods.dino import teacher_temperature

    torch.manual_seed(0)
    user = tiny_ibot(tmp_path, tmp_path, centering="centre", mask_ratio=(0.3, 0.5))
    user["backbone"]["drop_path_rate"] = 0.0  # the preset's stochastic depth would draw other blocks by hand
    method = build_method(resolve(user))
    c, progress = method.config, Progress(0, 10, 2)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = method(Batch(images=images, generator=torch.Generator().manual_seed(0)), progress)
    g = torch.Generator().manual_seed(0)  # the same crops and masks again
    global_crops = torch.cat(c.make_crops(images, 16, g)[:2])  # (2B, 3, 16, 16)
    masks = patch_masks(len(global_crops), method.grid, c, g)
    with torch.no_grad():
        student = encode(method.student["backbone"].net, global_crops, mask=masks, mask_token=method.mask_token)
        teacher = encode(method.teacher["backbone"].net, global_crops)  # (2B, 1+N, D)
        temperature = teacher_temperature(c, progress)

        def patch_loss(teacher_tokens):
            targets = torch.softmax(method.teacher["head"](teacher_tokens[:, 1:][masks]) / temperature, dim=-1)
            return ibot_patch_loss(method.student["head"](student[:, 1:][masks]), targets, masks, c.student_temperature)

        other_crop = torch.cat(teacher.chunk(2)[::-1])  # each image's teacher tokens of its other global crop
        koleo = koleo_loss(student[:8, 0]) + koleo_loss(student[8:, 0])  # DINOv2: a sum over the 2 global crops
    torch.testing.assert_close(out.metrics["ibot_loss"], patch_loss(teacher))
    assert abs(out.metrics["ibot_loss"] - patch_loss(other_crop)) > 1e-3
    torch.testing.assert_close(out.metrics["koleo"], koleo)
    torch.testing.assert_close(out.loss.detach(), out.metrics["dino_loss"] + out.metrics["ibot_loss"] + 0.1 * koleo)


@pytest.mark.parametrize("ratio,message", [([0.6, 0.2], r"ibot.mask_ratio must be in increasing order"),
                                           ([-1, 2], r"ibot.mask_ratio must be in \[0.0, 1.0\]"),
                                           ([0.1, 1.5], r"ibot.mask_ratio must be in \[0.0, 1.0\]")])
def test_mask_ratio_outside_0_1_or_decreasing_is_refused(tmp_path, ratio, message):
    from selfsup.config import resolve
    with pytest.raises(UserError, match=message):
        resolve(tiny_ibot(tmp_path, tmp_path, mask_ratio=ratio))
    assert resolve(tiny_ibot(tmp_path, tmp_path, mask_ratio=[0.2, 0.6])).method_config.mask_ratio == (0.2, 0.6)


def test_ibot_refuses_a_resnet_before_reading_data(tmp_path):
    with pytest.raises(UserError, match="ibot masks patch tokens and needs a ViT"):
        run_pretraining({**tiny_ibot(tmp_path / "nowhere", tmp_path / "out"), "backbone": {"name": "resnet18"}})
