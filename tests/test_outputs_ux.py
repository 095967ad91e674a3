"""What users see of outputs: where --out files land, what a wrong file gets told, what pictures show."""
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import selfsup
from selfsup.cli import main
from selfsup.encoder import load_encoder
from selfsup.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import write_dataset
    root = tmp_path_factory.mktemp("ux")
    data = write_dataset(root / "data", per_class=4, size=16)
    run = selfsup.pretrain(data=data, out=root / "run", epochs=1, batch_size=8, image_size=16,
                           backbone="resnet18-half", show_progress=False)
    return data, run.checkpoint


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A current folder apart from --out, to see that nothing is written there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# ---------------------------------------------------------------------------------------------
# selfsup embed / export: --out as a folder, and suffixes that other tools would reject


@pytest.mark.parametrize("existing", [True, False])
def test_embed_into_a_folder_writes_inside_it(trained, tmp_path, elsewhere, existing):
    data, checkpoint = trained
    folder = tmp_path / "out"
    if existing:
        folder.mkdir()
    out = str(folder) if existing else str(folder) + "/"
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(data), "--out", out, "--no-progress"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.files.txt", "embeddings.npy"]
    assert np.load(folder / "embeddings.npy").shape[0] == len((folder / "embeddings.files.txt").read_text().split())
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("name", ["emb.txt", "emb"])
def test_embed_refuses_a_file_name_not_ending_in_npy(trained, tmp_path, capsys, name):
    data, checkpoint = trained
    with pytest.raises(UserError, match=r"must end in \.npy, or name a folder"):
        selfsup.embed_images(checkpoint, data, tmp_path / name, show_progress=False)
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / name)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_name_not_ending_in_safetensors(trained, tmp_path, capsys):
    _, checkpoint = trained
    with pytest.raises(UserError, match=r"must end in \.safetensors"):
        selfsup.export_encoder(checkpoint, tmp_path / "enc.pt")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "enc.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".safetensors" in err
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_folder_writes_encoder_safetensors(trained, tmp_path, elsewhere):
    _, checkpoint = trained
    (tmp_path / "out").mkdir()
    for out, folder in [(tmp_path / "out", tmp_path / "out"), (str(tmp_path / "new") + "/", tmp_path / "new")]:
        meta = selfsup.export_encoder(checkpoint, out)
        assert meta["out"] == str(folder / "encoder.safetensors") and meta["backbone"] == "resnet18-half"
        assert "conv1.weight" in load_file(str(folder / "encoder.safetensors"))
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# weights:FILE given a selfsup checkpoint


def test_a_selfsup_checkpoint_given_as_weights_is_named_as_such(trained, monkeypatch):
    _, checkpoint = trained
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(UserError) as caught:
        load_encoder(f"weights:{checkpoint}", backbone="resnet18-half")
    message = str(caught.value)
    assert "is a selfsup checkpoint" in message and f"without weights: ({str(checkpoint)!r})" in message
    assert "--backbone" not in message and "missing" not in message
    assert loads == [True]  # still read without unpickling anything but tensors
    assert load_encoder(checkpoint).backbone.name == "resnet18-half"  # as it says: without weights:


# ---------------------------------------------------------------------------------------------
# Pictures: MAE's column titles and its fixed images; similarities of near-duplicates


def test_image_grid_titles_its_columns_in_a_band_above(tmp_path):
    from selfsup.viz import TITLE_HEIGHT, save_image_grid

    rows = [torch.ones(3, 3, 32, 32) for _ in range(2)]  # white images: only the titles are dark
    plain = np.asarray(Image.open(save_image_grid(rows, tmp_path / "a.png")))
    titled = np.asarray(Image.open(save_image_grid(rows, tmp_path / "b.png", titles=["x", "y", "z"])))
    assert titled.shape == (plain.shape[0] + TITLE_HEIGHT, plain.shape[1], 3)
    np.testing.assert_array_equal(titled[TITLE_HEIGHT:], plain)
    width = 96 + 2
    for c in range(3):
        assert (titled[:TITLE_HEIGHT, c * width:(c + 1) * width - 2] < 128).any(), f"no title over column {c}"


def test_a_grid_puts_each_image_in_its_own_cell_and_frames_the_marked_one():
    """The one canvas every grid picture is drawn on (cluster, search, select, curate, report):
    each image, enlarged, exactly where its cell says, no two cells overlapping, and a marked
    image's frame round it (and none round the others), whatever the lines written over them."""
    from selfsup.viz import Cell, GridLayout, picture_grid

    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)] for n in (3, 2, 3)]
    images[2][1] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # not a whole factor of the cell: resized
    red = (255, 0, 0)
    rows = [[Cell(image, ("a/very/long/name/of/a/file.png", "cos 0.99"), red if (r, c) == (1, 1) else None)
             for c, image in enumerate(row)] for r, row in enumerate(images)]
    layout = GridLayout(side=32, lines=2, above=True, frame=3, room=10, gap=4, band=20)
    canvas = np.asarray(picture_grid(rows, layout, title="t"))
    assert layout.image(1, 2) == (2 * 52 + 5 + 3, 20 + 66 + 3 + 24)  # cells of 48 x 62 px, 4 apart, below the band
    assert canvas.shape == (20 + 3 * 66 - 4, 3 * 52 - 4, 3)
    boxes = []
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            x, y = layout.image(r, c)
            expected = (image.repeat(2, axis=0).repeat(2, axis=1) if image.shape[0] == 16 else
                        np.asarray(Image.fromarray(image).resize((32, 32), Image.NEAREST)))
            np.testing.assert_array_equal(canvas[y:y + 32, x:x + 32], expected, err_msg=f"row {r}, cell {c}")
            ring = np.concatenate([canvas[y - 3:y, x - 3:x + 35].reshape(-1, 3), canvas[y + 32:y + 35, x - 3:x + 35]
                                   .reshape(-1, 3), canvas[y:y + 32, x - 3:x].reshape(-1, 3),
                                   canvas[y:y + 32, x + 32:x + 35].reshape(-1, 3)])
            assert (ring == (red if (r, c) == (1, 1) else 255)).all(), f"row {r}, cell {c}'s frame"
            boxes.append((x - 3, y - 3 - 24, x + 35, y + 35))  # the framed image and its lines above
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and 20 <= a[1] and a[2] <= canvas.shape[1] and a[3] <= canvas.shape[0]
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_draw_rows_shows_each_decoded_image_in_its_cell_and_marks_the_first(tmp_path):
    """cluster's, search's, select's and curate's pictures: each file's pixels (64 px, drawn at
    128) in its row and column, and with first_marked the first of each row framed in MARK."""
    from selfsup.curate.pictures import CELL, draw_rows
    from selfsup.viz import MARK

    rng = np.random.default_rng(1)
    files = {f"c/{i}.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(5)}

    class Source:
        def read(self, names):
            for name in names:
                buffer = io.BytesIO()
                Image.fromarray(files[name]).save(buffer, format="PNG")
                yield name, buffer.getvalue()

    source, names = Source(), list(files)
    rows = [[(source, names[0], "query"), (source, names[1], "cos 0.90")], [(source, n) for n in names[2:]]]
    picture = np.asarray(Image.open(draw_rows(rows, tmp_path / "rows.png", "title", first_marked=True)))
    f = CELL.frame
    assert CELL.image(1, 2) == (2 * 152 + 7 + 3, 26 + 162 + 3 + 24)  # cells of 148 x 158 px, 4 apart, below the title
    for r, row in enumerate(rows):
        for c, (_, name, *_) in enumerate(row):
            x, y = CELL.image(r, c)
            np.testing.assert_array_equal(picture[y:y + 128, x:x + 128], files[name].repeat(2, 0).repeat(2, 1))
            assert (picture[y - f:y, x - f:x + 128 + f] == (MARK if c == 0 else 255)).all(), (r, c)


def test_names_beyond_ascii_are_drawn_as_their_letters(tmp_path):
    """PIL's default font drew 'Ödem' exactly as '□dem' (a box for its missing letter): the
    report's neighbour captions and the grids' column titles use DejaVu Sans, which matplotlib ships."""
    from selfsup.report.figures import neighbour_grid
    from selfsup.viz import save_image_grid, text_font

    def grid(name):
        images = np.full((2, 8, 8, 3), 200, np.uint8)
        return np.asarray(Image.open(io.BytesIO(neighbour_grid(images[:1], np.zeros(1, int), images, np.array([[0, 1]]),
                                                               np.zeros(2, int), [name]))))

    def titled(name):
        return np.asarray(Image.open(save_image_grid([torch.ones(1, 3, 32, 32)], tmp_path / "t.png", titles=[name])))

    for draw in (grid, titled):
        oe = draw("Ödem")
        assert all((oe != draw(other)).any() for other in ("□dem", "?dem", "Odem")), draw.__name__

    def glyph(letter):
        image = Image.new("L", (20, 20), 255)
        ImageDraw.Draw(image).text((2, 2), letter, font=text_font(11), fill=0)
        return np.asarray(image)
    missing = glyph("\U0010FFFD")  # no font has it: the font's box
    assert all((glyph(letter) != missing).any() for letter in "ÖéßĞЖ")


def test_a_caption_too_wide_for_its_cell_is_cut_to_the_longest_start_that_fits():
    """The report's neighbour grid captions each picture with its class: a long class name ran
    across the pictures beside it."""
    from selfsup.viz import fitted, text_font

    draw, font = ImageDraw.Draw(Image.new("L", (10, 10))), text_font(10)
    name = "a_very_long_class_name_of_some_dataset"
    cut = fitted(draw, name, font, 40)
    assert name.startswith(cut) and 0 < len(cut) < len(name) and draw.textlength(cut, font=font) <= 40
    assert draw.textlength(name[:len(cut) + 1], font=font) > 40  # the longest start that fits
    assert fitted(draw, "ab", font, 40) == "ab"


def test_figures_print_no_missing_glyph_lines(tmp_path):
    """A CJK class or file name is a box in DejaVu Sans; matplotlib warned once per letter."""
    import warnings

    from selfsup.curate.pictures import draw_rows
    from selfsup.report.figures import embedding_map

    class Unreadable:
        def read(self, names):
            return iter(())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw_rows([[(Unreadable(), "结节/患者_01.png")]], tmp_path / "rows.png", "结节")
        embedding_map(np.random.default_rng(0).normal(size=(6, 2)), np.array([0, 0, 0, 1, 1, 1]), ["结节", "Ödem"],
                      "t-SNE")
    assert (tmp_path / "rows.png").stat().st_size > 0
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]


def test_mae_pictures_have_column_titles(tmp_path):
    from selfsup.config import resolve
    from selfsup.methods import build_method
    from selfsup.methods.common import Batch
    from selfsup.viz import TITLE_HEIGHT

    cfg = resolve({"method": "mae", "backbone": {"name": "vit-tiny", "patch_size": 4}, "data": {"image_size": 16},
                   "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}})
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        method.save_pictures(Batch(images, torch.Generator().manual_seed(0)), tmp_path)
    picture = np.asarray(Image.open(tmp_path / "pictures.png").convert("RGB"))
    assert picture.shape[:2] == (TITLE_HEIGHT + 8 * 98 - 2, 3 * 98 - 2)  # 8 rows x 3 images of 96 px
    header = picture[:TITLE_HEIGHT]
    assert all((header[:, c * 98:c * 98 + 96] < 128).any() for c in range(3))


def test_evenly_spaced_spans_the_items_and_is_fixed():
    from selfsup.viz import evenly_spaced

    picked = evenly_spaced(np.arange(100), 8)
    assert picked.tolist() == [0, 14, 28, 42, 57, 71, 85, 99]
    assert evenly_spaced(np.arange(5, 10), 8).tolist() == [5, 6, 7, 8, 9]


def test_method_pictures_show_images_from_across_the_dataset():
    from selfsup.train import Trainer

    shown = []
    method = SimpleNamespace(save_pictures=lambda batch, out: shown.extend(batch.images[:, 0, 0, 0].tolist()),
                             training=False, eval=lambda: None, train=lambda mode: None)
    images = np.arange(100, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    trainer = SimpleNamespace(method=method, holdout_idx=np.arange(0, 100, 2), train_idx=np.arange(1, 100, 2),
                              cache=SimpleNamespace(images=images), device=torch.device("cpu"),
                              cfg=SimpleNamespace(method="simclr", method_config=None,
                                                  train=SimpleNamespace(precision="fp32")), out=Path("."))
    Trainer.save_pictures(trainer)
    assert shown[0] == 0 and shown[-1] == 98 and len(shown) == 8  # the first and last held-out images


def test_kept_similarities_are_each_copy_against_the_kept_image():
    from selfsup.curate.dedup import duplicate_groups, kept_similarities

    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    vectors = np.concatenate([base, base[:1] + 0.05 * rng.normal(size=(2, 16))])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = duplicate_groups(vectors, 0.9)
    assert groups == [[0, 3, 4]]
    sims = kept_similarities(vectors, groups)
    np.testing.assert_allclose(sims[0], [1.0, vectors[3] @ vectors[0], vectors[4] @ vectors[0]], rtol=1e-6)
    assert all(0.9 <= s <= 1.0 + 1e-6 for s in sims[0])


def test_a_line_cut_short_in_the_run_logs_is_skipped_and_the_next_lands_on_its_own(trained, tmp_path):
    """metrics.jsonl or evals.jsonl cut short (a full disk, a kill mid-write, a hand edit): --resume
    and report read on (they gave a JSONDecodeError traceback), and the next record is kept (it was
    glued to the cut line, and lost)."""
    import shutil
    from selfsup.eval.record import read_evals
    from selfsup.train import read_metrics
    data, checkpoint = trained
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 4, "lo')
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 0  # finished: says so
    assert selfsup.build_report([run], tmp_path / "r.html", show_progress=False).is_file()
    (run / "evals.jsonl").write_text('{"time": "x", "che')
    assert main(["eval", "knn", "--checkpoint", str(run), "--train", str(data), "--test", str(data), "--k", "3",
                 "--no-progress"]) == 0
    assert [r["protocol"] for r in read_evals(run)] == ["knn"]


@pytest.mark.parametrize("text", ["method: simclr\ntrain: {epochs: ", "!!python/object/apply:os.system ['true']\n",
                                  "- a list\n"])
def test_a_config_yaml_that_cannot_be_read_is_a_note_in_the_report(trained, tmp_path, text):
    import shutil
    _, checkpoint = trained
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    (run / "config.yaml").write_text(text)
    page = selfsup.build_report([run], tmp_path / "r.html", show_progress=False).read_text()
    assert "config.yaml cannot be read as a run config" in page


def test_an_atomic_write_does_not_follow_a_link_planted_under_a_guessable_name(tmp_path):
    """In a folder others can write to (a shared cache), a link named like the temporary file
    must not redirect the write onto the file it points at."""
    import os
    from selfsup.outputs import atomic_path
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for guess in (f".result.json.{os.getpid()}.tmp", f".result.json.{os.getpid()}.x.tmp"):
        (tmp_path / guess).symlink_to(victim)
    with atomic_path(tmp_path / "result.json") as tmp:
        tmp.write_text("{}")
    assert victim.read_text() == "keep me" and (tmp_path / "result.json").read_text() == "{}"


def test_a_write_error_without_a_reason_is_told_by_its_message_and_no_room_by_its_remedy(tmp_path):
    import errno
    from selfsup.outputs import atomic_path
    with pytest.raises(UserError) as error, atomic_path(tmp_path / "e.npy"):
        raise OSError("3200 requested and 992 written")  # as numpy's fwrite raises it: no errno, no strerror
    assert str(error.value) == (f"cannot write {str(tmp_path / 'e.npy')!r} (3200 requested and 992 written); "
                                "choose another `out`")  # from Python: the keyword
    with pytest.raises(UserError) as error, atomic_path(tmp_path / "e.npy"):
        raise OSError(errno.ENOSPC, None)  # an errno alone
    assert "(No space left on device); free space there or choose another `out`" in str(error.value)
    assert list(tmp_path.iterdir()) == []
