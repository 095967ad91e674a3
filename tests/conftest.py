"""Shared fixtures: small labelled image folders made on the fly, and an isolated image cache."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "src/selfsup/sample/cifar10-sample.tar.xz"
CLASSES = ["circle", "square", "stripes"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own image cache folder, so nothing leaks between tests."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # and one per subprocess the test starts
    torch.set_num_threads(1)  # tests are tiny: one thread each, and `pytest -n 2` uses both cores


def shape_image(kind: str, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A small RGB image of a class-specific shape on a noisy background of random colour."""
    img = (rng.random((size, size, 3)) * 60 + rng.integers(0, 160, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    colour = rng.integers(120, 256, 3)
    if kind == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2
    elif kind == "square":
        mask = (abs(yy - cy) < size // 4) & (abs(xx - cx) < size // 4)
    else:
        mask = (xx // 3) % 2 == 0
    img[mask] = colour
    return img


def write_dataset(root: Path, per_class: int = 12, size: int = 24, seed: int = 0, fmt: str = "png") -> Path:
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shape_image(cls, rng, size)).save(root / cls / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """3 classes x 12 images of 24x24 pixels, laid out as class subfolders."""
    return write_dataset(tmp_path / "labelled")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """A dataset root holding train/ (3 x 16) and test/ (3 x 6)."""
    write_dataset(tmp_path / "ds" / "train", per_class=16, seed=1)
    write_dataset(tmp_path / "ds" / "test", per_class=6, seed=2)
    return tmp_path / "ds"


def make_tar(folder: Path, out: Path, mode: str = "w:gz", prefix: str = "") -> Path:
    with tarfile.open(out, mode) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=prefix + path.relative_to(folder).as_posix())
    return out


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# A tiny, fast configuration for end-to-end runs on the CPU.
TINY_RUN = {"backbone": {"name": "resnet18", "small_stem": False}, "data": {"image_size": 16},
            "train": {"epochs": 2, "batch_size": 8, "progress": False}}


class Interrupted(Exception):
    """Stands in for a kill in in-process resume tests."""


def interrupted_then_resumed(user: dict, stop_after_steps: int, monkeypatch) -> tuple[dict, dict, dict]:
    """Train `user` (a nested config dict, with out=...) three ways: uninterrupted into OUT/whole;
    stopped by an exception after `stop_after_steps` steps into OUT/killed; then resumed there.
    Returns (uninterrupted checkpoint, checkpoint at the interruption, resumed checkpoint).

    The SIGKILL path itself is tested once, with subprocesses, in test_train.py; this checks in
    a fraction of the time that a method's whole state (teacher, queue, centre...) resumes."""
    from pathlib import Path

    from selfsup.config import merge_dicts
    from selfsup.train import Trainer, run_pretraining

    out = Path(user["out"])
    run_pretraining(merge_dicts(user, {"out": str(out / "whole")}))
    original_step = Trainer.step
    calls = {"n": 0}

    def step_then_stop(self, images):
        if calls["n"] == stop_after_steps:
            raise Interrupted
        calls["n"] += 1
        original_step(self, images)

    monkeypatch.setattr(Trainer, "step", step_then_stop)
    killed = merge_dicts(user, {"out": str(out / "killed")})
    try:
        run_pretraining(killed)
        raise AssertionError("the run ended before it was interrupted")
    except Interrupted:
        pass
    at_interruption = torch.load(out / "killed" / "last.pt", weights_only=True)
    monkeypatch.setattr(Trainer, "step", original_step)
    run_pretraining(killed, resume=True)
    whole = torch.load(out / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(out / "killed" / "last.pt", weights_only=True)
    return whole, at_interruption, resumed


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of two checkpoints' model, optimizer (every state entry and parameter
    group), position and the running sums of the epoch's metrics."""
    assert a["position"] == b["position"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, s1 in a["optimizer"]["state"].items():
        s2 = b["optimizer"]["state"][index]
        assert s1.keys() == s2.keys(), index
        for name in s1:
            assert torch.equal(torch.as_tensor(s1[name]), torch.as_tensor(s2[name])), (index, name)
    sums = [c.get("epoch_sums_per_rank", [c.get("epoch_sums", {})]) for c in (a, b)]
    assert len(sums[0]) == len(sums[1])
    for s1, s2 in zip(*sums):
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def log_softmax64(x) -> np.ndarray:
    """log softmax over the last axis in float64: the references of the loss tests."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def assert_onnx_gives_the_encoders_features(onnx_path: Path, encoder) -> None:
    """onnxruntime's features from the graph at `onnx_path` equal the encoder's own, on the same
    RGB images in [0, 1] normalised as the graph does."""
    ort = pytest.importorskip("onnxruntime")
    from selfsup.export import RGBInput

    size = encoder.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = RGBInput(encoder.backbone).eval()(images).numpy()
    features = ort.InferenceSession(str(onnx_path)).run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)
