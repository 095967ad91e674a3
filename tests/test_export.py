"""Export and embed: weights that load into plain torchvision/timm models; normalised vectors."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import selfsup
from selfsup.encoder import load_encoder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import write_dataset
    root = tmp_path_factory.mktemp("export")
    data = write_dataset(root / "data", per_class=8)
    runs = {}
    for backbone, small_stem in [("resnet18", True), ("resnet18-half", False)]:
        runs[backbone] = selfsup.pretrain(data=data, out=root / backbone, epochs=1, batch_size=8, image_size=16,
                                          backbone=backbone, small_stem=small_stem, show_progress=False).checkpoint
    return data, runs


def test_exported_resnet_loads_into_plain_torchvision(trained, tmp_path):
    import torchvision
    _, runs = trained
    out = tmp_path / "encoder.safetensors"
    selfsup.export_encoder(runs["resnet18"], out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "resnet18" and json.loads(meta["small_stem"]) is True
    # The recipe from README.md, with no selfsup code:
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(load_file(str(out)), strict=True)
    encoder = load_encoder(runs["resnet18"]).backbone
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), encoder.eval()(x))


def test_exported_half_resnet_loads_into_plain_timm(trained, tmp_path):
    import timm
    _, runs = trained
    out = tmp_path / "half.safetensors"
    selfsup.export_encoder(runs["resnet18-half"], out)
    model = timm.create_model("resnet18", num_classes=0, channels=(32, 64, 128, 256), stem_width=32)
    model.load_state_dict(load_file(str(out)), strict=True)
    encoder = load_encoder(runs["resnet18-half"]).backbone
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), encoder.eval()(x))


def test_embed_writes_unit_vectors_and_the_file_list(trained, tmp_path):
    data, runs = trained
    (data / "circle" / "broken.jpg").write_bytes(b"not an image")
    result = selfsup.embed_images(runs["resnet18"], data, tmp_path / "emb.npy", device="cpu", show_progress=False)
    vectors = np.load(tmp_path / "emb.npy")
    names = (tmp_path / "emb.files.txt").read_text().splitlines()
    assert vectors.shape == (24, 512) and vectors.dtype == np.float32 and len(names) == 24
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert result["skipped"] == 1 and "circle/broken.jpg" not in names
    assert names[0] == "circle/000.png"
