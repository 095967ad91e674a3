"""`selfsup eval`: options a protocol would ignore are refused, the curve's plot format is checked
before any work, and results say what they used (k, the data's paths) and print what is informative."""
import pytest
import torch

from selfsup.cli import main
from selfsup.console import warn
from selfsup.data import load_cache, open_source
from selfsup.encoder import load_encoder
from selfsup.errors import UserError
from selfsup.eval import evaluate_knn, evaluate_linear, label_efficiency_curve
from selfsup.eval.command import describe
from selfsup.eval.curve import plot_label_efficiency

TINY = dict(image_size=16, small_stem=False, device="cpu", show_progress=False, record=False)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def error_of(capsys, *args) -> str:
    """The one-line error of `selfsup eval ARGS` (which must fail with status 2)."""
    assert main(["eval", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("selfsup: error: "), err
    return err


@pytest.mark.parametrize("args, message", [
    (["knn", "--out", "knn.json"], "--out is for retrieval and curve; eval knn does not use it"),
    (["knn", "--freeze-stages", "2"], "--freeze-stages is for finetune (and curve --protocol finetune); eval knn"),
    (["knn", "--epochs", "3"], "--epochs is for linear and finetune"),
    (["knn", "--val-fraction", "0.2"], "--val-fraction is for linear and finetune"),
    (["linear", "--protocol", "knn"], "--protocol is for curve; eval linear does not use it"),
    (["linear", "--temperature", "0.1"], "--temperature is for knn"),
    (["linear", "--k", "5"], "--k is for knn and retrieval"),
    (["linear", "--layer-decay", "0.5"], "--layer-decay is for finetune"),
    (["retrieval", "--lr", "0.1"], "--lr is for linear and finetune"),
    (["finetune", "--out", "x.json"], "--out is for retrieval and curve"),
    (["curve", "--protocol", "linear", "--temperature", "0.1"], "eval curve --protocol linear does not use it"),
    (["curve", "--protocol", "knn", "--epochs", "3"], "eval curve --protocol knn does not use it"),
    (["curve", "--k", "5"], "eval curve --protocol linear does not use it"),  # linear: the curve's default
])
def test_options_the_protocol_would_ignore_are_refused(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # where a relative --out would go
    missing = tmp_path / "no-data"  # the option is refused first: no image is looked for
    assert message in error_of(capsys, *args, "--checkpoint", "random:resnet18", "--data", missing, "--no-progress")


@pytest.mark.parametrize("args", [
    ["knn", "--k", "5", "--temperature", "0.1", "--per-class", "2", "--seeds", "2"],
    ["linear", "--epochs", "3", "--lr", "0.1", "0.01", "--weight-decay", "0", "--batch-size", "8",
     "--val-fraction", "0.2"],
    ["finetune", "--freeze-stages", "2", "--epochs", "3", "--lr", "0.1", "--encoder-lr-ratio", "1",
     "--val-fraction", "0.2", "--label-smoothing", "0.1", "--patience", "2"],  # (--drop-path-rate: ViTs only)
    ["retrieval", "--k", "1", "5", "--out", "nn.json"],
    ["curve", "--protocol", "knn", "--k", "5", "--temperature", "0.1", "--out", "c.png", "--per-class", "1", "2"],
    ["curve", "--protocol", "finetune", "--encoder-lr-ratio", "1", "--fraction", "0.1", "1"],
    ["curve", "--epochs", "3", "--val-fraction", "0.2"],
    ["linear", "--protocol", "linear"],  # the default value: nothing to tell apart from no option
])
def test_options_the_protocol_uses_pass(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-data"
    assert "does not exist" in error_of(capsys, *args, "--checkpoint", "random:resnet18", "--data", missing,
                                        "--no-progress")


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune", "retrieval"])
@pytest.mark.parametrize("budget, message", [
    (["--fraction", "0.5", "--per-class", "1"], "give --fraction or --per-class, not both"),
    (["--fraction", "1.5"], "--fraction must lie in (0, 1], got 1.5"),
    (["--per-class", "0"], "--per-class must be at least 1, got 0"),
])
def test_a_label_budget_is_refused_before_any_image_is_read(tmp_path, capsys, protocol, budget, message):
    missing = tmp_path / "no-data"  # its error would come first if the budget were checked after reading
    assert message in error_of(capsys, protocol, *budget, "--checkpoint", "random:resnet18", "--data", missing,
                               "--no-progress")


def test_the_curve_refuses_a_plot_format_before_any_work(tmp_path, capsys):
    missing = tmp_path / "no-data"
    err = error_of(capsys, "curve", "--checkpoint", "random:resnet18", "--data", missing, "--per-class", "1",
                   "--protocol", "knn", "--out", tmp_path / "out" / "curve.txt")
    assert "'.txt'" in err and ".png, .svg or .pdf" in err
    with pytest.raises(UserError, match="as '.json'"):
        label_efficiency_curve("random:resnet18", data=missing, out=tmp_path / "c.json", **TINY)
    curve = {"curve_protocol": "knn", "seeds": 1, "test_images": 3,
             "lines": [{"encoder": "e", "points": [{"labels_per_class": 1.0, "top1": 0.5, "top1_std": 0.0}]}]}
    for name, magic in [("c.svg", b"<?xml"), ("c.PDF", b"%PDF"), ("c", b"\x89PNG")]:
        written = plot_label_efficiency(curve, tmp_path / name)
        assert written.read_bytes().startswith(magic)


def test_the_curve_refuses_a_budget_or_seeds_before_running_any_protocol(split_folder, tmp_path, monkeypatch):
    import selfsup.eval.curve as curve

    def must_not_run(*args, **kwargs):
        raise AssertionError("a protocol ran before the budgets were checked")

    monkeypatch.setattr(curve, "PROTOCOLS", {name: must_not_run for name in curve.PROTOCOLS})
    with pytest.raises(UserError, match="seeds= must be at least 1, got 0"):
        label_efficiency_curve("random:resnet18", data=tmp_path / "no-data", seeds=0, out=tmp_path / "c.png", **TINY)
    for protocol in ("knn", "linear"):  # 16 training images per class (the linear probe keeps some to validate)
        with pytest.raises(UserError, match="per_class=17 is more than class 'circle' has"):
            label_efficiency_curve("random:resnet18", data=split_folder, protocol=protocol, per_class=(1, 17),
                                   seeds=1, out=tmp_path / "c.png", **TINY)


def test_the_curve_prints_labels_per_class_as_counts():
    points = [{"labels_per_class": n, "top1": 0.5, "top1_std": 0.0} for n in (1.0, 10.0, 4.5)]
    text = describe({"protocol": "curve", "curve_protocol": "knn", "seeds": 1, "test_images": 30, "plot": "c.png",
                     "lines": [{"encoder": "e", "points": points}]})
    labels = [line.split(" label")[0].strip() for line in text.splitlines() if "/class" in line]
    assert labels == ["1", "10", "4.5"] and "1 label/class" in text and "10 labels/class" in text


def test_knn_says_when_k_is_clipped_to_the_labelled_images(split_folder):
    result = evaluate_knn("random:resnet18", data=split_folder, k=(5, 100), **TINY)  # 48 training images
    assert (result["k"], result["k_asked"]) == (48, 100)
    assert result["by_k"]["100"]["k"] == 48 and result["by_k"]["5"]["k"] == 5
    used = evaluate_knn("random:resnet18", data=split_folder, k=48, **TINY)
    assert result["by_k"]["100"]["top1"] == used["top1"]
    text = describe(result)
    assert "k=48   top-1" in text and "k=100 asked; only 48 labelled images" in text
    assert "k=5    top-1" in text and text.count("asked") == 1
    both_cut = evaluate_knn("random:resnet18", data=split_folder, k=(100, 200), **TINY)
    text = describe(both_cut)  # one figure: one line, not the same line twice
    assert text.count("k=48   top-1") == 1 and "(k=100, 200 asked; only 48 labelled images to vote)" in text


def test_top5_is_shown_only_with_more_than_five_classes(split_folder):
    result = evaluate_knn("random:resnet18", data=split_folder, k=5, **TINY)  # 3 classes: top-5 is always 1
    assert "top-5" not in describe(result)
    ten = {**result, "classes": 10, "top5": 0.5, "by_k": {"5": {**result["by_k"]["5"], "top5": 0.5}}}
    assert "top-5" in describe(ten)
    linear = {**result, "protocol": "linear"}
    assert "top-5" not in describe(linear) and "top-5" in describe({**linear, "classes": 6, "top5": 0.5,
                                                                    "top5_std": 0.0})


def test_knn_lines_give_top5_its_deviation_over_seeds_as_top1():
    # Over 2 seeds the k lines read "top-1 0.1725 ± 0.0106   top-5 0.6700": top-5 without its spread.
    spread = {"top1": 0.17, "top1_std": 0.01, "top5": 0.67, "top5_std": 0.02}
    result = {"protocol": "knn", "encoder": "e", "image_size": 32, "budget": "5 per class", "labelled_images": 50,
              "train_images": 300, "test_images": 200, "classes": 10, "seeds": 2, "k": 20, **spread,
              "by_k": {"20": {"k": 20, **spread}}}
    assert "k=20   top-1 0.1700 ± 0.0100   top-5 0.6700 ± 0.0200" in describe(result)


def test_results_name_train_and_test_data_by_absolute_paths(split_folder, monkeypatch):
    # pretrain caches the training split under its absolute path; eval then gets a relative --data
    size = load_encoder("random:resnet18", 16, False).cache_size
    load_cache(open_source(split_folder, "train"), size, show_progress=False)
    monkeypatch.chdir(split_folder.parent)
    result = evaluate_linear("random:resnet18", data=split_folder.name, epochs=1, lr=1e-3, weight_decay=0.0,
                             **TINY)
    assert (result["train_data"], result["test_data"]) == (f"{split_folder}/train", f"{split_folder}/test")
    # The test split's cache was just built under a relative name: from another folder, the
    # results still name the data by the path given now.
    monkeypatch.chdir(split_folder / "train")
    result = evaluate_knn("random:resnet18", data="..", k=5, **TINY)
    assert (result["train_data"], result["test_data"]) == (f"{split_folder}/train", f"{split_folder}/test")


def test_data_together_with_train_or_test_is_refused(tmp_path):
    from selfsup.eval.data import open_labelled
    with pytest.raises(UserError, match=r"^give either data= .* or train= and test=, not both$"):
        open_labelled(16, train=tmp_path, data=tmp_path)


def test_every_setting_that_changes_a_result_is_recorded(split_folder, tmp_path):
    # Two linear probes that differ only in --val-fraction or --batch-size shared a report column,
    # because neither setting was written into the result.
    from selfsup.eval import evaluate_finetune

    probe = dict(data=split_folder, epochs=1, lr=1e-3, weight_decay=0.0, **TINY)
    result = evaluate_linear("random:resnet18", val_fraction=0.3, batch_size=16, **probe)
    assert (result["val_fraction"], result["batch_size"]) == (0.3, 16)
    tuned = evaluate_finetune("random:resnet18", data=split_folder, val_fraction=0.2,
                              config={"epochs": 1, "min_steps": 1, "batch_size": 16}, **TINY)
    assert tuned["val_fraction"] == 0.2 and tuned["config"]["batch_size"] == 16
    curve = label_efficiency_curve(["random:resnet18"], data=split_folder, protocol="linear", per_class=(2,), seeds=1,
                                   out=tmp_path / "c.png", protocol_options={"epochs": 1, "batch_size": 16,
                                                                             "val_fraction": 0.2},
                                   **{k: v for k, v in TINY.items() if k != "record"})
    assert (curve["batch_size"], curve["val_fraction"], curve["epochs"]) == (16, 0.2, 1)


def test_one_seed_of_several_reruns_from_its_subset_file(split_folder):
    # Under --subset the probe's generator was seeded with the loop's index (0), not the saved
    # subset's seed: seed 1 rerun from its own file gave another figure.
    options = dict(data=split_folder, epochs=5, **TINY)
    both = evaluate_linear("random:resnet18", per_class=5, seeds=2, **options)
    assert [s["seed"] for s in both["per_seed"]] == [0, 1]
    assert "seed" not in both and "seed_std" not in both  # a seed's number is no figure to average
    again = evaluate_linear("random:resnet18", subset=both["subsets"][1], **options)
    assert again["per_seed"] == [both["per_seed"][1]]
    assert (again["labelled_images"], again["val_images"]) == (both["labelled_images"], both["val_images"])
    # --seeds 2 on that file: its own seed, then the next (not the same seed twice, a spread of 0)
    twice = evaluate_linear("random:resnet18", subset=both["subsets"][1], seeds=2, **options)
    assert [s["seed"] for s in twice["per_seed"]] == [1, 2]


def test_caches_and_results_know_the_decoded_pixels(split_folder):
    # The data's identity by content: a cache keyed by names, sizes and times cannot see an image
    # edited in place; the SHA-256 of its decoded pixels can. Old caches (no digest) still open.
    import hashlib
    import json
    from pathlib import Path

    import numpy as np

    cache = load_cache(open_source(split_folder, "train"), 16, show_progress=False)
    assert cache.pixels_sha256 == hashlib.sha256(np.asarray(cache.images).tobytes()).hexdigest()
    result = evaluate_knn("random:resnet18", data=split_folder, k=5, **TINY)
    assert result["train_pixels_sha256"] == cache.pixels_sha256 and len(result["test_pixels_sha256"]) == 64
    index = Path(cache.images.filename).parent / "index.json"
    meta = json.loads(index.read_text())
    del meta["pixels_sha256"]
    index.write_text(json.dumps(meta))
    assert load_cache(open_source(split_folder, "train"), 16, show_progress=False).pixels_sha256 is None
    assert evaluate_knn("random:resnet18", data=split_folder, k=5, **TINY)["train_pixels_sha256"] is None


def _unreadable_class(root, name: str = "bird"):
    """A class folder holding only a file that is not an image."""
    (root / name).mkdir(parents=True)
    (root / name / "garbage.png").write_bytes(bytes(range(256)) * 2)


@pytest.mark.parametrize("in_test", ["unreadable", "absent"])
def test_a_class_none_of_whose_files_decode_is_left_out(split_folder, capsys, in_test):
    # 'bird' (sorted first) counted as a class of no image: "classes": 4, a --per-class budget it
    # could not meet, or "train and test classes differ" when test had no bird folder.
    from selfsup.eval.data import open_labelled
    _unreadable_class(split_folder / "train")
    if in_test == "unreadable":
        _unreadable_class(split_folder / "test")
    train, test = open_labelled(16, data=split_folder, show_progress=False)
    assert train.classes == test.classes == ["circle", "square", "stripes"]
    for cache in (train, test):  # renumbered by name: each image's label is its folder's
        assert [cache.classes[label] for label in cache.labels] == [n.split("/")[0] for n in cache.names]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert warnings == ["warning: 1 class left out, none of whose files could be decoded: 'bird'"]


def test_a_class_unreadable_in_train_but_tested_is_refused(split_folder):
    from selfsup.eval.data import open_labelled
    _unreadable_class(split_folder / "train")
    (split_folder / "test" / "bird").mkdir()
    (split_folder / "test" / "circle" / "000.png").rename(split_folder / "test" / "bird" / "000.png")
    with pytest.raises(UserError, match=r"^class 'bird' has no train image that can be decoded \(its 1 file "
                                        r"failed\) but has test images; replace those files, or remove"):
        open_labelled(16, data=split_folder, show_progress=False)


def test_the_budget_of_a_class_without_images_is_refused_in_words_that_hold():
    # "0 training images (1 after the -1 held out for validation; ...)"
    import numpy as np
    from selfsup.eval.subsets import Budget, make_split
    with pytest.raises(UserError, match=r"^per_class=2 needs images of class 'a', which has no training image; "):
        make_split(np.array([1, 1, 1]), ["a", "b"], Budget(per_class=2), 0, 0.1)


def test_one_class_left_after_the_unreadable_ones_is_refused(tmp_path):
    from selfsup.eval.data import open_labelled
    from conftest import write_dataset
    for split in ("train", "test"):
        write_dataset(tmp_path / split, per_class=2)
        for other in ("square", "stripes"):
            for image in (tmp_path / split / other).iterdir():
                image.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"^only class 'circle' has images that can be decoded; evaluation needs at "
                                        r"least 2 classes$"):
        open_labelled(16, data=tmp_path, show_progress=False)


@pytest.mark.parametrize("argv, out", [
    (["curve", "--per-class", "500", "--protocol", "knn"], "new/sub/curve.png"),
    (["retrieval", "--subset", "NOWHERE.txt"], "new/sub/neighbours.json"),
])
def test_a_refused_evaluation_leaves_no_folder_behind(split_folder, tmp_path, capsys, argv, out):
    # The --out file's folders were made before the budget or the subset was refused, and stayed.
    argv = [str(tmp_path / a) if a == "NOWHERE.txt" else a for a in argv]
    error_of(capsys, *argv, "--out", tmp_path / out, "--checkpoint", "random:resnet18", "--image-size", "16",
             "--data", split_folder, "--no-progress")
    assert not (tmp_path / "new").exists()


def test_a_knn_curve_runs_its_every_label_point_once_without_a_warning(split_folder, tmp_path, capsys):
    """The curve's default budgets end at 100 %, where kNN gives each seed the same figure: the
    warning to run once could not be acted on (the seeds are for the smaller budgets)."""
    curve = label_efficiency_curve("random:resnet18", data=split_folder, protocol="knn", fractions=(0.5, 1.0),
                                   seeds=2, out=tmp_path / "c.png", **TINY)
    half, whole = curve["lines"][0]["points"]
    assert len(half["per_seed"]) == 2 and len(whole["per_seed"]) == 1
    assert "same result for every seed" not in capsys.readouterr().err


def test_the_defaults_eval_help_names_are_the_protocols_own(capsys):
    """The help text cannot import the protocols (the command line starts without PyTorch): its
    figures are written out, and checked here against the code's."""
    import inspect

    from selfsup.eval.finetune import FinetuneConfig
    from selfsup.eval.linear import SWEEP_LRS, SWEEP_WEIGHT_DECAYS
    from selfsup.eval.protocols import LINEAR_EPOCHS, linear_protocol
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    tune = FinetuneConfig()
    linear_batch = inspect.signature(linear_protocol).parameters["batch_size"].default
    for said in (f"rates to sweep (default {' '.join(map(str, SWEEP_LRS))})", f"the head's rate (default {tune.lr})",
                 f"decays to sweep (default {' '.join(map(str, SWEEP_WEIGHT_DECAYS))})",
                 f"one (default {tune.weight_decay})",
                 f"linear (default {linear_batch}), finetune (default {tune.batch_size})",
                 f"before stopping (default {tune.patience})", f"this many steps (default {tune.min_steps})",
                 f"finetune (default {tune.label_smoothing})", f"linear: epochs (default {LINEAR_EPOCHS})",
                 f"finetune: passes (default {tune.epochs})", f"(default {tune.drop_path_rate})",
                 f"(default {tune.encoder_lr_ratio})", f"(default {tune.layer_decay};"):
        assert said in text, said


CURVE_IN_BOTH = dict(data="DATA", per_class=(2,), seeds=1, image_size=16, small_stem=False, device="cpu",
                     show_progress=False, record=False)


@pytest.mark.parametrize("protocol, protocol_options, flags, in_python, in_command", [
    ("linear", {"val_fraction": 0.7}, ["--val-fraction", 0.7],
     "protocol_options['val_fraction'] must lie in [0, 0.5], got 0.7", "--val-fraction must lie in [0, 0.5], got 0.7"),
    ("linear", {"val_fraction": 0.1}, ["--per-class", 15],  # 16 training images a class, 2 held out
     "(14 after the 2 held out for validation; protocol_options={'val_fraction': 0} holds none)",
     "(14 after the 2 held out for validation; --val-fraction 0 holds none)"),
    ("linear", {"val_fraction": 0}, ["--val-fraction", 0],
     "without a validation split (protocol_options={'val_fraction': 0}, or one labelled image per class) nothing "
     "can choose among learning rates and weight decays; give one protocol_options['lr'] and one "
     "protocol_options['weight_decay']",
     "without a validation split (--val-fraction 0, or one labelled image per class) nothing can choose among "
     "learning rates and weight decays; give one --lr and one --weight-decay"),
    ("finetune", {"config": {"freeze_stages": 9}}, ["--freeze-stages", 9],
     "protocol_options={'config': {'freeze_stages': 9}} is more than the 4 stages of this backbone",
     "--freeze-stages 9 is more than the 4 stages of this backbone"),
])
def test_a_curve_from_python_names_protocol_options_keys_and_its_command_the_flags(
        split_folder, tmp_path, capsys, protocol, protocol_options, flags, in_python, in_command):
    """A curve's protocol settings are keys of protocol_options: 'val_fraction=' or
    config={'freeze_stages': 9} named keywords the curve does not take."""
    options = {**CURVE_IN_BOTH, "data": split_folder, "out": tmp_path / "c.png"}
    if "--per-class" in flags:
        options["per_class"] = (15,)
    with pytest.raises(UserError) as error:
        label_efficiency_curve("random:resnet18", protocol=protocol, protocol_options=protocol_options, **options)
    assert in_python in str(error.value) and "--" not in str(error.value)
    flags = flags if "--per-class" in flags else [*flags, "--per-class", 2]
    err = error_of(capsys, "curve", "--protocol", protocol, *flags, "--checkpoint", "random:resnet18",
                   "--data", split_folder, "--seeds", 1, "--image-size", 16, "--no-small-stem", "--device", "cpu",
                   "--out", tmp_path / "c.png", "--no-progress", "--no-record")
    assert in_command in err


@pytest.mark.parametrize("protocol, call, message", [
    ("linear", dict(protocol_options={"bogus": 1}),
     "the linear protocol takes no protocol_options['bogus']; it takes val_fraction, lr, weight_decay, epochs, "
     "batch_size"),
    ("knn", dict(protocol_options={"val_fraction": 0.2}),
     "the knn protocol takes no protocol_options['val_fraction']; it takes k, temperature"),
    ("finetune", dict(protocol_options={"lr": 0.1}),
     "the finetune protocol takes no protocol_options['lr']: fine-tuning's is protocol_options['config']['lr']"),
    ("finetune", dict(protocol_options={"config": 3}),
     "protocol_options['config'] takes a dict of fine-tuning options, a YAML file of them or a FinetuneConfig, "
     "got int"),
])
def test_a_curve_refuses_protocol_options_its_protocol_does_not_take_before_any_image_is_read(
        tmp_path, protocol, call, message):
    with pytest.raises(UserError) as error:  # no data: refused before it is looked for
        label_efficiency_curve("random:resnet18", protocol=protocol, data=tmp_path / "no-data",
                               out=tmp_path / "c.png", **call)
    assert str(error.value) == message
    with pytest.raises(TypeError, match=r"^label_efficiency_curve\(\) takes the linear protocol's options in "
                                        r"protocol_options: protocol_options=\{'val_fraction': 0.2\}, "
                                        r"not val_fraction=$"):
        label_efficiency_curve("random:resnet18", data=tmp_path / "no-data", val_fraction=0.2)
    assert not (tmp_path / "c.png").exists()


def test_a_finetune_curve_takes_its_config_as_a_yaml_file_as_evaluate_finetune_does(split_folder, tmp_path):
    (tmp_path / "ft.yaml").write_text("freeze_stages: 9\n")
    with pytest.raises(UserError, match=r"^protocol_options=\{'config': \{'freeze_stages': 9\}\} is more than"):
        label_efficiency_curve("random:resnet18", protocol="finetune", out=tmp_path / "c.png",
                               protocol_options={"config": tmp_path / "ft.yaml"},
                               **{**CURVE_IN_BOTH, "data": split_folder})


def test_a_curve_names_an_option_out_of_range_as_given_before_any_image_is_read(tmp_path, capsys):
    missing = tmp_path / "no-data"  # read only after the options are checked: its error must not come first
    for protocol, protocol_options, flags, in_python, in_command in [
        ("linear", {"lr": -1}, ["--lr", -1], "protocol_options['lr'] must be in [0.0, inf], got -1.0",
         "error: --lr must be in [0.0, inf], got -1.0"),
        ("knn", {"k": 0}, ["--k", 0], "protocol_options['k'] must be in [1, inf], got 0", "error: --k must be in"),
        ("finetune", {"config": {"freeze_stages": -1}}, ["--freeze-stages", -1],
         "protocol_options['config']['freeze_stages'] must be in [0, inf], got -1",
         "error: --freeze-stages must be in"),
        ("linear", {"val_fraction": 0.9}, ["--val-fraction", 0.9],
         "protocol_options['val_fraction'] must lie in [0, 0.5], got 0.9", "error: --val-fraction must lie in"),
        ("finetune", {"val_fraction": -1}, ["--val-fraction", -1],
         "protocol_options['val_fraction'] must lie in [0, 0.5], got -1", "error: --val-fraction must lie in"),
    ]:
        with pytest.raises(UserError) as error:
            label_efficiency_curve("random:resnet18", protocol=protocol, data=missing,
                                   protocol_options=protocol_options, out=tmp_path / "c.png", **TINY)
        assert str(error.value) == in_python
        err = error_of(capsys, "curve", "--protocol", protocol, *flags, "--checkpoint", "random:resnet18",
                       "--data", missing, "--out", tmp_path / "c.png", "--no-progress", "--no-record")
        assert in_command in err


def _fake_protocol(setup, budget, seeds, **options):
    """A protocol's result at once, without training (the curve's warnings are what is tested)."""
    return {"budget": budget.describe(), "labels_per_class": 2, "labelled_images": 6, "seeds": seeds, "top1": 0.5,
            "top1_std": 0.0}


def test_a_curve_warns_once_of_fine_tuning_options_some_of_its_encoders_do_not_use(split_folder, tmp_path, capsys,
                                                                                     monkeypatch):
    import selfsup.eval.curve as curve

    events = []  # warnings and protocol runs, in the order they happen

    def protocol_run(*args, **kwargs):
        events.append("protocol")
        return _fake_protocol(*args, **kwargs)

    def warning(message):
        events.append("warning")
        warn(message)

    monkeypatch.setattr(curve, "PROTOCOLS", {name: protocol_run for name in curve.PROTOCOLS})
    monkeypatch.setattr(curve, "warn", warning)
    both = ["random:resnet18", "random:vit-tiny"]
    options = {**TINY, "data": split_folder, "out": tmp_path / "c.png", "per_class": (2,), "seeds": 1}
    result = label_efficiency_curve(both, protocol="finetune", **options,
                                    protocol_options={"config": {"layer_decay": 0.5, "encoder_lr_ratio": 0.5}})
    assert events == ["warning", "protocol", "protocol"]  # said before the first encoder's protocol runs
    cnn, vit = (line["encoder"] for line in result["lines"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: protocol_options['config']['layer_decay'] is for ViT encoders; {cnn} is fine-tuned "
                        f"without it; protocol_options['config']['encoder_lr_ratio'] is for CNN encoders (and ViTs "
                        f"with protocol_options={{'config': {{'layer_decay': 1}}}}); {vit} is fine-tuned without it"]
    assert main(["eval", "curve", "--protocol", "finetune", "--checkpoint", *both, "--layer-decay", "0.5",
                 "--data", str(split_folder), "--per-class", "2", "--seeds", "1", "--image-size", "16",
                 "--no-small-stem", "--device", "cpu", "--out", str(tmp_path / "c.png"), "--no-progress",
                 "--no-record"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --layer-decay is for ViT encoders; {cnn} is fine-tuned without it"]
    # Options that every encoder uses: no warning.
    label_efficiency_curve(both, protocol="finetune", **options, protocol_options={"config": {"freeze_stages": 1}})
    assert "warning:" not in capsys.readouterr().err
