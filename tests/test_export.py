"""Export and embed: weights that load into plain torchvision/timm models; normalised vectors."""
import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
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
    from selfsup.outputs import current_umask
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not safetensors' private 0600
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


def test_a_loaded_encoder_is_ready_for_inference(trained):
    """README's `load_encoder(...).backbone` used as is: BatchNorm on its running statistics, so a
    forward pass neither depends on the batch nor changes the model."""
    _, runs = trained
    for spec in (runs["resnet18"], "random:resnet18-half"):
        encoder = load_encoder(spec, 16).backbone
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        x = torch.randn(4, 3, 16, 16)
        with torch.no_grad():
            together, alone = encoder(x), encoder(x[:1])
        assert not encoder.training
        torch.testing.assert_close(together[:1], alone)
        assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


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


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """40 files of a folder: 37 PNGs of several sizes and 3 that do not decode, among them."""
    root = tmp_path_factory.mktemp("forty") / "images"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(40):
        if i in (5, 17, 33):
            (root / f"{i:03d}.png").write_bytes(b"not an image")
        else:
            side = int(rng.integers(16, 40))
            Image.fromarray(rng.integers(0, 256, (side, side + i % 5, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root, load_encoder("random:resnet18-half", 16)


def _embedded(out: Path):
    return np.load(out), (out.parent / (out.stem + ".files.txt")).read_text().splitlines()


def test_embed_streams_without_a_cache_and_agrees_with_the_cache(forty, tmp_path, monkeypatch, capsys):
    from selfsup.data import load_cache, open_source
    data, encoder = forty
    streamed = selfsup.embed_images(encoder, data, tmp_path / "s.npy", device="cpu", cache_dir=tmp_path / "none",
                                    show_progress=False, chunk_size=16)
    assert not (tmp_path / "none").exists() and not (tmp_path / "s.parts").exists()  # no cache, no parts left
    assert capsys.readouterr().err.count("skipped 3 of 40 files") == 1  # once, not once a chunk
    load_cache(open_source(data, whole=True), encoder.cache_size, tmp_path / "c", show_progress=False)
    capsys.readouterr()  # the build's own warning
    # With the cache built, nothing is decoded again: the decoders of both paths fail if called.

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr("selfsup.data.cache.decode_stream", no_decoding)
    monkeypatch.setattr("selfsup.curate.embedding.decode_stream", no_decoding)
    cached = selfsup.embed_images(encoder, data, tmp_path / "c.npy", device="cpu", cache_dir=tmp_path / "c",
                                  show_progress=False, batch_size=7)
    assert not (tmp_path / "c.parts").exists() and capsys.readouterr().err.count("skipped 3 of 40 files") == 1
    assert streamed == {**cached, "embeddings": str(tmp_path / "s.npy"), "files": str(tmp_path / "s.files.txt")}
    assert streamed["count"] == 37 and streamed["skipped"] == 3
    (s_vectors, s_names), (c_vectors, c_names) = _embedded(tmp_path / "s.npy"), _embedded(tmp_path / "c.npy")
    assert s_names == c_names == [f"{i:03d}.png" for i in range(40) if i not in (5, 17, 33)]
    assert s_vectors.dtype == c_vectors.dtype == np.float32
    np.testing.assert_allclose(s_vectors, c_vectors, atol=1e-5, rtol=0)


def test_embed_streams_where_the_cache_would_be_decoded_again(forty, tmp_path, monkeypatch):
    """A cache that load_cache would build again (damaged, or outdated by a package installed since)
    is not rebuilt in full by embed, which streams instead, writing nothing to the cache."""
    from selfsup.data import load_cache, open_source
    import selfsup.data.cache as cache_module
    data, encoder = forty
    load_cache(open_source(data, whole=True), encoder.cache_size, tmp_path / "c", show_progress=False)
    (built,) = (tmp_path / "c").iterdir()
    before = sorted(path.name for path in (tmp_path / "c").iterdir())

    def no_cache_build(*args, **kwargs):
        raise AssertionError("the cache was built again")
    monkeypatch.setattr(cache_module, "_build", no_cache_build)
    monkeypatch.setattr(cache_module, "readable_now", lambda meta: "pydicom, which reads DICOM files it skipped")
    outdated = selfsup.embed_images(encoder, data, tmp_path / "o.npy", device="cpu", cache_dir=tmp_path / "c",
                                    show_progress=False, chunk_size=16)
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "_build", no_cache_build)
    with open(built / "images.u8", "ab") as images:
        images.write(b"\0")  # a byte more than its index says: damaged
    damaged = selfsup.embed_images(encoder, data, tmp_path / "d.npy", device="cpu", cache_dir=tmp_path / "c",
                                   show_progress=False, chunk_size=16)
    assert outdated["count"] == damaged["count"] == 37
    assert sorted(path.name for path in (tmp_path / "c").iterdir()) == before


def test_embed_of_a_tar_reads_it_once_and_gives_the_folders_rows(forty, tmp_path, monkeypatch):
    """A stream of chunks read a tar from its start for each (a .tar.gz decompressed again): the
    chunks share one pass, write no cache, and give the rows in source order, as the folder's."""
    import tarfile
    from selfsup.data.sources import ImageSource
    folder, encoder = forty
    data = tmp_path / "images.tar"
    with tarfile.open(data, "w") as tar:  # archive order: the reverse of the sorted names
        for path in sorted(folder.iterdir(), reverse=True):
            tar.add(path, arcname=path.name)
    selfsup.embed_images(encoder, folder, tmp_path / "f.npy", device="cpu", cache_dir=tmp_path / "c",
                         show_progress=False, chunk_size=16)
    assert not (tmp_path / "c").exists()  # the folder streamed
    read, reads = ImageSource.read, []

    def counted(self, *args, **kwargs):
        reads.append(self.path)
        return read(self, *args, **kwargs)
    monkeypatch.setattr(ImageSource, "read", counted)
    selfsup.embed_images(encoder, data, tmp_path / "t.npy", device="cpu", cache_dir=tmp_path / "c",
                         show_progress=False, chunk_size=16)
    assert reads == [data] and not (tmp_path / "c").exists() and not (tmp_path / "t.parts").exists()
    (f_vectors, f_names), (t_vectors, t_names) = _embedded(tmp_path / "f.npy"), _embedded(tmp_path / "t.npy")
    assert f_names == t_names == [f"{i:03d}.png" for i in range(40) if i not in (5, 17, 33)]
    np.testing.assert_allclose(f_vectors, t_vectors, atol=1e-5, rtol=0)


def test_a_killed_embed_resumes_from_its_finished_chunks(forty, tmp_path, monkeypatch):
    import selfsup.curate.embedding as embedding
    data, encoder = forty
    whole = selfsup.embed_images(encoder, data, tmp_path / "whole.npy", device="cpu", cache_dir=tmp_path / "c",
                                 show_progress=False, chunk_size=16)
    embed_chunk, embedded = embedding._embed_chunk, []

    def killed_after_the_first(encoder, source, names, *args, **kwargs):
        if embedded:
            raise KeyboardInterrupt
        embedded.append(names)
        return embed_chunk(encoder, source, names, *args, **kwargs)
    monkeypatch.setattr(embedding, "_embed_chunk", killed_after_the_first)
    out = tmp_path / "out" / "e.npy"
    with pytest.raises(KeyboardInterrupt, match=r"^call embed_images again with the same arguments to go on from "
                                                 r"the 1 chunk of images embedded so far, kept in '.*e\.parts'$"):
        selfsup.embed_images(encoder, data, out, device="cpu", cache_dir=tmp_path / "c", show_progress=False,
                             chunk_size=16)
    assert not out.exists() and [p.name for p in (tmp_path / "out" / "e.parts").glob("*/*.npz")] == ["chunk-000000.npz"]

    def counted(encoder, source, names, *args, **kwargs):
        embedded.append(names)
        return embed_chunk(encoder, source, names, *args, **kwargs)
    monkeypatch.setattr(embedding, "_embed_chunk", counted)
    resumed = selfsup.embed_images(encoder, data, out, device="cpu", cache_dir=tmp_path / "c", show_progress=False,
                                   chunk_size=16)
    assert embedded[1:] == [[f"{i:03d}.png" for i in range(16, 32)], [f"{i:03d}.png" for i in range(32, 40)]]
    assert resumed["count"] == whole["count"] and resumed["skipped"] == whole["skipped"] == 3
    (w_vectors, w_names), (r_vectors, r_names) = _embedded(tmp_path / "whole.npy"), _embedded(out)
    assert r_names == w_names
    np.testing.assert_allclose(r_vectors, w_vectors, atol=1e-5, rtol=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e.files.txt", "e.npy"]  # parts removed


def test_an_embed_of_files_that_do_not_decode_leaves_no_folder_behind(tmp_path):
    """Nothing decodes: refused, and neither OUT.parts/ nor the folders made for --out are left."""
    data = tmp_path / "junk"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"not a png")
    out = tmp_path / "new" / "deeper" / "e.npy"
    with pytest.raises(selfsup.UserError, match="none of the 3 files"):
        selfsup.embed_images("random:resnet18", data, out, device="cpu", image_size=16, cache_dir=tmp_path / "c",
                             show_progress=False)
    assert not (tmp_path / "new").exists()


def test_outputs_are_checked_before_the_work_and_leave_nothing_behind(trained, tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.errors import UserError

    data, runs = trained
    (tmp_path / "file").write_text("")
    gone = tmp_path / "no-checkpoint"  # read only after the output is checked: its error must not come first
    for out, message in [(tmp_path / "file" / "x", f"cannot create {str(tmp_path / 'file')!r}"),
                         (tmp_path / "x.txt", "must end in")] + \
            ([(Path("/proc/x"), "cannot write in '/proc'")] if Path("/proc/self").is_dir() else []):
        for call in (lambda: selfsup.export_encoder(gone, out.with_suffix(out.suffix or ".safetensors")),
                     lambda: selfsup.embed_images(gone, data, out.with_suffix(out.suffix or ".npy"),
                                                  show_progress=False)):
            with pytest.raises(UserError, match=re.escape(message)):
                call()
    with pytest.raises(UserError, match="batch_size= must be at least 1, got 0"):
        selfsup.embed_images(gone, data, tmp_path / "e.npy", batch_size=0)
    assert main(["export", "--checkpoint", str(runs["resnet18"]), "--out", str(tmp_path / "enc.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must end in .safetensors" in err, err
    assert main(["embed", "--checkpoint", str(runs["resnet18"]), "--data", str(data), "--out",
                 str(tmp_path / "e.npy"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


@contextmanager
def files_limited_to(size: int):
    """Files of this process cannot grow past `size` bytes (ulimit -f): a write beyond fails as on
    a full disk, with EFBIG (Python ignores the SIGXFSZ that would otherwise end the process)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_export_on_a_full_disk_is_one_line_and_keeps_the_previous_file(trained, tmp_path, capsys):
    from selfsup.cli import main
    data, runs = trained
    out = tmp_path / "enc.safetensors"
    selfsup.export_encoder(runs["resnet18-half"], out)
    before = out.read_bytes()
    with files_limited_to(4096):  # was a SafetensorError's traceback: "File too large (os error 27)"
        assert main(["export", "--checkpoint", str(runs["resnet18-half"]), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"selfsup: error: cannot write {str(out)!r} (File too large); choose another --out\n"
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]


def test_embed_on_a_full_disk_says_why_and_keeps_the_previous_file(trained, tmp_path):
    from selfsup.errors import UserError
    from selfsup.data import load_cache, open_source
    data, runs = trained
    out = tmp_path / "emb.npy"
    # From the image cache: what fails is the write of `out`, not of a chunk of OUT.parts/.
    load_cache(open_source(data, whole=True), 16, tmp_path / "c", show_progress=False)
    selfsup.embed_images(runs["resnet18"], data, out, cache_dir=tmp_path / "c", show_progress=False)
    before = out.read_bytes()  # tens of KB: 512 floats an image
    with files_limited_to(4096), pytest.raises(UserError) as error:  # numpy's own fwrite said "(None)"
        selfsup.embed_images(runs["resnet18"], data, out, cache_dir=tmp_path / "c", show_progress=False)
    assert str(error.value) == f"cannot write {str(out)!r} (File too large); choose another `out`"
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# The small stem of timm ResNets, and what the metadata says of it


def test_timm_resnets_get_the_small_stem_and_their_weights_load_into_plain_timm(tmp_path):
    import timm
    from selfsup.backbones import build_backbone
    from selfsup.config import BackboneConfig, resolve
    from selfsup.encoder import Encoder

    # Not by default for timm models (some have deep stems that cannot take it): when asked.
    assert resolve({"backbone": {"name": "timm:resnet18"}, "data": {"image_size": 16}}).backbone.small_stem is None
    cfg = resolve({"backbone": {"name": "timm:resnet18", "small_stem": True}, "data": {"image_size": 16}})
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone, 16).eval()
    assert cfg.backbone.small_stem is True and backbone.small_stem is True
    assert (backbone.net.conv1.kernel_size, backbone.net.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(backbone.net.maxpool, nn.Identity)
    out = tmp_path / "timm.safetensors"
    assert json.loads(selfsup.export_encoder(Encoder(backbone, 16, 16, "test", cfg), out)["small_stem"]) is True
    model = timm.create_model("resnet18", num_classes=0)  # README's small-stem recipe, on timm's ResNet
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(load_file(str(out)), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), backbone(x))
        torch.testing.assert_close(load_encoder(f"weights:{out}").backbone.eval()(x), backbone(x))
    plain = build_backbone(BackboneConfig("timm:resnet18", small_stem=False), 16)
    assert plain.small_stem is False and plain.net.conv1.kernel_size == (7, 7)


def test_a_small_stem_a_timm_resnet_cannot_take_is_refused_and_others_have_none():
    from selfsup.backbones import build_backbone
    from selfsup.config import BackboneConfig
    from selfsup.errors import UserError

    with pytest.raises(UserError, match=r"timm:resnet26d has a deep stem .*; drop small_stem="):
        build_backbone(BackboneConfig("timm:resnet26d", small_stem=True), 16)
    assert build_backbone(BackboneConfig("timm:resnet26d", small_stem=False), 16).small_stem is False
    for name, patch_size in [("vit-tiny", 4), ("timm:vit_tiny_patch16_224", 4)]:
        assert build_backbone(BackboneConfig(name, small_stem=True, patch_size=patch_size), 16).small_stem is None
    assert build_backbone(BackboneConfig("resnet18-half", small_stem=True), 16).small_stem is True


def test_exported_metadata_says_small_stem_only_where_the_weights_have_one(tmp_path):
    from selfsup.backbones import build_backbone
    from selfsup.config import resolve
    from selfsup.encoder import Encoder

    import dataclasses
    cfg = resolve({"backbone": {"name": "vit-tiny"}, "data": {"image_size": 16}})
    # The flag on a ViT is refused now; a checkpoint written before could carry it.
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, small_stem=True))
    vit = Encoder(build_backbone(cfg.backbone, 16), 16, 16, "test", cfg)
    assert json.loads(selfsup.export_encoder(vit, tmp_path / "vit.safetensors")["small_stem"]) is None
    random_resnet = load_encoder("random:resnet18-half", 16)  # no run config, a small stem all the same
    assert json.loads(selfsup.export_encoder(random_resnet, tmp_path / "half.safetensors")["small_stem"]) is True


def test_vit_weights_made_at_another_image_size_have_their_positions_resampled(tmp_path):
    """A plain timm ViT file made at 224 pixels (14x14 patches) used at 32 (2x2): the class
    token's position is kept, the grid is resampled (a constant grid stays constant)."""
    import timm
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    with torch.no_grad():
        net.pos_embed[:, 1:] = torch.linspace(-1, 1, 192)  # the same vector at every grid position
    torch.save(net.state_dict(), tmp_path / "vit224.pt")
    encoder = load_encoder(f"weights:{tmp_path / 'vit224.pt'}", image_size=32, backbone="timm:vit_tiny_patch16_224")
    positions = encoder.backbone.net.pos_embed.detach()
    assert positions.shape == (1, 1 + 2 * 2, 192)
    torch.testing.assert_close(positions[:, 0], net.pos_embed[:, 0].detach())
    torch.testing.assert_close(positions[:, 1:], torch.linspace(-1, 1, 192).expand(1, 4, 192), atol=1e-5, rtol=0)
    assert encoder.backbone(torch.rand(2, 3, 32, 32)).shape == (2, 192)


def test_weights_keep_the_architecture_their_export_records(trained, tmp_path, capsys):
    # An exported file says what it holds: another --backbone is refused by name, and a plain
    # weights file embeds with the --backbone that `embed` now takes.
    import torch
    from selfsup.cli import main
    from selfsup.errors import UserError
    data, runs = trained
    exported = tmp_path / "half.safetensors"
    assert main(["export", "--checkpoint", str(runs["resnet18-half"]), "--out", str(exported)]) == 0
    with pytest.raises(UserError, match=r"holds a resnet18-half \(written by selfsup export, which records it\); "
                                        r"drop backbone='resnet18'$"):
        load_encoder(f"weights:{exported}", backbone="resnet18")
    plain = tmp_path / "plain.pt"
    torch.save(load_encoder(runs["resnet18"]).backbone.net.state_dict(), plain)
    capsys.readouterr()
    # At the images' training size: without --image-size a plain file embeds at 224 pixels, and this
    # small-stem ResNet-18 at 224 took 40 s of the test on 2 cores; the check is of --backbone.
    assert main(["embed", "--checkpoint", f"weights:{plain}", "--backbone", "resnet18", "--image-size", "16",
                 "--data", str(data), "--out", str(tmp_path / "plain.npy"), "--no-progress"]) == 0
    assert np.load(tmp_path / "plain.npy").shape[1] == 512
    # export writes a plain file with the metadata that rebuilds it: loaded again without --backbone
    assert main(["export", "--checkpoint", f"weights:{plain}", "--backbone", "resnet18", "--image-size", "16",
                 "--out", str(tmp_path / "plain.safetensors")]) == 0
    converted, x = load_encoder(f"weights:{tmp_path / 'plain.safetensors'}"), torch.rand(2, 3, 16, 16)
    assert (converted.backbone.name, converted.image_size) == ("resnet18", 16)
    with torch.no_grad():
        torch.testing.assert_close(converted.backbone(x), load_encoder(runs["resnet18"]).backbone(x))
    assert main(["embed", "--checkpoint", str(runs["resnet18"]), "--backbone", "resnet50", "--data", str(data),
                 "--out", str(tmp_path / "other.npy"), "--no-progress"]) == 2
    assert "holds a resnet18, not a resnet50" in capsys.readouterr().err
    # Refused where every command loads its encoder (curate too), not only by eval and embed.
    with pytest.raises(UserError, match="'random:resnet18' holds a resnet18, not a resnet50"):
        load_encoder("random:resnet18", backbone="resnet50")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet18-half"])
def test_an_onnx_export_takes_rgb_in_0_1_for_any_batch_and_gives_the_encoders_features(trained, tmp_path, capsys,
                                                                                         backbone):
    """Runtimes without PyTorch: the graph normalises as training did, so its users feed pixels
    in [0, 1]; checked with onnxruntime against the encoder on the normalised images."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from selfsup.cli import main
    from selfsup.views import IMAGENET_MEAN, IMAGENET_STD

    run = trained[1][backbone]
    out = tmp_path / "encoder.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    encoder = load_encoder(run)
    session = ort.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == ["images"] and written["out"] == str(out)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["image_size"] == str(encoder.image_size) and meta["backbone"] == encoder.backbone.name
    for batch in (1, 5):
        images = torch.rand(batch, 3, encoder.image_size, encoder.image_size, generator=torch.Generator().manual_seed(batch))
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            expected = encoder.backbone.eval()((images - mean) / std).numpy()
        features = session.run(None, {"images": images.numpy()})[0]
        assert features.shape == (batch, encoder.backbone.feature_dim)
        np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)


def test_an_onnx_export_without_its_packages_says_what_to_install(trained, tmp_path, monkeypatch):
    import sys

    from selfsup.errors import UserError
    from selfsup.export import export_encoder

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(UserError, match=r"pip install 'selfsup\[onnx\]'"):
        export_encoder(trained[1]["resnet18"], tmp_path / "encoder.onnx")
    assert not (tmp_path / "encoder.onnx").exists()


def test_a_vit_exports_to_onnx_with_its_class_token_features(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from conftest import assert_onnx_gives_the_encoders_features
    from selfsup.export import export_encoder

    encoder = load_encoder("random:vit-tiny", 32)
    export_encoder(encoder, tmp_path / "vit.onnx")
    assert_onnx_gives_the_encoders_features(tmp_path / "vit.onnx", encoder)


def test_export_out_names_the_onnx_suffix_and_a_folder_named_onnx_takes_the_safetensors(trained, tmp_path, capsys):
    from selfsup.cli import main

    assert main(["export", "--checkpoint", str(trained[1]["resnet18"]), "--out", str(tmp_path / "e.pt")]) == 2
    assert "must end in .safetensors or .onnx, or name a folder" in capsys.readouterr().err
    (tmp_path / "d.onnx").mkdir()
    assert main(["export", "--checkpoint", str(trained[1]["resnet18"]), "--out", str(tmp_path / "d.onnx")]) == 0
    assert (tmp_path / "d.onnx" / "encoder.safetensors").is_file()


def test_onnx_export_on_a_torch_without_its_exporter_is_one_line(trained, tmp_path, monkeypatch):
    from selfsup.errors import UserError
    from selfsup.export import export_encoder

    monkeypatch.setattr(torch, "__version__", "2.4.1")
    with pytest.raises(UserError, match=r"needs torch 2.6 or newer .* this is torch 2.4.1"):
        export_encoder(trained[1]["resnet18"], tmp_path / "e.onnx")


def test_a_random_encoder_is_exported_at_the_size_given_and_without_one_says_it_took_224(trained, tmp_path, capsys):
    """Export has no images to size a random: encoder by, as eval and embed do: it was drawn at
    224 px (with the ImageNet stem) without a word, and the size went into the file."""
    from selfsup.cli import main
    from selfsup.errors import UserError
    from selfsup.weights import exported_settings, read_weights

    capsys.readouterr()
    default = selfsup.export_encoder("random:resnet18", tmp_path / "default.safetensors")
    assert (default["image_size"], default["small_stem"]) == ("224", "false")
    assert capsys.readouterr().err == ("warning: random:resnet18 is exported at 224 px, the default: export has no "
                                       "images to take its size from (eval and embed draw it at theirs); give "
                                       "image_size=N for images of another size\n")
    assert main(["export", "--checkpoint", "random:resnet18", "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert "give --image-size N for images of another size" in capsys.readouterr().err
    assert main(["export", "--checkpoint", "random:resnet18", "--image-size", "32", "--out",
                 str(tmp_path / "small.safetensors"), "--json"]) == 0
    said = capsys.readouterr()
    printed = json.loads(said.out)  # values as such, not the file's text
    assert said.err == "" and (printed["image_size"], printed["small_stem"], printed["patch_size"]) == (32, True, None)
    assert (printed["feature_dim"], printed["backbone"], printed["bands"]) == (512, "resnet18", None)
    assert printed["mean"] == pytest.approx([0.485, 0.456, 0.406])
    settings = exported_settings(read_weights(tmp_path / "small.safetensors")[1])
    assert (settings["image_size"], settings["small_stem"]) == (32, True)  # what weights:FILE is loaded at
    assert selfsup.export_encoder("random:resnet18", tmp_path / "big.safetensors", image_size=96,
                                  small_stem=True)["small_stem"] == "true"
    _, runs = trained
    with pytest.raises(UserError, match=r"^image_size= is for random: and weights: encoders; .* is exported at the "
                                        r"size it was trained at: leave it out$"):
        selfsup.export_encoder(runs["resnet18"], tmp_path / "run.safetensors", image_size=32)
    assert not (tmp_path / "run.safetensors").exists()


def test_an_exported_encoder_evaluated_as_weights_has_its_checkpoints_weights_sha256(trained, tmp_path):
    """A weights: record held only its file's SHA-256, which no checkpoint's record holds: a run's
    export evaluated as weights:FILE could not be matched with the run. Both records hold the
    SHA-256 of the weights evaluated, equal for the two and not for another file."""
    from selfsup.eval import evaluate_knn

    data, runs = trained
    exported, other = tmp_path / "encoder.safetensors", tmp_path / "other.safetensors"
    selfsup.export_encoder(runs["resnet18"], exported)
    selfsup.export_encoder("random:resnet18", other, image_size=16, small_stem=True)
    common = dict(train=data, test=data, k=3, device="cpu", show_progress=False, record=False)
    of_checkpoint = evaluate_knn(str(runs["resnet18"]), **common)
    of_export = evaluate_knn(f"weights:{exported}", **common)
    of_other = evaluate_knn(f"weights:{other}", **common)
    assert "checkpoint_sha256" in of_checkpoint and "weights_file_sha256" in of_export
    assert of_export["encoder_weights_sha256"] == of_checkpoint["encoder_weights_sha256"]
    assert of_other["encoder_weights_sha256"] != of_checkpoint["encoder_weights_sha256"]
    assert of_export["top1"] == of_checkpoint["top1"]
