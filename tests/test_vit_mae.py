"""ViT backbones, masks, MAE, attention maps and layer-wise decay: each against an independent
computation (timm's own code paths, float64 references, counting by hand)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.backbones import build_backbone
from selfsup.backbones.vit import VITS, encode, patchify, unpatchify
from selfsup.config import BackboneConfig, OptimConfig, merge_dicts, resolve
from selfsup.errors import UserError
from selfsup.methods import build_method
from selfsup.methods.common import Batch, Progress
from selfsup.methods.mae import normalize_patches, reconstruction_loss
from selfsup.views.masks import block_mask, random_patch_mask, visible_indices

from conftest import assert_same_state, interrupted_then_resumed, write_dataset

# MAE on 16-pixel images with 4x4 patches (16 patches, 4 visible), a one-block decoder.
TINY_MAE = {"method": "mae", "backbone": {"name": "vit-tiny", "patch_size": 4}, "data": {"image_size": 16},
            "optim": {"lr": 2e-3, "lr_scaling": "none", "warmup_epochs": 0.0},
            "train": {"epochs": 3, "batch_size": 8, "progress": False, "checkpoint_every_steps": 2},
            "mae": {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2}}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and far faster on a shared, busy CPU (where two
    threads of tiny matrix products spend their time waiting for each other)."""
    torch.set_num_threads(1)


def vit(name="vit-tiny", image_size=16, patch_size=4):
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name=name, patch_size=patch_size), image_size).eval()


@pytest.fixture(scope="module")
def mae_runs(tmp_path_factory):
    """One tiny MAE run three ways (whole, stopped after 5 steps, resumed)."""
    root = tmp_path_factory.mktemp("mae")
    data = write_dataset(root / "data", per_class=10, size=16)
    user = merge_dicts(TINY_MAE, {"data": {"path": str(data)}, "out": str(root)})
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        checkpoints = interrupted_then_resumed(user, stop_after_steps=5, monkeypatch=monkeypatch)
    return root, data, checkpoints


# ---------------------------------------------------------------------------------------------
# Backbones


@pytest.mark.parametrize("name,dim", [("vit-tiny", 192), ("vit-small", 384), ("vit-base", 768)])
def test_vit_registry_entries_follow_the_backbone_contract(name, dim):
    backbone = vit(name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, pooled = backbone.forward_map(x), backbone(x)
        torch.testing.assert_close(tokens, backbone.net.forward_features(x))  # timm's own forward
        torch.testing.assert_close(pooled, backbone.net(x))  # the class token, as timm pools it
    assert backbone.kind == "vit" and backbone.feature_dim == dim
    assert tokens.shape == (2, 1 + 16, dim) and pooled.shape == (2, dim)
    torch.testing.assert_close(pooled, tokens[:, 0])


def test_positions_are_resampled_for_another_image_size():
    backbone = vit(image_size=16)
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        tokens = backbone.forward_map(x)
        assert tokens.shape == (2, 1 + 6 * 8, 192)
        torch.testing.assert_close(tokens, backbone.net.forward_features(x))  # timm's dynamic_img_size path


def test_token_dropping_runs_the_blocks_on_the_kept_patches_only():
    net = vit().net
    x = torch.randn(3, 3, 16, 16)
    keep = torch.stack([torch.randperm(16)[:5].sort().values for _ in range(3)])  # (3, 5)
    with torch.no_grad():
        full = net._pos_embed(net.patch_embed(x))  # (3, 17, D): timm's embedding with positions
        kept = torch.cat([full[:, :1], full[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, 192))], 1)
        expected = net.norm(net.blocks(kept))
        torch.testing.assert_close(encode(net, x, keep=keep), expected)
        torch.testing.assert_close(encode(net, x, keep=torch.arange(16).expand(3, -1)), net.forward_features(x))


def test_mask_tokens_replace_the_chosen_patch_embeddings():
    net = vit().net
    x = torch.randn(2, 3, 16, 16)
    mask = torch.rand(2, 16) < 0.4
    token = torch.randn(192)

    def substitute(module, inputs, output):  # (B, h, w, D): the patch embeddings timm computed
        return torch.where(mask.view(2, 4, 4, 1), token, output)

    with torch.no_grad():
        hook = net.patch_embed.register_forward_hook(substitute)
        expected = net.forward_features(x)
        hook.remove()
        torch.testing.assert_close(encode(net, x, mask=mask, mask_token=token), expected)
        assert not torch.allclose(encode(net, x), expected)


def test_patchify_follows_the_patch_embedding_token_order():
    net = vit().net
    x = torch.randn(2, 3, 16, 16)
    weight = net.patch_embed.proj.weight  # (D, 3, p, p) -> patchify's (row, column, channel) order
    by_hand = patchify(x, 4) @ weight.permute(0, 2, 3, 1).reshape(192, -1).T + net.patch_embed.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(by_hand, net.patch_embed(x).flatten(1, 2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, 16, 16), x)


def test_image_size_not_a_multiple_of_the_patch_size_is_refused():
    with pytest.raises(UserError, match=r"multiples of 4, got 30x30; use image_size=28 or 32"):
        build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 30)
    with pytest.raises(UserError, match=r"vit-small with patch size 16 needs .* got 100x100; use image_size=96 or 112"):
        resolve({"backbone": {"name": "vit-small"}, "data": {"image_size": 100}})  # before any data is read
    backbone = vit()
    with pytest.raises(UserError, match="multiples of 4, got 18x16"):
        backbone(torch.randn(1, 3, 18, 16))


def test_timm_vit_of_an_image_size_not_a_multiple_of_its_patches_is_refused():
    # timm's patch embedding would silently drop the last 8 pixels of each side.
    with pytest.raises(UserError, match=r"timm:vit_tiny_patch16_224 with patch size 16 needs .* got 40x40; "
                                        r"use image_size=32 or 48, or a `patch_size` that divides 40"):
        build_backbone(BackboneConfig(name="timm:vit_tiny_patch16_224"), 40)
    with pytest.raises(UserError, match=r"patch size 8 needs .* got 36x36"):
        build_backbone(BackboneConfig(name="timm:vit_tiny_patch16_224", patch_size=8), 36)
    assert build_backbone(BackboneConfig(name="timm:vit_tiny_patch16_224"), 48).kind == "vit"


def test_default_patch_size_follows_the_image_size():
    assert resolve({"backbone": {"name": "vit-small"}, "data": {"image_size": 32}}).backbone.patch_size == 4
    assert resolve({"backbone": {"name": "vit-small"}, "data": {"image_size": 224}}).backbone.patch_size == 16
    assert resolve({"backbone": {"name": "vit-small", "patch_size": 8}, "data": {"image_size": 32}}).backbone.patch_size == 8


# ---------------------------------------------------------------------------------------------
# Masks


@pytest.mark.parametrize("patches,ratio,hidden", [(196, 0.75, 147), (64, 0.75, 48), (16, 0.6, 10), (49, 0.5, 25)])
def test_random_patch_mask_hides_an_exact_count_per_image(patches, ratio, hidden):
    mask = random_patch_mask(64, patches, ratio, torch.Generator().manual_seed(1))
    assert mask.shape == (64, patches) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == hidden).all()  # the count MAE keeps: int(N * (1 - ratio)) visible
    assert len({tuple(row.tolist()) for row in mask}) == 64  # a different mask per image
    keep = visible_indices(mask)
    assert keep.shape == (64, patches - hidden)
    for row, kept in zip(mask, keep):
        assert kept.tolist() == (~row).nonzero().flatten().tolist()
    # Told the count, it finds the same positions without reading the mask back to the host.
    assert torch.equal(visible_indices(mask, patches - hidden), keep)


def test_random_patch_mask_is_reproducible_and_uniform():
    draw = lambda seed: random_patch_mask(4000, 64, 0.75, torch.Generator().manual_seed(seed))
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    frequency = draw(5).float().mean(dim=0)  # each position hidden 3/4 of the time
    assert (frequency - 0.75).abs().max() < 0.04


def test_block_mask_hides_rectangles_up_to_the_count():
    masks = block_mask(200, (14, 14), 75, torch.Generator().manual_seed(0))
    counts = masks.sum(dim=1)
    assert masks.shape == (200, 196) and (counts <= 75).all() and counts.float().mean() > 60
    assert torch.equal(masks, block_mask(200, (14, 14), 75, torch.Generator().manual_seed(0)))
    assert len({tuple(m.tolist()) for m in masks}) == 200
    grid = masks.view(200, 14, 14)  # blocks, not scattered patches: most hidden patches have a hidden neighbour
    neighbours = torch.zeros_like(grid)
    neighbours[:, 1:] |= grid[:, :-1]
    neighbours[:, :-1] |= grid[:, 1:]
    neighbours[:, :, 1:] |= grid[:, :, :-1]
    neighbours[:, :, :-1] |= grid[:, :, 1:]
    assert (grid & neighbours).sum() > 0.95 * grid.sum()


def test_block_mask_takes_one_count_per_image():
    counts = torch.tensor([0, 5, 20, 40] * 50)
    masks = block_mask(len(counts), (8, 8), counts, torch.Generator().manual_seed(1))
    hidden = masks.sum(dim=1)
    assert (hidden[counts == 0] == 0).all() and (hidden <= counts).all()
    for target in (5, 20, 40):  # BEiT's blocks reach the count nearly always
        assert hidden[counts == target].float().mean() > 0.95 * target


# ---------------------------------------------------------------------------------------------
# MAE


def test_mae_encoder_sees_a_quarter_of_the_patches():
    """224x224 with 16x16 patches: 196 patches; at 75 % masking the blocks receive 49 (+ class)."""
    cfg = resolve({"method": "mae", "backbone": {"name": "vit-tiny", "patch_size": 16}, "data": {"image_size": 224},
                   "mae": {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2}})
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    seen = {}
    net = method.backbone.net
    net.patch_embed.register_forward_hook(lambda m, i, out: seen.update(patches=out.shape))
    net.blocks[0].register_forward_hook(lambda m, inputs, out: seen.update(block_input=inputs[0].shape))
    images = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = method(Batch(images, torch.Generator().manual_seed(0)), Progress(0, 1, 1))
        assert seen["patches"] == (2, 14, 14, 192)  # 196 patches per image
        assert seen["block_input"] == (2, 1 + 49, 192)
        masked_tokens = seen["block_input"][1]
        method.backbone(torch.randn(2, 3, 224, 224))
        assert seen["block_input"] == (2, 1 + 196, 192)
        assert (seen["block_input"][1] - 1) / (masked_tokens - 1) == 4
    assert torch.isfinite(out.loss)


def test_mae_is_built_and_initialised_as_models_mae():
    # facebookresearch/mae models_mae.py: fixed sine-cosine positions (zero for the class token) in
    # the encoder and decoder, Xavier-uniform linear layers and patch embedding, zero linear
    # biases, N(0, 0.02) class and mask tokens; every LayerNorm takes eps 1e-6.
    from selfsup.backbones.vit import sincos_positions
    cfg = resolve({"method": "mae", "backbone": {"name": "vit-tiny", "patch_size": 4}, "data": {"image_size": 32},
                   "mae": {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2}})
    torch.manual_seed(0)
    method = build_method(cfg)
    net = method.backbone.net
    assert not net.pos_embed.requires_grad and torch.equal(net.pos_embed, sincos_positions(8, 192))
    assert torch.equal(method.decoder_pos, sincos_positions(8, 64)) and not net.pos_embed[0, 0].any()
    linears = [m for m in method.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m is method.decoder_pred for m in linears) and any(m is net.blocks[0].attn.qkv for m in linears)
    for weight in [m.weight for m in linears] + [net.patch_embed.proj.weight.flatten(1)]:
        fan_out, fan_in = weight.shape
        assert weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1)
        assert weight.abs().max().item() <= math.sqrt(6 / (fan_in + fan_out))  # uniform, not normal
    assert not any(m.bias.any() for m in linears)  # the patch embedding's keeps Conv2d's own, as there
    for token in (net.cls_token, method.mask_token):
        assert token.std().item() == pytest.approx(0.02, rel=0.25)
    norms = [m for m in method.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


def test_maes_prediction_reads_the_visible_patches_only():
    # The encoder never sees a hidden patch, so what the pixels there are cannot change the output.
    torch.manual_seed(0)
    method = build_method(resolve(TINY_MAE)).eval()
    images = torch.randn(2, 3, 16, 16)
    mask = random_patch_mask(2, 16, 0.75, torch.Generator().manual_seed(0))  # (2, 16), 12 hidden
    hidden_pixels = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48).float(), 4, 16, 16).bool()
    with torch.no_grad():
        latent, prediction = method.reconstruct(images, mask)
        other = method.reconstruct(torch.where(hidden_pixels, torch.randn_like(images), images), mask)
        assert latent.shape == (2, 1 + 4, 192) and prediction.shape == (2, 16, 48)
        torch.testing.assert_close(other[1], prediction, rtol=0, atol=1e-5)
        moved = method.reconstruct(torch.where(hidden_pixels, images, images + 1), mask)[1]
        assert (moved - prediction).abs().max() > 1e-3


def test_reconstruction_loss_scores_hidden_patches_only_against_float64():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        prediction, target = torch.randn(4, 16, 48, generator=g), torch.rand(4, 16, 48, generator=g) * 3
        mask = random_patch_mask(4, 16, 0.75, g)
        loss = reconstruction_loss(prediction, target, mask)
        p, t, m = prediction.double().numpy(), target.double().numpy(), mask.numpy()
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
        expected = np.mean([((p[b, n] - t[b, n]) ** 2).mean() for b in range(4) for n in range(16) if m[b, n]])
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        changed = prediction + 100 * torch.randn(4, 16, 48, generator=g) * (~mask).unsqueeze(-1)  # visible only
        assert reconstruction_loss(changed, target, mask).item() == loss.item()
        changed = prediction + torch.randn(4, 16, 48, generator=g) * mask.unsqueeze(-1)
        assert reconstruction_loss(changed, target, mask).item() != pytest.approx(loss.item(), rel=1e-4)
        raw = np.mean([((p[b, n] - target.double().numpy()[b, n]) ** 2).mean() for b in range(4) for n in range(16) if m[b, n]])
        assert reconstruction_loss(prediction, target, mask, norm_pix=False).item() == pytest.approx(raw, rel=1e-5)


def test_per_patch_normalisation_against_float64():
    # In float64 from its own generator: float32 patches drawn from the global one depended on the
    # tests run before, and some (a small spread about a large mean) lost more than 1e-5 to rounding.
    g = torch.Generator().manual_seed(0)
    drawn = dict(generator=g, dtype=torch.float64)
    patches = torch.randn(3, 10, 48, **drawn) * torch.rand(3, 10, 1, **drawn) * 5 + torch.randn(3, 10, 1, **drawn)
    ours = normalize_patches(patches).double().numpy()
    for b in range(3):
        for n in range(10):
            v = patches[b, n].double().numpy()
            by_hand = (v - v.sum() / len(v)) / math.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1) + 1e-6)
            np.testing.assert_allclose(ours[b, n], by_hand, rtol=1e-10, atol=1e-12)


def test_mae_presets_follow_the_paper():
    cifar = resolve({"method": "mae", "data": {"image_size": 32}})
    assert (cifar.backbone.name, cifar.backbone.patch_size) == ("vit-tiny", 4)
    imagenet = resolve({"method": "mae", "data": {"image_size": 224}})
    assert (imagenet.backbone.name, imagenet.backbone.patch_size) == ("vit-base", 16)
    for cfg in (cifar, imagenet):
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == ("adamw", 1.5e-4, (0.9, 0.95), 0.05)
        assert cfg.optim.lr_scaling == "linear" and cfg.method_config.mask_ratio == 0.75
        assert cfg.method_config.views.crop_scale == (0.2, 1.0) and cfg.method_config.views.jitter_prob == 0
    assert imagenet.optim.warmup_epochs == 40 and imagenet.method_config.decoder_dim == 512


def test_mae_refuses_a_resnet_before_reading_data():
    from selfsup.methods import mae
    message = "mae needs a ViT backbone \\(vit-tiny, vit-small, vit-base, with patch_size=N\\), not 'resnet18'"
    with pytest.raises(UserError, match=message):
        resolve({"method": "mae", "backbone": {"name": "resnet18"}, "data": {"image_size": 16}})
    resnet = build_backbone(BackboneConfig(name="resnet18"), 16)
    with pytest.raises(UserError, match=message):
        mae.Method(mae.Config(), resnet, 16)
    with pytest.raises(UserError, match="mask_ratio 0.99 leaves no visible or no hidden patch of 16"):
        resolve(merge_dicts(TINY_MAE, {"mae": {"mask_ratio": 0.99}}))


def test_mae_trains_draws_reconstructions_and_resumes_exactly(mae_runs):
    root, _, (whole, at_stop, resumed) = mae_runs
    metrics = selfsup.train.read_metrics(root / "whole")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["loss"] < 0.9 * metrics[0]["loss"]
    picture = Image.open(root / "whole" / "pictures.png")  # titles, then 8 rows x 3 images of 96 px, 2-px gaps
    assert picture.size == (3 * 98 - 2, selfsup.viz.TITLE_HEIGHT + 8 * 98 - 2)
    assert at_stop["position"]["step"] == 4 and at_stop["position"]["epoch"] == 1
    assert_same_state(whole, resumed)


# ---------------------------------------------------------------------------------------------
# Export, attention maps, layer-wise decay


def test_exported_vit_loads_into_plain_timm(mae_runs, tmp_path):
    import timm
    from safetensors.torch import load_file

    root, _, _ = mae_runs
    out = tmp_path / "vit.safetensors"
    meta = selfsup.export_encoder(root / "whole" / "last.pt", out)
    assert (meta["backbone"], meta["patch_size"], meta["image_size"]) == ("vit-tiny", "4", "16")
    model = timm.create_model(VITS["vit-tiny"], num_classes=0, img_size=16, patch_size=4)  # README's recipe
    model.load_state_dict(load_file(str(out)), strict=True)
    encoder = selfsup.load_encoder(root / "whole" / "last.pt").backbone
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), encoder.eval()(x))


def test_class_token_attention_matches_timm():
    from selfsup.attention import class_token_attention

    backbone = vit(image_size=32)
    attn = backbone.net.blocks[-1].attn
    attn.fused_attn = False  # timm then computes the softmax itself and passes it through attn_drop
    seen = {}
    attn.attn_drop.register_forward_hook(lambda m, inputs, out: seen.update(weights=inputs[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = class_token_attention(backbone, x)
    assert maps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(maps, seen["weights"][:, :, 0, 1:].reshape(2, 3, 8, 8))
    assert torch.all(maps.sum(dim=(2, 3)) < 1)


def test_attention_command_draws_each_image_and_refuses_a_resnet(mae_runs, tmp_path):
    from selfsup.attention import save_attention_maps
    from selfsup.cli import main

    root, data, _ = mae_runs
    result = save_attention_maps(root / "whole" / "last.pt", data / "circle", tmp_path / "maps", max_images=3,
                                 image_size=32, device="cpu")
    assert result == {"out": str(tmp_path / "maps"), "images": 3, "heads": 3, "image_size": 32,
                      "overview": str(tmp_path / "maps" / "attention.png")}
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["000.png", "001.png", "002.png", "attention.png"]
    with pytest.raises(UserError, match="attention maps need a ViT encoder.*holds a resnet18"):
        save_attention_maps("random:resnet18", data / "circle", tmp_path / "no")
    assert main(["attention", "--checkpoint", str(root / "whole"), "--images", str(data / "circle" / "000.png"),
                 "--out", str(tmp_path / "one"), "--image-size", "30"]) == 2


def test_attention_keeps_images_of_one_stem_apart_and_counts_the_unreadable(tmp_path, capsys):
    from selfsup.attention import save_attention_maps

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in ("x.jpg", "x.png", "y.png"):
        Image.fromarray(pixels).save(images / name)
    for name in ("broken.png", "empty.jpg"):
        (images / name).write_bytes(b"not an image")
    result = save_attention_maps("random:vit-tiny", images, tmp_path / "maps", image_size=32, device="cpu")
    assert result["images"] == 3
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["attention.png", "x.jpg.png", "x.png.png", "y.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 2 of 5 files" in warnings[0]
    # --max-images counts the images drawn, not the unreadable files met on the way.
    assert save_attention_maps("random:vit-tiny", images, tmp_path / "two", image_size=32, device="cpu",
                               max_images=2)["images"] == 2


def test_attention_draws_a_random_encoder_at_the_images_size_as_eval_does(tmp_path, capsys):
    """A random: ViT was drawn at 224 px (patches of 16) whatever the images: 32-pixel ones were
    enlarged 7x, and --image-size 32 gave a grid of 2x2 patches, where eval draws it at 32 px."""
    from selfsup.attention import save_attention_maps
    from selfsup.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    drawn = save_attention_maps("random:vit-tiny", images, tmp_path / "own", device="cpu")
    assert drawn["image_size"] == 32  # the shorter side
    given = save_attention_maps("random:vit-tiny", images, tmp_path / "given", image_size=32, device="cpu")
    assert given["image_size"] == 32
    assert all((tmp_path / "own" / f"{i}.png").read_bytes() == (tmp_path / "given" / f"{i}.png").read_bytes()
               for i in range(3))  # one encoder, of patches of 4: its 8x8 maps
    capsys.readouterr()
    assert main(["attention", "--checkpoint", "random:vit-tiny", "--images", str(images), "--out",
                 str(tmp_path / "cli"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(3 heads, 32 px)" in out and out.strip().endswith(f"{tmp_path / 'cli' / 'attention.png'}: every image "
                                                              f"beside its mean of heads")


def test_attention_gives_every_image_its_own_map_file_whatever_the_names():
    """a/b.png and a_b.png both became a_b.png.png (one map written over the other); A.png and
    a.png meet on a file system that ignores case; an image named attention would be the overview's."""
    import random

    from selfsup.attention import output_names

    assert output_names(["a/b.png", "a_b.png", "A.png", "a.png", "c.jpg"]) == \
        ["a_b.png.png", "a_b.png~2.png", "A.png", "a~2.png", "c.png"]
    assert output_names(["Attention.jpg", "attention/x.png"]) == ["Attention~2.png", "attention_x.png"]
    rng = random.Random(0)
    parts = ["a", "A", "b", "a_b", "b_a", "x~2", "x", "attention", "ATTENTION"]
    for _ in range(300):
        names = sorted({"/".join(rng.choices(parts, k=rng.randint(1, 3))) + rng.choice([".png", ".jpg", ".PNG"])
                        for _ in range(rng.randint(1, 12))})
        files = output_names(names)
        assert len({f.casefold() for f in files} | {"attention.png"}) == len(names) + 1
        assert all(f.endswith(".png") and "/" not in f for f in files)


def test_an_attention_picture_that_cannot_be_written_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    from selfsup.attention import _draw

    def disk_full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        _draw(np.ones((16, 16, 3), np.uint8), np.ones((2, 4, 4)), tmp_path / "photo.png")
    assert list(tmp_path.iterdir()) == []


def test_attention_refuses_to_write_its_maps_over_the_images(tmp_path, capsys):
    """Maps are named <stem>.png in --out: given the images' own folder, they replaced the images."""
    import os

    from selfsup.attention import save_attention_maps
    from selfsup.cli import main

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name in ("photo.png", "other.jpg"):
        Image.fromarray(pixels).save(images / name)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    with pytest.raises(UserError, match=r"^the attention map .*photo.png' would replace the image 'photo.png'; "
                                        r"give out= another folder$"):
        save_attention_maps("random:vit-tiny", images / "photo.png", images, image_size=32, device="cpu")
    (tmp_path / "link").symlink_to(images)  # the same folder by another name
    with pytest.raises(UserError, match=r"^out='.*link' is the folder the images are read from"):
        save_attention_maps("random:vit-tiny", images, tmp_path / "link", image_size=32, device="cpu")
    maps = tmp_path / "maps"  # a hard link: the same file under another folder
    maps.mkdir()
    os.link(images / "photo.png", maps / "photo.png")
    assert main(["attention", "--checkpoint", "random:vit-tiny", "--images", str(images / "photo.png"), "--out",
                 str(maps), "--image-size", "32", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfsup: error: the attention map") and "\n" not in err
    overview = tmp_path / "overview"  # nor the overview, attention.png
    overview.mkdir()
    os.link(images / "other.jpg", overview / "attention.png")
    with pytest.raises(UserError, match=r"attention.png' would replace the image 'other.jpg'"):
        save_attention_maps("random:vit-tiny", images, overview, image_size=32, device="cpu")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    # One image drawn beside itself under another name replaces nothing.
    assert save_attention_maps("random:vit-tiny", images / "other.jpg", images, image_size=32,
                               device="cpu")["images"] == 1
    assert (images / "other.png").read_bytes().startswith(b"\x89PNG") and (images / "other.jpg").read_bytes() == \
        before["other.jpg"]


def test_an_attention_picture_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from selfsup.attention import _draw

    out = tmp_path / "photo.png"
    _draw(np.zeros((16, 16, 3), np.uint8), np.zeros((2, 4, 4)), out)
    drawn = out.read_bytes()

    def killed_while_saving(self, path, *args, **kwargs):
        Path(path).write_bytes(drawn[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        _draw(np.ones((16, 16, 3), np.uint8), np.ones((2, 4, 4)), out)
    assert out.read_bytes() == drawn and [p.name for p in tmp_path.iterdir()] == ["photo.png"]


def one_hot_maps(count: int, side: int = 4) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`count` maps (side, side) of zeros but for one patch of 1 each, no two at one place, and
    none where a map's transpose would be hot."""
    places = [(k % side, (k + 1 + k // side) % side) for k in range(count)]
    assert len(set(places)) == count and all(r != c for r, c in places)
    maps = np.zeros((count, side, side))
    for m, (r, c) in zip(maps, places):
        m[r, c] = 1
    return maps, places


def assert_heat(panel: np.ndarray, shown: np.ndarray, place: tuple[int, int], side: int = 4):
    """`panel` is `shown` under inferno's top colour on the patch at `place`, its bottom colour
    elsewhere, at 0.6 (as imshow(alpha=0.6) drew a map over the image), to a unit of rounding."""
    import matplotlib

    top, bottom = (np.array(matplotlib.colormaps["inferno"](v)[:3]) * 255 for v in (1.0, 0.0))
    block = panel.shape[0] // side
    hot = np.zeros(panel.shape[:2], bool)
    hot[place[0] * block:(place[0] + 1) * block, place[1] * block:(place[1] + 1) * block] = True
    expected = np.where(hot[..., None], top, bottom) * 0.6 + shown * 0.4  # (S, S, 3)
    assert np.abs(panel.astype(float) - expected).max() <= 0.5 + 1e-6


def test_an_attention_picture_shows_the_image_then_each_map_over_it_in_its_panel(tmp_path):
    """The image, enlarged as drawn, in the first panel; each map (the mean, then heads 0 to 6) hot
    on its own patch in its own panel, 7 panels a row."""
    from selfsup.attention import _draw, panel_layout
    from selfsup.viz import thumbnail

    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    maps, places = one_hot_maps(8)  # the mean and 7 heads: 9 panels, two rows
    drawn = np.asarray(Image.open(_draw(image, maps, tmp_path / "photo.png")).convert("RGB"))
    layout = panel_layout(16)
    assert layout.side >= 198 and layout.side % 16 == 0  # as large as matplotlib's panels, each pixel a square

    def panel(i):
        x, y = layout.image(*divmod(i, 7))
        return drawn[y:y + layout.side, x:x + layout.side]

    shown = thumbnail(image, layout.side)
    assert np.array_equal(panel(0), shown) and shown.shape == (layout.side, layout.side, 3)
    for i, place in enumerate(places, start=1):
        assert_heat(panel(i), shown, place)
    assert drawn.shape[:2] == layout.size(2, 7)[::-1]


def test_the_overview_shows_each_image_beside_its_mean_of_heads_up_to_its_cap(tmp_path, monkeypatch):
    import selfsup.attention as attention
    from selfsup.viz import thumbnail

    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    means, places = one_hot_maps(5)
    monkeypatch.setattr(attention, "OVERVIEW_PAIRS", 2)
    out = attention._draw_overview(images, means, [f"{i}.png" for i in range(5)], tmp_path / "attention.png")
    drawn = np.asarray(Image.open(out).convert("RGB"))
    layout = attention.panel_layout(16, attention.OVERVIEW_CELL)
    assert layout.side >= 128 and drawn.shape[:2] == layout.size(3, 4)[::-1]  # 2 pairs a row: 3 rows of 4 cells
    for k, (image, place) in enumerate(zip(images, places)):
        r, c = divmod(2 * k, 4)
        cells = [drawn[y:y + layout.side, x:x + layout.side] for x, y in (layout.image(r, c), layout.image(r, c + 1))]
        shown = thumbnail(image, layout.side)
        assert np.array_equal(cells[0], shown)
        assert_heat(cells[1], shown, place)
    monkeypatch.setattr(attention, "OVERVIEW_IMAGES", 3)  # the first 3 are drawn: 2 rows
    out = attention._draw_overview(images, means, [f"{i}.png" for i in range(5)], tmp_path / "attention.png")
    assert np.asarray(Image.open(out)).shape[:2] == layout.size(2, 4)[::-1]


def test_attention_refuses_a_non_positive_image_size_and_names_only_its_own_options(tmp_path):
    from selfsup.attention import save_attention_maps

    for size in (0, -32):
        with pytest.raises(UserError, match=rf"image_size= must be a positive number of pixels, got {size}"):
            save_attention_maps("random:vit-tiny", tmp_path, tmp_path / "maps", image_size=size)
    with pytest.raises(UserError, match=r"vit-tiny with patch size 4 .* got 42x42; use image_size=40 or 44$"):
        save_attention_maps("random:vit-tiny", tmp_path, tmp_path / "maps", image_size=42)  # no --patch-size here


def test_layer_decay_scales_follow_beit():
    import timm
    from selfsup.optim import layer_decay_groups, set_schedule

    model = torch.nn.ModuleDict({"net": timm.create_model(VITS["vit-tiny"], num_classes=10, img_size=16,
                                                          patch_size=4, depth=3)})
    groups = layer_decay_groups(model, OptimConfig(weight_decay=0.05), decay=0.5)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(scale) == sum(1 for _ in model.parameters())  # each parameter in exactly one group
    by_name = {n: scale[id(p)] for n, p in model.named_parameters()}
    # depth 3: the embedding is layer 0 (0.5^4), block i is layer i+1 (0.5^(3-i)), the head layer 4.
    expected = {"net.cls_token": (1 / 16, 0.0), "net.pos_embed": (1 / 16, 0.0),  # as MAE's lr_decay.py
                "net.patch_embed.proj.weight": (1 / 16, 0.05), "net.patch_embed.proj.bias": (1 / 16, 0.0),
                "net.blocks.0.attn.qkv.weight": (1 / 8, 0.05), "net.blocks.1.mlp.fc1.bias": (1 / 4, 0.0),
                "net.blocks.2.norm1.weight": (1 / 2, 0.0), "net.norm.weight": (1.0, 0.0),
                "net.head.weight": (1.0, 0.05)}
    for name, value in expected.items():
        assert by_name[name] == value, name
    model["net"].blocks[2].requires_grad_(False)  # frozen: left out, the depth stays 3
    frozen = layer_decay_groups(model, OptimConfig(weight_decay=0.05), decay=0.5)
    assert {id(p) for g in frozen for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert {g["lr_scale"] for g in frozen} == {1 / 16, 1 / 8, 1 / 4, 1.0}
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_schedule(optimizer, 0.1, 0.05)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.1 / 16, 0.1 / 8, 0.1 / 4, 0.1 / 2, 0.1])


def test_stochastic_depth_rises_over_the_blocks_and_teachers_and_evaluations_run_without_it():
    from selfsup.nn import ema_copy

    backbone = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4, drop_path_rate=0.2), 16)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in backbone.net.blocks]
    assert rates == pytest.approx([0.2 * i / 11 for i in range(12)])  # 0 in the first block, 0.2 in the last
    plain = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 16)
    assert backbone.state_dict().keys() == plain.state_dict().keys()  # exported weights are the same kind
    x = torch.randn(8, 3, 16, 16)
    backbone.train()
    assert not torch.allclose(backbone(x), backbone(x))  # branches dropped at random per image
    teacher = ema_copy(backbone).train()
    assert torch.equal(teacher(x), teacher(x))
    assert torch.equal(backbone.eval()(x), backbone(x))


def test_finetuning_a_vit_uses_stochastic_depth_and_a_resnet_refuses_it_for_pretraining():
    from selfsup.eval.finetune import FinetuneConfig, finetune

    backbone = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 16)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8).numpy()
    labels = torch.tensor([0, 1] * 4)
    cfg = FinetuneConfig(epochs=1, min_steps=2, batch_size=4, drop_path_rate=0.3)
    result = finetune(backbone, images, np.arange(8), labels, np.arange(0), labels[:0], 2, 16, cfg,
                      torch.device("cpu"))
    assert result.model.backbone.net.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert isinstance(backbone.net.blocks[-1].drop_path1, torch.nn.Identity)  # the caller's encoder untouched
    with pytest.raises(UserError, match=r"backbone.drop_path_rate drops the blocks of a ViT; resnet18 has none"):
        resolve({"method": "simclr", "backbone": {"name": "resnet18", "drop_path_rate": 0.1}})


def test_finetuning_with_stochastic_depth_gives_the_same_result_for_the_same_seed():
    from selfsup.eval.finetune import FinetuneConfig, finetune

    backbone = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 16)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8).numpy()
    labels = torch.tensor([0, 1] * 4)
    cfg = FinetuneConfig(epochs=1, min_steps=3, batch_size=4, drop_path_rate=0.5)
    heads = []
    for seed in (0, 0, 1):
        torch.rand(int(torch.randint(1, 9, ())))  # the caller's global generator moves between calls
        result = finetune(backbone, images, np.arange(8), labels, np.arange(0), labels[:0], 2, 16, cfg,
                          torch.device("cpu"), seed=seed)
        heads.append(result.model.head.weight.detach())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
