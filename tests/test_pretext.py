"""The classic pretext tasks: each label generator against an independent computation, each task
learning above chance on a tiny CPU run, the colorization encoder through export and kNN, and
the bad inputs (images too small for the grid, grayscale images for colorization)."""
import itertools
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup import config as config_lib
from selfsup.data import decode_image
from selfsup.errors import UserError
from selfsup.losses import masked_mse
from selfsup.methods import METHODS, build_method
from selfsup.methods.common import Batch, Progress
from selfsup.views import pretext

from conftest import SAMPLE, TINY_RUN, assert_same_state, interrupted_then_resumed, jpeg_bytes, write_dataset

REPO = Path(__file__).resolve().parents[1]
PRETEXT = ["rotation", "relative-location", "jigsaw", "colorization", "inpainting"]


@pytest.fixture(autouse=True)
def one_thread():
    # The CPU is shared: one thread per process avoids the oversubscription that makes small
    # convolutions ten times slower; the conftest fixture sets 2 for every test before this one.
    torch.set_num_threads(1)


def rand_images(n=6, size=30, seed=0, dtype=torch.float32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Rotation


def test_rotating_back_by_the_label_recovers_the_input():
    x = rand_images(n=8, size=12)
    k = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(1))
    rotated = pretext.rotate(x, k)
    for i in range(8):
        assert torch.equal(torch.rot90(rotated[i], -int(k[i]), dims=(-2, -1)), x[i])
        assert int(k[i]) == 0 or not torch.equal(rotated[i], x[i])
    every, labels = pretext.all_rotations(x)
    assert sorted(labels.tolist()) == sorted([0, 1, 2, 3] * 8)
    for image, label, original in zip(every, labels, x.repeat(4, 1, 1, 1)):
        assert torch.equal(torch.rot90(image, -int(label), dims=(-2, -1)), original)


# ---------------------------------------------------------------------------------------------
# Tiles: relative location and jigsaw

# (row, column) offset of the neighbour for each label, written from the paper's figure 2.
OFFSETS = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}


def coordinate_images(n, size):
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the image's index."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.stack([rows, cols, torch.zeros_like(rows)]).float().repeat(n, 1, 1, 1)
    x[:, 2] = torch.arange(n).float().view(n, 1, 1)
    return x


def test_relative_location_neighbours_match_their_labels_geometrically():
    n, size = 400, 64
    grid = pretext.tile_grid(size, gap=0.2, jitter=0.1, task="test")
    centre, neighbour, labels = pretext.relative_location_pair(coordinate_images(n, size), grid,
                                                               torch.Generator().manual_seed(0))
    t = grid.tile
    assert centre.shape == neighbour.shape == (n, 3, t, t)
    assert set(labels.tolist()) == set(range(8))
    ramp = torch.arange(t).float()
    for tiles in (centre, neighbour):  # exact pixel crops of the right image
        top, left = tiles[:, 0, 0, 0], tiles[:, 1, 0, 0]
        assert torch.equal(tiles[:, 0], (top.view(-1, 1, 1) + ramp.view(1, -1, 1)).expand(n, t, t))
        assert torch.equal(tiles[:, 1], (left.view(-1, 1, 1) + ramp.view(1, 1, -1)).expand(n, t, t))
        assert torch.equal(tiles[:, 2, 0, 0], torch.arange(n).float())
    start = grid.origin + grid.cell + (grid.cell - t) // 2  # the centre tile before jitter
    assert (centre[:, :2, 0, 0] - start).abs().max() <= grid.jitter
    assert (centre[:, :2, 0, 0] - start).abs().max() == grid.jitter  # jitter is drawn
    step = neighbour[:, :2, 0, 0] - centre[:, :2, 0, 0]  # (n, 2) pixel offset, row and column
    expected = torch.tensor([OFFSETS[int(label)] for label in labels]).float()
    assert torch.equal(torch.round(step / grid.cell), expected)
    moved = expected != 0  # along a moved axis, tiles are separated by at least the gap
    assert (step.abs()[moved] >= t + grid.gap).all()
    assert (step.abs()[~moved] <= 2 * grid.jitter).all()


def test_chromatic_guards():
    tiles = rand_images(n=64, size=8)
    dropped = pretext.chromatic_guard(tiles, "drop", torch.Generator().manual_seed(0))
    same = (dropped == tiles).flatten(2).all(2)  # (n, 3): which channels were kept
    assert (same.sum(1) == 1).all() and set(same.float().argmax(1).tolist()) == {0, 1, 2}
    kept_std = tiles.flatten(2).std(2)[same].view(-1, 1)
    replaced = dropped.flatten(2)[~same].view(64, 2, -1)
    assert (replaced.std(2) < kept_std / 100 * 1.6).all()  # noise of 1/100 of the kept deviation
    projected = pretext.chromatic_guard(tiles, "project", torch.Generator())
    green_magenta = torch.tensor([-1.0, 2.0, -1.0]) / 6 ** 0.5
    assert torch.einsum("nchw,c->nhw", projected, green_magenta).abs().max() < 1e-5
    gray = tiles[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(pretext.chromatic_guard(gray, "project", torch.Generator()), gray)


def test_jigsaw_permutation_set_is_distinct_far_apart_and_deterministic():
    count = 100
    perms = pretext.jigsaw_permutations(count, seed=0)
    rows = [tuple(p) for p in perms.tolist()]
    assert all(sorted(p) == list(range(9)) for p in rows) and len(set(rows)) == count
    by_hand = min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(rows, 2))
    assert pretext.min_hamming_distance(perms) == by_hand
    # At least as far apart as random sets of the same size, however many seeds those get.
    random_sets = [min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(
        [tuple(torch.randperm(9, generator=torch.Generator().manual_seed(1000 * s + i)).tolist())
         for i in range(count)], 2)) for s in range(5)]
    assert by_hand >= max(random_sets) and by_hand >= 5
    assert torch.equal(pretext.jigsaw_permutations(count, seed=0), perms)
    assert not torch.equal(pretext.jigsaw_permutations(count, seed=1), perms)


def test_jigsaw_set_is_stored_and_reported_by_the_method():
    cfg = config_lib.resolve({"method": "jigsaw", "backbone": {"name": "resnet18-half"}, "data": {"image_size": 32},
                              "jigsaw": {"permutations": 12, "permutation_seed": 3}})
    method = build_method(cfg)
    expected = pretext.jigsaw_permutations(12, seed=3)
    assert torch.equal(method.state_dict()["permutations"], expected)  # in every checkpoint
    out = method(Batch(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8), torch.Generator()),
                 Progress(0, 1, 1))
    assert out.metrics["permutation_min_hamming"].item() == pretext.min_hamming_distance(expected)


def test_unshuffling_by_the_label_recovers_the_grid():
    n, size = 5, 30
    x = rand_images(n=n, size=size)
    grid = pretext.tile_grid(size, gap=0.0, jitter=0.0, task="test")  # tiles = cells, exactly
    corners = pretext.sample_tile_corners(n, grid, torch.Generator(), "cpu")
    tiles = pretext.extract_tiles(x, corners, grid.tile)  # (n, 9, 3, 10, 10)
    perms = pretext.jigsaw_permutations(10, seed=0)
    labels = torch.tensor([0, 3, 9, 5, 3])
    shuffled = pretext.shuffle_tiles(tiles, perms[labels])
    for b in range(n):
        back = shuffled[b][torch.argsort(perms[labels[b]])]  # position p holds tile p again
        image = torch.cat([torch.cat(list(back[r * 3:r * 3 + 3]), dim=2) for r in range(3)], dim=1)
        assert torch.equal(image, x[b])
        assert int(labels[b]) == 0 or not torch.equal(shuffled[b], tiles[b])


def test_grid_too_small_names_the_minimum_size():
    with pytest.raises(UserError, match=r"jigsaw needs images of at least 27 pixels.*got 16"):
        pretext.tile_grid(16, 0.07, 0.04, "jigsaw")
    assert pretext.tile_grid(27, 0.07, 0.04, "jigsaw").tile >= pretext.MIN_TILE


# ---------------------------------------------------------------------------------------------
# Colour


def cie_lab_reference(rgb: np.ndarray) -> np.ndarray:
    """CIE 1976 L*a*b* of sRGB colours (N, 3) in float64, from the definitions: the sRGB transfer
    curve; the RGB -> XYZ matrix derived from the primaries' and D65's chromaticities (IEC
    61966-2-1, CIE 15); and the CIE's f with epsilon = 216/24389, kappa = 24389/27."""
    def xyz(x, y):
        return np.array([x / y, 1.0, (1 - x - y) / y])

    primaries = np.stack([xyz(0.64, 0.33), xyz(0.30, 0.60), xyz(0.15, 0.06)], axis=1)
    white = xyz(0.3127, 0.3290)
    matrix = primaries * np.linalg.solve(primaries, white)  # scaled so that RGB white is D65
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    ratio = linear @ matrix.T / white
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(ratio > eps, np.cbrt(ratio), (kappa * ratio + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def test_lab_round_trip_and_cie_reference():
    x = rand_images(n=4, size=16)
    x[0, :, 0, :8] = torch.eye(3).repeat(1, 3)[:, :8]  # pure primaries
    x[0, :, 1, :2] = torch.tensor([[0.0, 1.0]] * 3)  # black and white
    lab = pretext.rgb_to_lab(x)
    assert (pretext.lab_to_rgb(lab) - x).abs().max() < 1e-3
    expected = cie_lab_reference(x.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy())
    ours = lab.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    assert np.abs(ours - expected).max() < 0.05  # the 4-decimal published matrix vs the derived one
    torch.testing.assert_close(lab[0, :, 1, 1], torch.tensor([100.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(pretext.rgb_to_lab(x.double()), lab.double(), atol=1e-3, rtol=0)


def test_ab_bins_and_lightness_bins():
    bins = pretext.ABBins(10.0)
    assert 200 < len(bins) <= 313  # Zhang et al.: 313 over a gamut wider than sRGB's
    lab = pretext.rgb_to_lab(rand_images(n=8, size=16, seed=3))
    index = bins.quantize(lab[:, 1:])  # (8, 16, 16)
    centres = bins.centres[index].permute(0, 3, 1, 2)  # (8, 2, 16, 16)
    assert (centres - lab[:, 1:]).abs().max() <= 5.0 + 1e-4  # its own square of side 10
    one_hot = torch.nn.functional.one_hot(index, len(bins)).permute(0, 3, 1, 2).float() * 100
    torch.testing.assert_close(bins.decode(one_hot), centres)
    lightness = lab[:, 0]
    l_index = pretext.quantize_lightness(lightness, 50)
    assert torch.equal(l_index, torch.from_numpy(np.clip(np.floor(lightness.numpy() / 2), 0, 49)).long())
    peaked = torch.nn.functional.one_hot(l_index, 50).permute(0, 3, 1, 2).float() * 100
    torch.testing.assert_close(pretext.decode_lightness(peaked)[:, 0], l_index * 2.0 + 1.0)  # bin centres


# ---------------------------------------------------------------------------------------------
# Inpainting


@pytest.mark.parametrize("kind", ["center", "blocks", "regions"])
def test_masks_and_inpainting_loss_only_sees_the_hidden_pixels(kind):
    n, size = 6, 32
    mask = pretext.inpainting_masks(n, size, kind, 0.25, 4, torch.Generator().manual_seed(0), "cpu")
    hidden = mask.float().mean(dim=(1, 2, 3))
    if kind == "center":
        assert torch.equal(mask[0, 0].nonzero().amin(0), torch.tensor([8, 8]))
        assert (hidden == 0.25).all()
    elif kind == "blocks":  # 4 squares of side 8, overlapping or not
        assert (hidden <= 0.25).all() and (hidden >= 1 / 16).all() and len(set(hidden.tolist())) > 1
    else:
        assert (hidden == 0.25).all() and not torch.equal(mask[0], mask[1])
    target = rand_images(n=n, size=size)
    garbage = rand_images(n=n, size=size, seed=9) * 100
    exact_inside = torch.where(mask, target, garbage)
    assert masked_mse(exact_inside, target, mask).item() == 0.0
    wrong_inside = torch.where(mask, garbage, target)
    expected = ((garbage - target) ** 2).mean(1, keepdim=True)[mask].mean()
    torch.testing.assert_close(masked_mse(wrong_inside, target, mask), expected)


# ---------------------------------------------------------------------------------------------
# Each task learns (a tiny run of the method's own forward, with a plain Adam loop)


def sample_images(n: int) -> torch.Tensor:
    """The first n CIFAR-10 images of the shipped sample, (n, 32, 32, 3) uint8."""
    images = []
    with tarfile.open(SAMPLE) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images.append(np.asarray(Image.open(tar.extractfile(member)).convert("RGB")))
                if len(images) == n:
                    break
    return torch.from_numpy(np.stack(images))


def gradient_images(n: int, size: int = 32) -> torch.Tensor:
    """Brightness rising down and, three times less steeply, to the right, from a random level:
    where a tile lies shows in its brightness, so tile positions can be learnt in a few steps."""
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    level = torch.randint(20, 100, (n, 1, 1, 1), generator=g)
    noise = torch.randint(-5, 6, (n, size, size, 3), generator=g)
    return (level + (3.6 * rows + 1.2 * cols)[None, :, :, None] + noise).clamp(0, 255).to(torch.uint8)


def train_briefly(method: str, images: torch.Tensor, steps: int, batch: int, image_size: int,
                  settings: dict) -> list[dict]:
    torch.manual_seed(0)
    cfg = config_lib.resolve({"method": method, "backbone": {"name": "resnet18-half", "small_stem": False},
                              "data": {"image_size": image_size}, method: settings})
    model = build_method(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        chosen = torch.randint(0, len(images), (batch,), generator=generator)
        out = model(Batch(images[chosen], generator), Progress(step, steps, 1))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append({"loss": out.loss.item(), **{k: v.item() for k, v in out.metrics.items()}})
    return history


def mean_of(history: list[dict], key: str) -> float:
    return float(np.mean([h[key] for h in history]))


NO_FLIP = {"views": {"flip_prob": 0.0}}  # gradient images: a flip would hide which way is right


@pytest.mark.parametrize("method, images, steps, batch, size, settings, classes", [
    ("rotation", "cifar", 40, 16, 16, {}, 4),
    ("relative-location", "gradient", 40, 32, 32, {"hidden_dim": 128, **NO_FLIP}, 8),
    # The per-tile standardisation removes the brightness cue on purpose (that is its job).
    ("jigsaw", "gradient", 20, 16, 32, {"permutations": 10, "tile_dim": 64, "hidden_dim": 128,
                                        "standardize_tiles": False, **NO_FLIP}, 10),
])
def test_classification_task_learns_above_chance(method, images, steps, batch, size, settings, classes):
    data = sample_images(32) if images == "cifar" else gradient_images(32)
    history = train_briefly(method, data, steps, batch, size, settings)
    assert mean_of(history[-10:], "pretext_acc") > 1.5 / classes


def test_colorization_and_inpainting_learn():
    data = sample_images(32)
    colour = train_briefly("colorization", data, 20, 16, 16, {})
    assert mean_of(colour[-5:], "loss") < 0.8 * mean_of(colour[:3], "loss")
    assert mean_of(colour[-5:], "ab_acc") > 20 / 261  # far above a uniform guess among the bins
    fill = train_briefly("inpainting", data, 20, 16, 16, {"decoder_width": 64})
    assert mean_of(fill[-10:], "relative_mse") < 0.85  # better than the mean pixel it replaces
    assert mean_of(fill[-10:], "relative_mse") < mean_of(fill[:3], "relative_mse") - 0.1


# ---------------------------------------------------------------------------------------------
# Runs, pictures, export and evaluation; bad input


@pytest.mark.parametrize("method", PRETEXT)
@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_presets_resolve(method, preset):
    cfg = config_lib.resolve({"method": method, "preset": preset})
    assert cfg.preset == preset and cfg.method_config.views.jitter_prob == 0.0  # light views
    assert cfg.train.epochs == METHODS[method].PRESETS[preset]()["train"]["epochs"]


def test_colorization_run_draws_pictures_and_its_encoder_exports_and_evaluates(split_folder, tmp_path):
    run = selfsup.pretrain(method="colorization", data=split_folder / "train", out=tmp_path / "run",
                           config={"colorization": {"prediction_stride": 2}}, epochs=1, batch_size=8,
                           image_size=16, backbone="resnet18-half", small_stem=False, show_progress=False)
    assert 0 <= run.metrics[-1]["pretext_acc"] <= 1 and "ab_acc" in run.metrics[-1]
    with Image.open(tmp_path / "run" / "pictures.png") as picture:  # 8 rows of 5 columns
        assert picture.size[1] > picture.size[0] > 0
    encoder = selfsup.load_encoder(run.checkpoint).backbone
    assert encoder.feature_dim == 512 and encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 512)
    meta = selfsup.export_encoder(run.checkpoint, tmp_path / "encoder.safetensors")
    state, saved = selfsup.load_exported(tmp_path / "encoder.safetensors")
    assert saved["method"] == "colorization" and meta["feature_dim"] == "512"
    assert {k.split(".")[0] for k in state} == {"l_branch", "ab_branch"}
    assert state["l_branch.net.conv1.weight"].shape[1] == 1 and state["ab_branch.net.conv1.weight"].shape[1] == 2
    knn = selfsup.evaluate_knn(run.checkpoint, train=split_folder / "train", test=split_folder / "test")
    assert 0 <= knn["top1"] <= 1
    with pytest.raises(UserError, match="holds a colorization encoder, two networks that weights:FILE cannot load"):
        selfsup.load_encoder(f"weights:{tmp_path / 'encoder.safetensors'}")


def test_inpainting_run_draws_pictures(labelled_folder, tmp_path):
    user = {**TINY_RUN, "backbone": {"name": "resnet18-half", "small_stem": False}}
    run = selfsup.pretrain(method="inpainting", data=labelled_folder, out=tmp_path / "run", config=user,
                           epochs=1, show_progress=False)
    assert "relative_mse" in run.metrics[-1]
    with Image.open(tmp_path / "run" / "pictures.png") as picture:
        assert picture.size[1] > picture.size[0] > 0


def test_jigsaw_run_resumes_exactly_with_its_permutations(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", per_class=6, size=32)
    user = {"method": "jigsaw", "out": str(tmp_path / "runs"),
            "data": {"path": str(data), "image_size": 32, "holdout_fraction": 0.0},
            "backbone": {"name": "resnet18-half", "small_stem": False}, "jigsaw": {"permutations": 10},
            "train": {"epochs": 2, "batch_size": 8, "progress": False}}
    whole, at_interruption, resumed = interrupted_then_resumed(user, stop_after_steps=3, monkeypatch=monkeypatch)
    assert at_interruption["position"]["step"] < whole["position"]["step"]
    assert_same_state(whole, resumed)
    assert torch.equal(resumed["model"]["permutations"], pretext.jigsaw_permutations(10, seed=0))


def test_grid_too_small_and_grayscale_colorization_are_refused(labelled_folder, tmp_path):
    for task, smallest in [("jigsaw", 27), ("relative-location", 30)]:  # from the config alone: no data read
        with pytest.raises(UserError, match=f"{task} needs images of at least {smallest} pixels.*"
                                            f"or lower {task}.gap and {task}.jitter$"):
            config_lib.resolve({"method": task, "data": {"path": str(tmp_path / "missing"), "image_size": 20}})
    with pytest.raises(UserError, match="jigsaw needs images of at least 27 pixels"):
        selfsup.pretrain(method="jigsaw", data=labelled_folder, out=tmp_path / "jig", config=TINY_RUN,
                         show_progress=False)
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16), 20 * i, dtype=np.uint8), mode="L").save(gray / f"{i}.png")
    with pytest.raises(UserError, match="colorization needs colour images, but 12 of the 12 images"):
        selfsup.pretrain(method="colorization", data=gray, out=tmp_path / "col", config=TINY_RUN,
                         show_progress=False)
    # Gray pictures saved as RGB (as JPEGs of gray scenes usually are): equal channels count as gray.
    gray_rgb = tmp_path / "gray_rgb"
    gray_rgb.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8).repeat(3, 2)).save(gray_rgb / f"{i}.jpg")
    with pytest.raises(UserError, match="colorization needs colour images, but 12 of the 12 images"):
        selfsup.pretrain(method="colorization", data=gray_rgb, out=tmp_path / "col2", config=TINY_RUN,
                         show_progress=False)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    colour[0, 0] = (10, 10, 10)  # one gray pixel does not make a gray image
    assert decode_image(jpeg_bytes(colour), 16)[1] is False


def test_colorization_leaves_out_grayscale_images_and_says_so(tmp_path, capsys):
    data = tmp_path / "mixed"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"colour{i}.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(data / f"gray{i}.png")
    user = {**TINY_RUN, "train": {**TINY_RUN.get("train", {}), "epochs": 1, "batch_size": 5, "progress": False}}
    from selfsup.train import Trainer
    cfg = config_lib.resolve({**user, "method": "colorization", "data": {"path": str(data), "image_size": 16},
                              "out": str(tmp_path / "run")})
    trainer = Trainer(cfg, None, show_progress=False)
    trained = {trainer.cache.names[i] for i in trainer.train_idx}
    assert trained == {f"colour{i}.png" for i in range(10)}
    assert "colorization leaves out the 3 grayscale images of the 13" in capsys.readouterr().err
    assert len(trainer.stream) == 2  # 10 colour images in batches of 5


def test_colorization_pictures_show_colour_images(tmp_path):
    rng = np.random.default_rng(1)
    for kind in ("a", "b"):
        (tmp_path / "data" / kind).mkdir(parents=True)
        for i in range(20):  # every other image gray
            pixels = rng.integers(0, 256, (16, 16, 3 if i % 2 else 1), dtype=np.uint8)
            Image.fromarray(pixels.squeeze()).save(tmp_path / "data" / kind / f"{i}.png")
    from selfsup.train import Trainer
    cfg = config_lib.resolve({**TINY_RUN, "method": "colorization", "out": str(tmp_path / "run"),
                              "data": {"path": str(tmp_path / "data"), "image_size": 16, "holdout_fraction": 0.5},
                              "train": {**TINY_RUN.get("train", {}), "batch_size": 4, "progress": False}})
    trainer = Trainer(cfg, None, show_progress=False)
    shown = []
    trainer.method.save_pictures = lambda batch, run_dir: shown.append(batch.images)
    trainer.save_pictures()
    images = shown[0].numpy()
    assert len(images) == 8 and not any((im[..., :1] == im[..., 1:]).all() for im in images)


def test_cli_says_the_minimum_image_size(labelled_folder, tmp_path):
    args = ["pretrain", "--method", "relative-location", "--data", str(labelled_folder), "--out", str(tmp_path / "run"),
            "--image-size", "24", "--batch-size", "8", "--no-progress"]
    result = subprocess.run([sys.executable, "-m", "selfsup", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "selfsup: error: relative-location needs images of at least 30 pixels")
