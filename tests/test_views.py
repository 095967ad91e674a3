"""Views: each batched operation against torchvision's reference transform, and the pipeline's
shapes, ranges, per-sample independence and determinism."""
import dataclasses
import math
import shutil

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from selfsup.views import ViewConfig, make_view, ops


def images(n=6, size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def per_image(fn, x, params):
    return torch.stack([fn(img, p) for img, p in zip(x, params.tolist())])


@pytest.mark.parametrize("ours, theirs, low, high", [
    (ops.adjust_brightness, TF.adjust_brightness, 0.2, 1.8),
    (ops.adjust_contrast, TF.adjust_contrast, 0.2, 1.8),
    (ops.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (ops.adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_ops_match_torchvision_per_image(ours, theirs, low, high):
    x = images()
    factors = torch.linspace(low, high, len(x))
    expected = per_image(theirs, x, factors)
    torch.testing.assert_close(ours(x, factors), expected, atol=2e-5, rtol=0)


def test_hsv_round_trip_and_grayscale_pixels():
    x = images(n=4)
    x[0] = 0.5  # gray: hue undefined, saturation 0
    x[1, :, :5] = 0.0  # black pixels
    torch.testing.assert_close(ops.hsv_to_rgb(ops.rgb_to_hsv(x)), x, atol=1e-6, rtol=0)


def test_grayscale_and_solarize_match_torchvision():
    x = images()
    apply = torch.tensor([True, False, True, False, True, False])
    gray = ops.to_grayscale_rgb(x, apply)
    for i in range(len(x)):
        expected = TF.rgb_to_grayscale(x[i], num_output_channels=3) if apply[i] else x[i]
        torch.testing.assert_close(gray[i], expected, atol=1e-6, rtol=0)
    sol = ops.solarize(x, apply, threshold=0.5)
    for i in range(len(x)):
        expected = TF.solarize(x[i], 0.5) if apply[i] else x[i]
        torch.testing.assert_close(sol[i], expected)


def test_gaussian_blur_matches_torchvision_with_a_sigma_per_image():
    x = images(size=24)
    sigmas = torch.linspace(0.1, 2.0, len(x))
    ours = ops.gaussian_blur(x, sigmas, kernel_size=7)
    for i in range(len(x)):
        expected = TF.gaussian_blur(x[i], kernel_size=[7, 7], sigma=[sigmas[i].item()] * 2)
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0)


def test_flip_matches_torchvision():
    x = images()
    flip = torch.tensor([True, False] * 3)
    out = ops.flip_horizontal(x, flip)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], TF.horizontal_flip(x[i]) if flip[i] else x[i])


def test_crop_with_fixed_box_matches_torchvision_resized_crop():
    x = images(n=3, size=32)
    # (left, top, right, bottom): an upscaling crop, a downscaling one and the whole image.
    boxes = torch.tensor([[4.0, 6.0, 20.0, 22.0], [0.0, 2.0, 30.0, 32.0], [0.0, 0.0, 32.0, 32.0]])
    ours = ops.crop_and_resize(x, boxes, size=24)
    for i, (l, t, r, b) in enumerate(boxes.int().tolist()):
        upscale = (r - l) <= 24
        expected = TF.resized_crop(x[i], t, l, b - t, r - l, [24, 24], antialias=not upscale)
        inner = (slice(None), slice(2, -2), slice(2, -2))
        if upscale:
            # Bilinear at output-pixel centres: identical away from the crop's border, where
            # torchvision clamps to the crop and we read the neighbouring pixel of the image.
            torch.testing.assert_close(ours[i][inner], expected[inner], atol=1e-5, rtol=0)
        else:
            # Area-averaged downscaling against torchvision's antialiased filter.
            assert (ours[i] - expected).abs().mean() < 0.03
    whole = ops.crop_and_resize(x, boxes[2:].repeat(3, 1), size=32)
    torch.testing.assert_close(whole, x, atol=1e-6, rtol=0)  # identity crop is exact


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    n, h, w = 20000, 32, 48
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = ops.sample_crop_boxes(n, h, w, scale, ratio, g, "cpu")
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (bw >= 1).all() and (bh >= 1).all()
    assert (boxes == boxes.round()).all()
    area = bw * bh / (h * w)
    # Rounding w and h to pixels moves the area a little outside the drawn range.
    assert area.min() > scale[0] * 0.8 and area.max() <= 1.0
    # Compare the distribution with torchvision's sampler.
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    ref = torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)], dtype=torch.float)
    ref_area = ref[:, 2] * ref[:, 3] / (h * w)
    assert abs(area.mean() - ref_area.mean()) < 0.01
    assert abs((bw / bh).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.02
    assert abs(x0.mean() - ref[:, 1].mean()) < 0.3 and abs(y0.mean() - ref[:, 0].mean()) < 0.3


def test_crop_boxes_fall_back_to_a_centre_crop_like_torchvision():
    g = torch.Generator().manual_seed(0)
    # No candidate fits (area above the image): the centre crop with the ratio clamped.
    boxes = ops.sample_crop_boxes(4, 20, 60, (2.0, 3.0), (3 / 4, 4 / 3), g, "cpu")
    i, j, h, w = RandomResizedCrop.get_params(torch.zeros(3, 20, 60), [2.0, 3.0], [3 / 4, 4 / 3])
    assert boxes.tolist() == [[float(j), float(i), float(j + w), float(i + h)]] * 4


def u8_batch(n=8, size=24, identical=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if identical:
        return torch.randint(0, 256, (1, size, size, 3), generator=g, dtype=torch.uint8).repeat(n, 1, 1, 1)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def test_view_shape_dtype_range():
    cfg = ViewConfig(solarize_prob=0.5)
    out = make_view(u8_batch(), cfg, 16, torch.Generator().manual_seed(0), mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 1  # unnormalised pixels stay in [0, 1]
    normalised = make_view(u8_batch(), cfg, 16, torch.Generator().manual_seed(0))
    assert torch.isfinite(normalised).all()


def test_views_are_random_per_sample_and_reproducible_under_a_seed():
    batch = u8_batch(identical=True)
    cfg = ViewConfig()
    first = make_view(batch, cfg, 16, torch.Generator().manual_seed(1))
    # Same image, same generator state: different views per sample (independent parameters).
    distinct = {tuple(v.flatten()[:50].tolist()) for v in first}
    assert len(distinct) == len(batch)
    # Same seed -> same views, whatever the global RNG does; another seed -> other views.
    torch.manual_seed(123)
    again = make_view(batch, cfg, 16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    other = make_view(batch, cfg, 16, torch.Generator().manual_seed(2))
    assert not torch.equal(first, other)


def test_probabilities_are_respected():
    batch = u8_batch(n=4000, size=8)
    g = torch.Generator().manual_seed(0)
    flip = ops.bernoulli(len(batch), 0.5, g, "cpu").float().mean().item()
    assert abs(flip - 0.5) < 0.03
    # With every augmentation off, a view of a full crop is the image itself.
    plain = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0, jitter_prob=0,
                       grayscale_prob=0, blur_prob=0)
    out = make_view(batch[:4], plain, 8, g, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(out, batch[:4].permute(0, 3, 1, 2).float() / 255, atol=1e-6, rtol=0)
    gray = ViewConfig(grayscale_prob=1.0, jitter_prob=0, blur_prob=0)
    out = make_view(batch[:16], gray, 8, g, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_each_operation_of_a_view_happens_at_its_configured_rate(p):
    """Flip, grayscale, solarize and colour jitter, each alone in the pipeline at probability p,
    on 4,000 images made so that each one's effect can be read off the view (3 sigma bounds)."""
    n, size = 4000, 8
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0, jitter_prob=0, grayscale_prob=0,
                blur_prob=0, solarize_prob=0)
    tolerance = 3 * math.sqrt(p * (1 - p) / n)
    g = torch.Generator().manual_seed(1)

    def rate(changed, cfg_changes, images):
        out = make_view(images, ViewConfig(**{**base, **cfg_changes}), size, g, mean=(0, 0, 0), std=(1, 1, 1))
        fraction = changed(out).float().mean().item()
        assert abs(fraction - p) < tolerance, (cfg_changes, fraction)

    ramp = torch.arange(size, dtype=torch.uint8).mul(30).view(1, 1, size, 1).expand(n, size, size, 3).contiguous()
    rate(lambda out: out[:, 0, 0, 0] > out[:, 0, 0, -1], {"flip_prob": p}, ramp)  # bright left edge: flipped
    colour = torch.tensor([200, 40, 90], dtype=torch.uint8).view(1, 1, 1, 3).expand(n, size, size, 3).contiguous()
    rate(lambda out: (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-6, {"grayscale_prob": p}, colour)
    rate(lambda out: out[:, 0, 0, 0] < 0.5, {"solarize_prob": p}, colour)  # 200/255 inverted below the threshold
    rate(lambda out: (out - colour[:, :, :, :].permute(0, 3, 1, 2) / 255).abs().amax(dim=(1, 2, 3)) > 1e-3,
         {"jitter_prob": p, "brightness": 0.4}, colour)


def test_blur_kernel_is_about_a_tenth_of_the_view():
    from selfsup.views.pipeline import blur_kernel_size
    assert blur_kernel_size(224, 0.1) == 23  # SimCLR: 10% of 224, odd
    assert blur_kernel_size(32, 0.1) == 3
    assert blur_kernel_size(4, 0.5) == 3
    assert math.isclose(ops.gaussian_kernels(torch.tensor([1.0]), 5).sum().item(), 1.0, rel_tol=1e-6)


def test_a_view_is_decided_by_one_uniform_draw_per_image():
    from selfsup.views import apply_view, sample_view_uniforms
    from selfsup.views.pipeline import VIEW_UNIFORMS
    batch = u8_batch()
    cfg = ViewConfig(solarize_prob=0.3)
    uniforms = sample_view_uniforms(len(batch), torch.Generator().manual_seed(4), "cpu")
    assert uniforms.shape == (len(batch), VIEW_UNIFORMS)
    made = make_view(batch, cfg, 16, torch.Generator().manual_seed(4))
    torch.testing.assert_close(apply_view(batch, uniforms, cfg, 16), made, atol=0, rtol=0)
    # Image i's view depends on row i alone: changing another row leaves it as it was.
    changed = uniforms.clone()
    changed[1:] = torch.rand(len(batch) - 1, VIEW_UNIFORMS, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(apply_view(batch, changed, cfg, 16)[0], made[0], atol=0, rtol=0)


@pytest.mark.parametrize("seed, strengths", [(0, (0.8, 0.8, 0.8, 0.2)), (1, (0.8, 0.8, 0.8, 0.2)),
                                             (2, (0.4, 0.0, 0.4, 0.1)), (3, (0.0, 0.5, 0.0, 0.2))])
def test_random_jitter_order_applies_each_images_permutation_like_torchvision(seed, strengths):
    """torchvision's ColorJitter draws an order per call; with random_jitter_order each image gets
    its own, and equals torchvision's functional ops run in that order with the same factors (the
    adjustments switched off take no part in the order)."""
    from selfsup.views.pipeline import color_jitter
    g = torch.Generator().manual_seed(seed)
    x = images(n=12, seed=seed)
    brightness, contrast, saturation, hue = strengths
    cfg = ViewConfig(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, random_jitter_order=True)
    uniforms, order = torch.rand(len(x), 4, generator=g), torch.rand(len(x), 4, generator=g)
    got = color_jitter(x, cfg, uniforms, torch.ones(len(x), dtype=torch.bool), order)
    reference = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    factors = [1 - s + 2 * s * uniforms[:, k] for k, s in enumerate(strengths[:3])] + [hue * (2 * uniforms[:, 3] - 1)]
    enabled = [k for k, s in enumerate(strengths) if s > 0]
    for i in range(len(x)):
        expected = x[i]
        ranked = sorted(range(len(enabled)), key=lambda j: order[i, j].item())  # smallest uniform first
        for op in (enabled[j] for j in ranked):
            expected = reference[op](expected, factors[op][i].item())
        torch.testing.assert_close(got[i], expected, atol=5e-5, rtol=0)
    fixed = color_jitter(x, dataclasses.replace(cfg, random_jitter_order=False), uniforms,
                         torch.ones(len(x), dtype=torch.bool))
    assert not torch.allclose(got, fixed)  # the order matters, so the option does something


def test_random_jitter_order_draws_four_more_uniforms_and_every_order():
    from selfsup.views import sample_view_uniforms
    from selfsup.views.pipeline import VIEW_UNIFORMS
    g = torch.Generator().manual_seed(0)
    assert sample_view_uniforms(3, g, "cpu", ViewConfig()).shape == (3, VIEW_UNIFORMS)
    assert sample_view_uniforms(3, g, "cpu", ViewConfig(random_jitter_order=True)).shape == (3, VIEW_UNIFORMS + 4)
    orders = torch.rand(24_000, 4, generator=g).argsort(dim=1)  # how color_jitter turns them into an order
    codes = (orders * torch.tensor([64, 16, 4, 1])).sum(dim=1)
    counts = torch.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 850 and counts.max() < 1150  # 1,000 each expected
    view = make_view(u8_batch(), ViewConfig(random_jitter_order=True), 16, torch.Generator().manual_seed(1))
    assert view.shape == (len(u8_batch()), 3, 16, 16) and torch.isfinite(view).all()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_views_equal_eager_views():
    # `train.compile` runs the views' arithmetic through torch.compile: it must be the same function.
    from selfsup.views import apply_view, sample_view_uniforms
    batch = u8_batch()
    cfg = ViewConfig(solarize_prob=0.5)
    uniforms = sample_view_uniforms(len(batch), torch.Generator().manual_seed(5), "cpu")
    compiled = torch.compile(apply_view, dynamic=False)(batch, uniforms, cfg, 16)
    torch.testing.assert_close(compiled, apply_view(batch, uniforms, cfg, 16), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("copies, cfg", [(1, ViewConfig()), (3, ViewConfig(blur_prob=0.5, solarize_prob=0.3)),
                                         (5, ViewConfig(random_jitter_order=True, crop_scale=(0.05, 0.4)))])
def test_views_made_as_one_batch_equal_views_made_one_after_another(copies, cfg):
    # `make_views` makes its copies as one batch of copies x B: the same crops, from the same
    # draws, as that many separate views of the batch.
    from selfsup.views import make_views
    batch = torch.randint(0, 256, (3, 21, 21, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(copies))
    generator = torch.Generator().manual_seed(10 + copies)
    together = make_views(batch, cfg, 12, copies, generator)
    generator = torch.Generator().manual_seed(10 + copies)
    apart = [make_view(batch, cfg, 12, generator) for _ in range(copies)]
    assert len(together) == copies
    for one, other in zip(together, apart):
        torch.testing.assert_close(one, other, atol=1e-6, rtol=0)
        assert one.is_contiguous(memory_format=torch.channels_last)
    if copies > 1:  # and each copy has its own randomness
        assert not torch.allclose(together[0], together[1])


def test_crop_and_resize_takes_several_boxes_per_image():
    images = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [2.0, 3.0, 9.0, 8.0], [1.0, 1.0, 10.0, 10.0], [4.0, 0.0, 8.0, 6.0]],
                         dtype=torch.float64)
    crops = ops.crop_and_resize(images, boxes, 4)  # box r crops image r mod 2
    for r in range(4):
        alone = ops.crop_and_resize(images[r % 2:r % 2 + 1], boxes[r:r + 1], 4)
        torch.testing.assert_close(crops[r:r + 1], alone, atol=1e-12, rtol=0)
