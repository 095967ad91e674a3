"""What the command line says to a person: one-line errors (argparse's included), start and end
lines that read as sentences, and no empty folder left by a refused start."""
import contextlib
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfsup.cli import main
from selfsup.config import merge_dicts
from selfsup.errors import UserError
from selfsup.train import Trainer, run_pretraining

from conftest import TINY_RUN, Interrupted


def run(*args):
    """main() in this process: (status, stdout, stderr), argparse's exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), proc.stderr
    return lines[0]


def tiny_flags(data, out):
    return ["--data", data, "--out", out, "--backbone", "resnet18", "--no-small-stem", "--epochs", "1",
            "--batch-size", "8", "--image-size", "16", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("args, says", [
    (["eval", "kNN", "--checkpoint", "x"], "invalid choice 'kNN' (did you mean 'knn'?)"),
    (["pretrain", "--epochs", "two", "--out", "x"], "argument --epochs: invalid int value: 'two'"),
    (["pretrain", "--optimizer", "Adam", "--out", "x"], "(did you mean 'adamw'?); valid: sgd, lars, adamw"),
    (["pretrain", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["pretrain"], "the following arguments are required: --out"),
    (["pretrain", "--out", "x", "--bands", "4,3"],
     "argument --bands: takes three band numbers from 1 (red, green, blue, e.g. 4,3,2) or one (gray), not '4,3'"),
    (["embed", "--checkpoint", "x", "--data", "d", "--out", "e", "--bands", "0"], "not '0'"),
    (["eval", "knn", "--checkpoint", "x", "--bands", "red"], "not 'red'"),
])
def test_argparse_errors_are_one_line_with_the_help_to_read(args, says):
    line = one_error_line(run(*args))
    assert says in line and line.endswith(f"; see selfsup {args[0]} --help")


def test_a_mistyped_method_is_found_whatever_its_case(labelled_folder, tmp_path):
    line = one_error_line(run("pretrain", "--method", "SimCLR", "--data", labelled_folder, "--out", tmp_path / "r"))
    assert "did you mean 'simclr'?" in line


def test_start_monitor_and_done_lines_and_resuming_a_finished_run(labelled_folder, tmp_path):
    out = tmp_path / "run"
    proc = run("pretrain", *tiny_flags(labelled_folder, out))
    assert proc.returncode == 0, proc.stderr
    start, monitor = proc.stderr.splitlines()[:2]
    assert ", resnet18 at 16 px, 1 epoch x 4 steps of 8," in start
    assert monitor == "monitor: kNN on 1 held-out image (5 %, not pretrained on), 3 classes from subfolders " \
                      "(circle, square, stripes)"
    assert proc.stdout.startswith("done: epoch 1, loss ") and "{" not in proc.stdout
    assert proc.stdout.rstrip().endswith(f"checkpoint {out / 'last.pt'}")

    again = run("pretrain", "--out", out, "--resume")  # progress bars on: none may start
    assert again.returncode == 0, again.stderr
    assert again.stderr == (f"selfsup: {out} already finished its 1 epoch; to train longer, start a new run: "
                            f"selfsup pretrain --config {out / 'config.yaml'} --epochs MORE --out NEW_DIR\n")
    longer = one_error_line(run("pretrain", "--out", out, "--resume", "--epochs", "3"))
    assert longer.endswith(f"train.epochs cannot change (saved 1, given 3); to train for 3 epochs, start a new "
                           f"run: selfsup pretrain --config {out / 'config.yaml'} --epochs 3 --out NEW_DIR")
    assert json.loads(run("pretrain", "--out", out, "--resume", "--json").stdout)["epoch"] == 1


def test_a_resumed_run_says_where_it_continues(labelled_folder, tmp_path, monkeypatch, capsys):
    user = merge_dicts(TINY_RUN, {"data": {"path": str(labelled_folder)}, "out": str(tmp_path / "run")})
    original_step, steps = Trainer.step, []

    def step_then_stop(self, images):  # a kill one step into the second epoch
        if len(steps) == 5:
            raise Interrupted
        steps.append(1)
        original_step(self, images)

    monkeypatch.setattr(Trainer, "step", step_then_stop)
    with pytest.raises(Interrupted):
        run_pretraining(user)
    monkeypatch.setattr(Trainer, "step", original_step)
    capsys.readouterr()
    run_pretraining(user, resume=True)
    assert f"selfsup: resuming {tmp_path / 'run'} at epoch 2 of 2 (step 4 of 8)\n" in capsys.readouterr().err


def test_a_refused_start_leaves_no_empty_run_folder(labelled_folder, tmp_path):
    missing = tmp_path / "missing"
    new = tmp_path / "new" / "run"
    with pytest.raises(UserError, match="does not exist"):
        run_pretraining(merge_dicts(TINY_RUN, {"data": {"path": str(missing)}, "out": str(new)}))
    assert not (tmp_path / "new").exists()  # nor the parent this command made
    with pytest.raises(UserError, match="larger than the"):
        run_pretraining(merge_dicts(TINY_RUN, {"data": {"path": str(labelled_folder)}, "out": str(new),
                                               "train": {"batch_size": 64}}))
    assert not (tmp_path / "new").exists()
    mine, kept = tmp_path / "mine", tmp_path / "kept"
    mine.mkdir()
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (mine, kept / "run"):
        with pytest.raises(UserError, match="does not exist"):
            run_pretraining(merge_dicts(TINY_RUN, {"data": {"path": str(missing)}, "out": str(out)}))
    assert mine.is_dir() and (kept / "notes.txt").read_text() == "mine" and not (kept / "run").exists()


def test_a_refused_pretrain_shows_its_error_alone_and_a_valid_one_every_warning(labelled_folder, tmp_path):
    """A warning read just before the error that ends the command is noise: the error comes alone."""
    # --lr 0 warns while the config is resolved; --data, checked later, is refused.
    one_error_line(run("pretrain", *tiny_flags(tmp_path / "nowhere", tmp_path / "a"), "--lr", "0"))
    one_error_line(run("pretrain", *tiny_flags(labelled_folder, labelled_folder / "run"), "--lr", "0"))  # out in data
    one_error_line(run("pretrain", *tiny_flags(labelled_folder, tmp_path / "b"), "--lr", "0",
                       "--set", "train.compile_mode=max-autotune"))  # refused after resolution
    # 24-pixel images at 48 px warn once they are decoded; a batch larger than the images is refused after.
    line = one_error_line(run("pretrain", *tiny_flags(labelled_folder, tmp_path / "c"), "--image-size", "48",
                              "--batch-size", "64"))
    assert "is larger than the" in line
    proc = run("pretrain", *tiny_flags(labelled_folder, tmp_path / "d"), "--lr", "0", "--image-size", "48")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and "learning rate is 0" in warnings[0] and "mostly 24 px" in warnings[1]
    assert proc.stderr.index("learning rate is 0") < proc.stderr.index("mostly 24 px") < proc.stderr.index("selfsup: ")


def test_a_warning_names_the_flag_in_a_command_and_the_keyword_in_python(split_folder, capsys):
    """'use --seeds' means nothing to a caller of selfsup.evaluate_knn, who passes seeds=."""
    from selfsup import console, evaluate_knn, provenance

    options = {"image_size": 16, "small_stem": False, "k": 5, "device": "cpu", "show_progress": False}
    evaluate_knn("random:resnet18", data=split_folder, seeds=2, **options)
    assert "(seeds= draws label subsets, with fraction= or per_class=)" in capsys.readouterr().err
    proc = run("eval", "knn", "--checkpoint", "random:resnet18", "--data", split_folder, "--seeds", 2,
               "--image-size", 16, "--no-small-stem", "--k", 5, "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "(--seeds draws label subsets, with --fraction or --per-class)" in proc.stderr
    assert console.setting("optim.warmup_epochs", "N") == "config={'optim': {'warmup_epochs': N}}"
    assert console.option("bands", (4, 3, 2)) == "bands=(4, 3, 2)" and console.option("k", python="ks") == "ks="
    assert console.option("subset", Path("to-label/x.csv")) == "subset='to-label/x.csv'"  # not PosixPath(...)
    provenance.COMMAND = ["selfsup", "pretrain"]
    try:
        assert console.setting("optim.warmup_epochs", "N") == "--set optim.warmup_epochs=N"
        assert console.option("bands", (4, 3, 2)) == "--bands 4,3,2" and console.option("k", python="ks") == "--k"
        assert console.option("subset", Path("to-label/x.csv")) == "--subset to-label/x.csv"
    finally:
        provenance.COMMAND = None


def test_an_option_named_as_a_thing_or_inside_a_dict_reads_as_python_writes_it():
    """'choose another out=' read as a value left out; a curve's protocol settings are keys of its
    protocol_options, not keywords."""
    from selfsup import console, provenance

    assert console.named_option("out") == "`out`" and console.named_option("batch_size") == "`batch_size`"
    assert console.option("lr", 0.1, python=("config", "lr")) == "config={'lr': 0.1}"
    assert console.option("lr", python=("config", "lr")) == "config['lr']"
    assert console.protocol_option("val_fraction", 0) == "val_fraction=0"
    with console.protocol_options_in("protocol_options"):
        assert console.protocol_option("val_fraction", 0) == "protocol_options={'val_fraction': 0}"
        nested = console.protocol_option("freeze_stages", within=("config",))
        assert nested == "protocol_options['config']['freeze_stages']"
    assert console.protocol_option("val_fraction") == "val_fraction="  # the block's end restores the keywords
    provenance.COMMAND = ["selfsup", "eval"]
    try:
        assert console.named_option("out") == "--out" and console.named_option("batch_size") == "--batch-size"
        with console.protocol_options_in("protocol_options"):
            assert console.protocol_option("val_fraction", 0) == "--val-fraction 0"
            assert console.protocol_option("freeze_stages", 2, within=("config",)) == "--freeze-stages 2"
    finally:
        provenance.COMMAND = None


def _same_error_both_ways(tmp_path):
    """(name, call from Python, command line, what Python's message says, what the command's says):
    one error each, raised before any image is embedded or step trained."""
    import torch

    import selfsup
    from selfsup.curate import curate
    from selfsup.export import embed_images, export_encoder
    from selfsup.selection import select_images

    from conftest import write_dataset

    data, split = write_dataset(tmp_path / "images", per_class=2), tmp_path / "split"
    for seed, part in enumerate(("train", "test")):  # other images in each: no warning of the same ones
        write_dataset(split / part, per_class=2, seed=seed)
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(3)}, plain)
    out, nowhere, encoder = tmp_path / "out", tmp_path / "nowhere", ["--checkpoint", "random:resnet18"]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return [
        ("pretrain without data", lambda: selfsup.pretrain(out=out),
         ["pretrain", "--out", out], "with data=PATH (a folder", "with --data PATH (a folder"),
        ("resume without a run", lambda: selfsup.pretrain(out=out, resume=True),
         ["pretrain", "--out", out, "--resume"], "resume=True: no checkpoint in", "--resume: no checkpoint in"),
        ("a ResNet option on a ViT", lambda: selfsup.pretrain(data=data, out=out, backbone="vit-tiny", small_stem=True),
         ["pretrain", "--data", data, "--out", out, "--backbone", "vit-tiny", "--small-stem"],
         "small_stem= is for ResNets; vit-tiny starts with its patch embedding (set its size with patch_size=)",
         "--small-stem is for ResNets; vit-tiny starts with its patch embedding (set its size with --patch-size)"),
        ("another method's option", lambda: selfsup.pretrain(method="byol", data=data, out=out, local_crops=2),
         ["pretrain", "--method", "byol", "--data", data, "--out", out, "--local-crops", "2"],
         "local_crops= is not an option of byol; drop it, or use method='dino', 'ibot' or 'distill'",
         "--local-crops is not an option of byol; drop it, or use --method dino|ibot|distill"),
        ("eval data given twice", lambda: selfsup.evaluate_knn("random:resnet18", train=split / "train",
                                                                 test=split / "test", data=split, image_size=16),
         ["eval", "knn", *encoder, "--train", split / "train", "--test", split / "test", "--data", split,
          "--image-size", 16], "give either data= (a folder holding train/ and test/) or train= and test=, not both",
         "give either --data (a folder holding train/ and test/) or --train and --test, not both"),
        ("eval budgets given twice", lambda: selfsup.evaluate_linear("random:resnet18", data=split, fraction=0.5,
                                                                      per_class=1, image_size=16),
         ["eval", "linear", *encoder, "--data", split, "--fraction", 0.5, "--per-class", 1, "--image-size", 16],
         "give fraction= or per_class=, not both", "give --fraction or --per-class, not both"),
        ("a curve's fraction out of range", lambda: selfsup.label_efficiency_curve(
            "random:resnet18", data=split, fractions=(0.5, 2.0), out=out / "c.png", image_size=16),
         ["eval", "curve", *encoder, "--data", split, "--fraction", 0.5, 2.0, "--out", out / "c.png",
          "--image-size", 16], "fractions= must lie in (0, 1], got 2.0", "--fraction must lie in (0, 1], got 2.0"),
        ("a curve's fraction larger than a class", lambda: selfsup.label_efficiency_curve(
            "random:resnet18", data=split, fractions=(0.9,), out=out / "c.png", image_size=16),
         ["eval", "curve", *encoder, "--data", split, "--fraction", 0.9, "--out", out / "c.png", "--image-size", 16],
         "0.9 of fractions= (2 images) is more than class", "--fraction 0.9 (2 images) is more than class"),
        ("embed's batch size", lambda: embed_images("random:resnet18", data, out / "e.npy", batch_size=0),
         ["embed", *encoder, "--data", data, "--out", out / "e.npy", "--batch-size", 0],
         "batch_size= must be at least 1, got 0", "--batch-size must be at least 1, got 0"),
        ("export's file name", lambda: export_encoder("random:resnet18", out / "encoder.txt"),
         ["export", *encoder, "--out", out / "encoder.txt"],
         f"out={str(out / 'encoder.txt')!r} must end in .safetensors",
         f"--out {str(out / 'encoder.txt')!r} must end in"),
        ("weights without their architecture", lambda: selfsup.load_encoder(f"weights:{plain}"),
         ["embed", "--checkpoint", f"weights:{plain}", "--data", data, "--out", out / "e.npy"],
         "holds with backbone=NAME (e.g. resnet50)", "holds with --backbone NAME (e.g. resnet50)"),
        ("curate's missing pool", lambda: curate(nowhere, data, "random:resnet18", out),
         ["curate", "--pool", nowhere, "--seed-set", data, *encoder, "--out", out],
         "pool: data path", "--pool: data path"),
        ("select's budget", lambda: select_images(data, "random:resnet18", out, budget=0),
         ["select", *encoder, "--data", data, "--budget", 0, "--out", out],
         "budget= must be at least 1, got 0", "--budget must be at least 1, got 0"),
        ("a run folder that is a file", lambda: selfsup.pretrain(data=data, out=a_file),
         ["pretrain", "--data", data, "--out", a_file],
         "is a file, not a folder; choose another `out`", "is a file, not a folder; choose another --out"),
    ]


def test_an_error_names_the_keyword_in_python_and_the_flag_in_a_command(tmp_path):
    """'lower --batch-size' is advice a caller of selfsup.pretrain cannot act on: from Python an
    error names the keyword (or config dict) passed, and the command line's the flag, as it did."""
    for name, call, argv, in_python, in_command in _same_error_both_ways(tmp_path):
        with pytest.raises(UserError) as error:
            call()
        assert in_python in str(error.value), name
        assert "--" not in str(error.value), name  # no flag at all, where none can be typed
        line = one_error_line(run(*argv))
        assert in_command in line, name


def test_demo_text_is_true_and_its_table_aligned(tmp_path, monkeypatch):
    import selfsup
    import selfsup.eval

    def pretrain(data, out, config, show_progress):
        for name in ("last.pt", "config.yaml", "metrics.jsonl", "curves.png"):
            (out / name).write_text("")
        return SimpleNamespace(checkpoint=out / "last.pt", config=SimpleNamespace(train=SimpleNamespace(epochs=1)))

    def evaluate_knn(checkpoint, **_):
        (tmp_path / "demo" / "evals.jsonl").write_text("{}\n")  # as the real one records
        by_k = {"20": {"top1": 0.25}, "200": {"top1": 0.3}}
        return {"top1": 0.3, "by_k": by_k, "test_images": 1000, "train_images": 5000}

    (tmp_path / "demo").mkdir()
    monkeypatch.setattr(selfsup, "pretrain", pretrain)
    monkeypatch.setattr(selfsup.eval, "evaluate_knn", evaluate_knn)
    proc = run("demo", "--out", tmp_path / "demo", "--epochs", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "SimCLR on 4,750 of the 5,000 CIFAR-10 training images" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    header, rows = lines[1], lines[2:4]
    assert [len(line) for line in rows] == [len(header)] * 2, lines
    assert rows[1].startswith("  resnet18-half, SimCLR 1 epoch ")
    assert lines[-1].endswith("(config.yaml, curves.png, evals.jsonl, last.pt, metrics.jsonl)")


def test_synth_interaction_without_pymunk_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymunk", None)  # `import pymunk` raises ImportError
    line = one_error_line(run("synth", "interaction", "--out", tmp_path / "world", "--count", "3", "--objects", "0"))
    assert "needs pymunk" in line and not (tmp_path / "world").exists()


@pytest.mark.parametrize("command, options", [
    ("search", ["--query", "BAD", "--gallery", "FOLDER", "--k", "2", "--checkpoint", "random:resnet18"]),
    ("curate", ["--pool", "FOLDER", "--seed-set", "BAD", "--checkpoint", "random:resnet18"]),
    ("attention", ["--images", "BAD", "--checkpoint", "random:vit-tiny"]),
])
def test_one_image_file_that_does_not_decode_is_named_with_what_to_give(labelled_folder, tmp_path, command, options):
    """Not its folder, whose other files were never read."""
    bad = tmp_path / "garbage.png"
    bad.write_text("not an image")
    places = {"BAD": bad, "FOLDER": labelled_folder / "circle"}
    line = one_error_line(run(command, *[places.get(o, o) for o in options], "--image-size", "16",
                              "--out", tmp_path / "out", "--no-progress"))
    assert line == (f"selfsup: error: {str(bad)!r} cannot be decoded as an image (damaged, or not an image under "
                    f"an image's name); give an image file that opens in a viewer, or a folder of images")
    assert not (tmp_path / "out").exists()  # nor the empty folders of its embeddings left behind


def test_curate_prints_a_sentence_unless_json(labelled_folder, tmp_path):
    common = ["--pool", labelled_folder, "--seed-set", labelled_folder / "circle", "--checkpoint", "random:resnet18",
              "--image-size", "16", "--no-small-stem", "--k", "2", "--device", "cpu", "--no-progress"]
    proc = run("curate", *common, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote ") and len(proc.stdout.splitlines()) == 1, proc.stdout
    assert str(tmp_path / "out" / "summary.json") in proc.stdout
    proc = run("curate", *common, "--out", tmp_path / "out", "--json")
    assert json.loads(proc.stdout)["outputs"]["summary"] == str(tmp_path / "out" / "summary.json")
    common[1] = tmp_path / "no-pool"
    one_error_line(run("curate", *common, "--out", tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def test_monitor_data_that_does_not_exist_is_named_as_the_flag_given(labelled_folder, tmp_path):
    nowhere = tmp_path / "nowhere"
    line = one_error_line(run("pretrain", *tiny_flags(labelled_folder, tmp_path / "run"), "--monitor-data", nowhere))
    assert line == (f"selfsup: error: --monitor-data '{nowhere}' does not exist; give labelled images (a folder or "
                    f"tar holding train/ and test/, each with one subfolder per class)")


def test_the_done_line_says_which_images_the_knn_monitor_read():
    from selfsup.cli import done_line
    summary = {"checkpoint": "run/last.pt", "epoch": 3, "loss": 4.25, "knn_top1": 0.4123}
    assert done_line(summary) == "done: epoch 3, loss 4.2500, kNN top-1 0.412 on the held-out images, checkpoint " \
                                 "run/last.pt"
    assert done_line(summary, "/data/labelled") == "done: epoch 3, loss 4.2500, kNN top-1 0.412 on the test images " \
                                                   "of /data/labelled, checkpoint run/last.pt"
