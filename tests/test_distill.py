"""Distillation: a frozen teacher, a student that moves towards it, and clear errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from selfsup.errors import UserError
from selfsup.eval import evaluate_knn
from selfsup.train import run_pretraining

from conftest import assert_same_state, interrupted_then_resumed, write_dataset


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A SimCLR ResNet-18 (features only) and a DINO ViT-Tiny (with prototype head), each trained
    for one epoch on 3 classes of 16-pixel shapes."""
    root = tmp_path_factory.mktemp("teachers")
    torch.set_num_threads(1)
    data = write_dataset(root / "ds" / "train", per_class=24, size=16, seed=1)
    write_dataset(root / "ds" / "test", per_class=8, size=16, seed=2)
    # Nothing held out: no kNN monitor nor curves drawn at the epoch's end; the tests use the weights.
    common = {"data": {"path": str(root / "ds"), "image_size": 16, "holdout_fraction": 0.0},
              "train": {"epochs": 1, "batch_size": 16, "progress": False}}
    run_pretraining({**common, "method": "simclr", "out": str(root / "simclr"),
                     "backbone": {"name": "resnet18", "small_stem": False}})
    run_pretraining({**common, "method": "dino", "out": str(root / "dino"),
                     "backbone": {"name": "vit-tiny", "patch_size": 4},
                     "dino": {"out_dim": 128, "hidden_dim": 32, "bottleneck_dim": 16}})
    return root, data


def distill_run(root, out, teacher, backbone, epochs=2, **distill):
    return {"method": "distill", "data": {"path": str(root / "ds"), "image_size": 16}, "out": str(out),
            "backbone": backbone, "train": {"epochs": epochs, "batch_size": 16, "progress": False, "seed": 3},
            "optim": {"lr": 0.01},  # 6e-4 at this batch: a short run must move
            "distill": {"teacher": str(teacher), "hidden_dim": 32, "bottleneck_dim": 16, **distill}}


def test_feature_teacher_of_another_width_needs_the_projection_option(teachers, tmp_path):
    root, _ = teachers
    half = {"name": "resnet18-half", "small_stem": False}
    with pytest.raises(UserError, match=r"512 dimensions and the student's 256; "
                                        r".*config=\{'distill': \{'projection': True\}\}"):
        run_pretraining(distill_run(root, tmp_path / "a", root / "simclr", half))
    with pytest.raises(UserError, match="method='distill' needs a teacher"):
        run_pretraining(distill_run(root, tmp_path / "b", "", half))


ORIENTATIONS = ("horizontal", "vertical", "diagonal")


def stripes_image(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A square of fine stripes (2-pixel bands of two random colours) somewhere on a noisy
    background of random colour. Colour dominates the features of a random-init encoder, so its
    kNN accuracy on the orientation is near chance; a trained encoder sees the orientation."""
    img = (rng.random((size, size, 3)) * 60 + rng.integers(0, 160, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    band = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[kind] // 2 % 2 == 0
    side = size // 2
    y0, x0 = rng.integers(0, size - side + 1, 2)
    square = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
    img[square & band], img[square & ~band] = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return img


def write_stripes(root, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind in ORIENTATIONS:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(stripes_image(kind, rng)).save(root / kind / f"{i:03d}.png")


def supervised_teacher(path, images_per_class: int = 100, steps: int = 80) -> None:
    """A ResNet-18-half that knows the orientation: trained with labels (which distillation
    never sees) and saved as a plain weights file, a `weights:FILE` teacher."""
    from selfsup.backbones import build_backbone
    from selfsup.config import BackboneConfig
    from selfsup.views import eval_view

    rng, generator = np.random.default_rng(7), torch.Generator().manual_seed(7)
    images = np.stack([stripes_image(k, rng) for k in ORIENTATIONS for _ in range(images_per_class)])
    x, y = eval_view(torch.from_numpy(images), 16), torch.arange(3).repeat_interleave(images_per_class)
    torch.manual_seed(7)
    backbone = build_backbone(BackboneConfig(name="resnet18-half", small_stem=False), 16)
    classifier = nn.Linear(backbone.feature_dim, 3)
    optimizer = torch.optim.Adam([*backbone.parameters(), *classifier.parameters()], lr=2e-3)
    for _ in range(steps):
        i = torch.randperm(len(x), generator=generator)[:32]
        loss = F.cross_entropy(classifier(backbone(x[i])), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(backbone.net.state_dict(), path)


def test_student_moves_towards_a_frozen_teacher_and_beats_random_init(tmp_path):
    """A student distilled from a teacher that knows something a random-init encoder does not
    (the orientation of stripes: kNN 0.78 against 0.33, chance 1/3) learns it without labels: its
    kNN accuracy clearly beats the same architecture at random init (measured: 0.54 to 0.62 over
    run seeds 3-5, against 0.33, on 300 test images). A teacher must be worth distilling for this
    to hold: a few epochs of SimCLR on 72 shape images are not (its kNN is below random init's)."""
    torch.set_num_threads(1)
    write_stripes(tmp_path / "ds" / "train", per_class=100, seed=1)
    write_stripes(tmp_path / "ds" / "test", per_class=100, seed=2)
    supervised_teacher(tmp_path / "teacher.pt")
    clean = {"crop_scale": (1.0, 1.0), "jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0,
             "solarize_prob": 0.0}
    user = {"method": "distill", "data": {"path": str(tmp_path / "ds"), "image_size": 16}, "out": str(tmp_path / "run"),
            "backbone": {"name": "resnet18-half", "small_stem": False},
            # The kNN monitor (and its redrawn curves) once, at the end: it moves nothing in training.
            "train": {"epochs": 5, "batch_size": 8, "progress": False, "seed": 3, "monitor_every_epochs": 5},
            "optim": {"lr": 0.064, "warmup_epochs": 0.0, "final_lr_ratio": 1.0},  # 2e-3 at this batch
            # The teacher already has its invariances: flipped whole images are targets enough. The
            # EMA's horizon, 1 / (1 - momentum) steps, must be short against this run of 190 steps.
            "distill": {"teacher": f"weights:{tmp_path / 'teacher.pt'}", "teacher_backbone": "resnet18-half",
                        "projection": True, "ema_momentum": 0.9, "global_view_1": clean, "global_view_2": clean}}
    result = run_pretraining(user)
    losses = [m["loss"] for m in result.metrics]
    assert losses[-1] < 0.7 * losses[0]  # the student's features turn towards the teacher's
    # The teacher is bitwise the weights file it was loaded from: training never moved it.
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    original = torch.load(tmp_path / "teacher.pt", weights_only=True)
    teacher = {k[len("teacher.backbone.net."):]: v for k, v in state.items() if k.startswith("teacher.backbone.net.")}
    assert teacher.keys() == original.keys() and all(torch.equal(v, original[k]) for k, v in teacher.items())
    # The kept encoder (the EMA) never runs forward: its BatchNorm statistics are averaged, not left at 0 and 1.
    ema_var = [v for k, v in state.items() if k.startswith("student_ema.backbone.") and k.endswith("running_var")]
    assert ema_var and not any(torch.equal(v, torch.ones_like(v)) for v in ema_var)
    common = dict(data=tmp_path / "ds", k=(5,), device="cpu", show_progress=False, record=False)
    student = evaluate_knn(result.checkpoint, **common)["top1"]
    random_init = evaluate_knn("random:resnet18-half", image_size=16, small_stem=False, **common)["top1"]
    assert student > random_init + 0.15  # 45 of 300 test images


def test_teacher_gets_no_gradient_and_prototype_teachers_drive_patch_level_loss(teachers, tmp_path):
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch, Progress
    root, _ = teachers
    vit = {"name": "vit-tiny", "patch_size": 4}
    method = build_method(resolve(distill_run(root, tmp_path / "x", root / "dino", vit, mask_probability=1.0)))
    assert method.patch_level and torch.equal(method.mask_token, torch.zeros_like(method.mask_token))  # DINOv2's start
    saved = torch.load(root / "dino" / "last.pt", weights_only=True)["model"]  # the teacher, loaded bitwise
    loaded = method.teacher["backbone"].state_dict()
    assert all(torch.equal(v, saved["teacher.backbone." + k]) for k, v in loaded.items())
    out = method(Batch(torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8), torch.Generator().manual_seed(0)),
                 Progress(0, 10, 1))
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert out.metrics["patch_loss"] > 0 and method.mask_token.grad.abs().sum() > 0
    resnet = build_method(resolve(distill_run(root, tmp_path / "y", root / "dino", {"name": "resnet18-half"})))
    assert not resnet.patch_level  # a ResNet student learns the image-level targets only


def test_an_ibot_teacher_with_its_own_patch_head_is_matched_by_a_student_patch_head(tmp_path, monkeypatch):
    """iBOT with `shared_head=false` has other prototypes (here another number) for patches than
    for images: the student's patch tokens are scored by a head of their own, of that width."""
    from selfsup.config import resolve
    from selfsup.methods import build_method, distill
    from selfsup.methods.common import Batch, Progress
    vit = {"name": "vit-tiny", "patch_size": 8}
    ibot = resolve({"method": "ibot", "data": {"image_size": 32}, "backbone": vit,
                    "ibot": {"shared_head": False, "out_dim": 64, "patch_out_dim": 32, "hidden_dim": 32,
                             "bottleneck_dim": 16, "local_crops": 0}})
    teacher = build_method(ibot).teacher
    monkeypatch.setattr(distill, "load_teacher", lambda config, image_size: nn.ModuleDict(
        {"backbone": teacher["backbone"], "head": teacher["head"], "patch_head": teacher["patch_head"]}))
    method = build_method(resolve({"method": "distill", "data": {"image_size": 32}, "backbone": vit,
                                   "distill": {"teacher": "random:vit-tiny", "hidden_dim": 32, "bottleneck_dim": 16,
                                               "mask_probability": 1.0}}))
    assert method.patch_level
    assert method.student["head"].last_layer.weight.shape[0] == 64
    assert method.student["patch_head"].last_layer.weight.shape[0] == 32
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    out = method(Batch(images, torch.Generator().manual_seed(0)), Progress(0, 10, 1))
    out.loss.backward()
    assert out.metrics["patch_loss"] > 0
    assert method.student["patch_head"].last_layer.parametrizations.weight.original1.grad.abs().sum() > 0


def test_distillation_resumes_exactly(teachers, tmp_path, monkeypatch):
    root, _ = teachers
    user = distill_run(root, tmp_path, root / "dino", {"name": "vit-tiny", "patch_size": 4}, epochs=2)
    whole, at_stop, resumed = interrupted_then_resumed(user, stop_after_steps=5, monkeypatch=monkeypatch)
    assert at_stop["position"]["epoch"] == 1
    assert_same_state(whole, resumed)


def test_a_distilled_run_teaches_with_its_ema_and_resumes_after_its_teacher_moved(teachers, tmp_path):
    import shutil

    from selfsup.checkpoint import load_checkpoint
    from selfsup.methods.distill import Config, load_teacher
    root, _ = teachers
    shutil.copytree(root / "dino", tmp_path / "dino")  # a teacher this test may move
    user = distill_run(root, tmp_path / "student", tmp_path / "dino", {"name": "vit-tiny", "patch_size": 4}, epochs=1)
    run_pretraining(user)
    # The distilled run as a teacher: its kept encoder (the student's EMA), not its own teacher.
    teacher = load_teacher(Config(teacher=str(tmp_path / "student")), image_size=16)
    finished = load_checkpoint(tmp_path / "student")
    state = finished["model"]
    assert list(teacher) == ["backbone"]
    for key, value in teacher["backbone"].state_dict().items():
        assert torch.equal(value, state[f"student_ema.backbone.{key}"])
    # The teacher's file moved: a clear error on --resume, then its new place is accepted.
    shutil.move(tmp_path / "dino", tmp_path / "moved")
    with pytest.raises(UserError, match="does not exist; give its place with teacher=PATH"):
        run_pretraining(user, resume=True)
    moved = {**user, "distill": {**user["distill"], "teacher": str(tmp_path / "moved")}}
    run_pretraining(moved, resume=True)
    assert_same_state(load_checkpoint(tmp_path / "student"), finished)  # finished: nothing more to do


def test_a_missing_teacher_is_refused_from_the_config_before_any_image_is_read(tmp_path):
    from selfsup.config import resolve
    with pytest.raises(UserError, match=r"the teacher '.*nowhere' does not exist; give its place with teacher="):
        resolve({"method": "distill", "data": {"path": str(tmp_path / "no-data"), "image_size": 16},
                 "distill": {"teacher": str(tmp_path / "nowhere")}})


def test_a_teacher_of_another_image_size_or_patch_size_is_said(teachers, tmp_path, capsys):
    from selfsup.config import merge_dicts, resolve
    from selfsup.methods import build_method
    root, _ = teachers
    user = distill_run(root, tmp_path / "x", root / "dino", {"name": "vit-tiny", "patch_size": 8})
    method = build_method(resolve(user))
    assert not method.patch_level
    assert ("no patch-level loss: the student's patches (8 px) are not the teacher's (4); the student learns the "
            "image-level targets only") in capsys.readouterr().err
    build_method(resolve(merge_dicts(user, {"data": {"image_size": 32}})))
    assert (f"the teacher {str(root / 'dino')!r} was trained on 16-pixel images and teaches on 32-pixel crops here"
            in capsys.readouterr().err)
