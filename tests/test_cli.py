"""The command line: contract spellings, --json output, and one-line errors for bad input.

Commands run in this process through `selfsup.cli.main` (what `python -m selfsup` calls), which
saves the seconds a new Python spends importing torch; one test checks the real entry point."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from selfsup.cli import main

from conftest import write_dataset

REPO = Path(__file__).resolve().parents[1]


def run(*args, check_error=None):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    proc = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check_error is not None:
        assert proc.returncode == 2, proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        assert check_error in lines[0], lines[0]
    return proc


def test_pretrain_eval_export_embed_through_the_cli(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "run"
    proc = run("pretrain", "--method", "simclr", "--data", data, "--out", out, "--backbone", "resnet18",
               "--no-small-stem", "--epochs", "1", "--batch-size", "8", "--lr", "0.1", "--image-size", "16",
               "--device", "cpu", "--seed", "1", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["checkpoint"] == str(out / "last.pt")
    kept = ("epoch", "loss", "knn_top1")  # the keys scripts read before
    assert {k: summary[k] for k in kept} == {k: records[-1][k] for k in kept}
    assert {k: summary[k] for k in ("out", "method", "backbone", "image_size", "epochs", "epochs_done", "total_steps",
                                    "images_per_s", "best_knn_top1", "best_knn_epoch")} == {
        "out": str(out), "method": "simclr", "backbone": "resnet18", "image_size": 16, "epochs": 1, "epochs_done": 1,
        "total_steps": records[-1]["step"], "images_per_s": records[-1]["images_per_s"],
        "best_knn_top1": records[-1]["knn_top1"], "best_knn_epoch": 1}
    assert summary["training_images"] == 23 and summary["wall_seconds"] > 0  # 24 images, 1 held out for the monitor
    assert summary["std_ratio"] == records[-1]["std_ratio"] and summary["effective_rank"] > 0
    assert summary["outputs"] == {"config": str(out / "config.yaml"), "metrics": str(out / "metrics.jsonl"),
                                  "curves": str(out / "curves.png")}
    for protocol, options in (("knn", []), ("linear", ["--epochs", "3"])):
        proc = run("eval", protocol, "--checkpoint", out / "last.pt", "--train", data, "--test", data,
                   "--json", "--no-progress", *options)
        result = json.loads(proc.stdout)
        assert proc.returncode == 0 and 0 <= result["top1"] <= 1 and "top5" not in result  # 3 classes
    run("eval", "knn", "--checkpoint", out, "--data", data, "--small-stem",  # its weights fix its stem
        check_error="was trained without the small stem, which its weights fix; drop --small-stem")
    proc = run("export", "--checkpoint", out / "last.pt", "--out", tmp_path / "enc.safetensors")
    assert proc.returncode == 0 and (tmp_path / "enc.safetensors").is_file()
    proc = run("embed", "--checkpoint", out, "--data", data, "--out", tmp_path / "e.npy", "--no-progress")
    assert proc.returncode == 0 and (tmp_path / "e.files.txt").is_file()


def test_paths_given_with_a_tilde_are_read_from_the_home_folder(tmp_path, monkeypatch):
    """'~/runs/a' as given where no shell expands it (quoted, --out=~/runs/a, a YAML file): --out was
    made in the home folder, then the run failed on an OS error naming '~/runs/a'; --checkpoint and
    --config were not found."""
    monkeypatch.setenv("HOME", str(tmp_path))
    write_dataset(tmp_path / "data", per_class=4)
    proc = run("pretrain", "--method", "simclr", "--data", "~/data", "--out=~/runs/a", "--backbone", "resnet18",
               "--no-small-stem", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--device", "cpu",
               "--no-progress")
    assert proc.returncode == 0 and (tmp_path / "runs" / "a" / "last.pt").is_file(), proc.stderr
    proc = run("export", "--checkpoint", "~/runs/a", "--out", "~/enc.safetensors")
    assert proc.returncode == 0 and (tmp_path / "enc.safetensors").is_file(), proc.stderr
    run("pretrain", "--config", "~/runs/a/config.yaml", "--out", "~/runs/a", check_error="already holds a run")


def test_bad_input_gives_one_line_errors(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4)
    common = ["--out", tmp_path / "r", "--image-size", "16", "--no-progress"]
    run("pretrain", "--data", tmp_path / "missing", *common, check_error="does not exist")
    (tmp_path / "empty").mkdir()
    run("pretrain", "--data", tmp_path / "empty", *common, check_error="no images found")
    run("pretrain", "--method", "simclrr", "--data", data, *common, check_error="did you mean 'simclr'")
    run("pretrain", "--backbone", "resnet17", "--data", data, *common, check_error="valid: resnet18")
    run("pretrain", "--data", data, "--batch-size", "500", *common, check_error="larger than the")
    run("pretrain", "--data", data, "--resume", *common, check_error="no checkpoint")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batchsize: 4\n")
    run("pretrain", "--data", data, "--config", cfg, *common, check_error="did you mean 'batch_size'")
    (tmp_path / "file").write_text("x")
    run("pretrain", "--data", data, "--out", tmp_path / "file" / "run", "--image-size", "16",
        check_error="cannot write")


def test_the_installed_entry_point_reports_errors_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--data", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"selfsup: error: data path '{tmp_path / 'missing'}' does not exist; "
                                                f"give a folder of images or a tar of one"]


def test_foreign_checkpoints_are_refused_without_unpickling(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=4)
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, plain)
    run("eval", "knn", "--checkpoint", plain, "--train", data, "--test", data, check_error="not a selfsup checkpoint")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil(str(marker))}, evil)
    run("export", "--checkpoint", evil, "--out", tmp_path / "o.safetensors",
        check_error="cannot be read as a selfsup checkpoint")
    assert not marker.exists(), "loading a checkpoint ran code from it"
    (tmp_path / "text.pt").write_text("hello")
    run("embed", "--checkpoint", tmp_path / "text.pt", "--data", data, "--out", tmp_path / "e.npy",
        check_error="cannot be read as a selfsup checkpoint")
    run("eval", "knn", "--checkpoint", tmp_path / "nope.pt", "--data", data, check_error="does not exist")


def test_unreadable_checkpoints_say_why_and_what_each_command_takes_instead(tmp_path):
    import pytest
    from selfsup.checkpoint import load_checkpoint, save_checkpoint
    from selfsup.errors import UserError
    good = tmp_path / "good.pt"
    save_checkpoint(good, model={"w": torch.zeros(1000)}, config={})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(UserError, match=r"cannot be read as a selfsup checkpoint: it is damaged or cut short"):
        load_checkpoint(cut)
    (tmp_path / "w.safetensors").write_bytes(b"{}")
    with pytest.raises(UserError, match=r"is a weights file, not a selfsup checkpoint"
                                        r".*weights:FILE' with backbone=NAME\)$"):
        load_checkpoint(tmp_path / "w.safetensors")
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(3)}, plain)
    with pytest.raises(UserError, match=r"\(plain weights: give 'weights:FILE' with backbone=NAME\)$"):
        load_checkpoint(plain)
    run("pretrain", "--method", "distill", "--teacher", plain, "--data", write_dataset(tmp_path / "d", per_class=4),
        "--out", tmp_path / "student", "--batch-size", "4", "--image-size", "16", "--no-progress", check_error="use --teacher weights:FILE --set distill.teacher_backbone=NAME")
    (tmp_path / "run").mkdir()
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "run" / "last.pt")
    with pytest.raises(UserError) as refused:  # a run folder holds what selfsup wrote: no weights: hint
        selfsup_resume(tmp_path / "run")
    assert "weights:" not in str(refused.value)


def selfsup_resume(out):
    import selfsup
    return selfsup.pretrain(out=out, resume=True, show_progress=False)


class Evil:
    """Unpickling this would create a file: a stand-in for arbitrary code in a foreign file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_demo_runs_on_the_shipped_sample_and_prints_one_json_object(tmp_path):
    proc = run("demo", "--epochs", "1", "--out", tmp_path / "demo", "--device", "cpu", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # nothing else on stdout
    assert result["pretrained"]["test_images"] == 1000 and result["pretrained"]["train_images"] == 5000
    assert result["gain_top1"] == result["pretrained"]["top1"] - result["random"]["top1"]
    assert (tmp_path / "demo" / "last.pt").is_file()


def test_pretrain_help_names_every_method_and_backbone(capsys):
    import pytest

    from selfsup.backbones import BACKBONES
    from selfsup.backbones.vit import VITS
    from selfsup.methods import METHODS
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*METHODS, *BACKBONES, *VITS]:
        assert name in text, name


def test_an_os_error_is_one_line(monkeypatch, tmp_path):
    import errno

    import selfsup.export

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "enc.safetensors"))
    monkeypatch.setattr(selfsup.export, "export_encoder", full_disk)
    run("export", "--checkpoint", "x", "--out", tmp_path / "enc.safetensors", check_error="No space left on device")


def test_ctrl_c_while_pytorch_loads_is_one_line(tmp_path):
    """The first seconds of any command import PyTorch; an interrupt then is no traceback either."""
    import signal
    import time
    probe = subprocess.run([sys.executable, "-c", "import sys, selfsup.cli; print('torch' in sys.modules)"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "False"  # importing the command line does not load PyTorch yet
    data = write_dataset(tmp_path / "data", per_class=4)  # a run that would go on for long
    process = subprocess.Popen([sys.executable, "-m", "selfsup", "pretrain", "--data", str(data), "--out",
                                str(tmp_path / "run"), "--epochs", "100000", "--batch-size", "4", "--image-size", "16",
                                "--no-progress"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               # Ctrl-C as in a terminal: a suite started in the background (`cmd &`
                               # in a script, nohup) ignores SIGINT, its children too, and Python
                               # then keeps ignoring it, rightly: the run trained on.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupted once PyTorch's library is mapped: Python is up (its handler turns SIGINT into
    # KeyboardInterrupt) and the import of PyTorch under way. A fixed sleep instead can land in
    # the interpreter's own start on a busy machine, which no program can catch.
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while maps.exists() and "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("selfsup: interrupted")
    assert process.returncode == 130


def test_an_interrupted_pretraining_says_how_to_go_on(tmp_path, monkeypatch):
    import selfsup.train

    def interrupted(user, resume, show_progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(selfsup.train, "run_pretraining", interrupted)
    out = tmp_path / "run"
    proc = run("pretrain", "--data", tmp_path, "--out", out)
    assert proc.returncode == 130
    assert proc.stderr.strip() == "selfsup: interrupted; nothing was saved yet: run the same command again"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    proc = run("pretrain", "--data", tmp_path, "--out", out)
    assert proc.stderr.strip() == (f"selfsup: interrupted; continue from the last checkpoint with: "
                                   f"selfsup pretrain --out {out} --resume")


def test_tiff_bands_chosen_at_pretraining_follow_the_encoder_into_every_command(tmp_path):
    """--bands 4,3,2 of 4-band 16-bit tiles (GDAL's layout): pretraining records them, and eval,
    a random: baseline beside the run in a curve, export, weights:FILE, embed, cluster and search
    decode the same bands: every cache built is one of those bands."""
    import numpy as np
    import pytest

    from selfsup.data.cache import list_caches
    from selfsup.weights import exported_settings, read_weights

    from conftest import CLASSES, shape_image
    from test_data import tiff16

    pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    data = tmp_path / "tiles"
    for cls in CLASSES:
        (data / cls).mkdir(parents=True)
        for i in range(6):
            shape = shape_image(cls, rng, 16).astype(np.uint16) * 16  # 12-bit
            noise = rng.integers(0, 4096, (16, 16, 1))
            (data / cls / f"{i}.tif").write_bytes(tiff16(np.concatenate([noise, shape[..., ::-1]], axis=2),
                                                         photometric=1, extra=(0, 0, 0)))
    out = tmp_path / "run"
    proc = run("pretrain", "--method", "simclr", "--data", data, "--out", out, "--backbone", "resnet18",
               "--no-small-stem", "--epochs", "1", "--batch-size", "6", "--image-size", "16", "--device", "cpu",
               "--bands", "4,3,2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "bands:\n  - 4\n  - 3\n  - 2\n" in (out / "config.yaml").read_text()
    proc = run("pretrain", "--out", out, "--resume", "--bands", "4,3,2", "--no-progress")  # the same: resumed
    assert proc.returncode == 0 and "cannot change" not in proc.stderr, proc.stderr
    run("pretrain", "--out", out, "--resume", "--bands", "1,2,3",
        check_error="data.bands cannot change (saved [4, 3, 2], given (1, 2, 3))")
    common = ["--data", data, "--no-progress", "--json"]
    proc = run("eval", "knn", "--checkpoint", out, "--train", data, "--test", data, "--no-progress", "--json")
    assert json.loads(proc.stdout)["bands"] == [4, 3, 2]  # in the record too
    for args in (["eval", "curve", "--protocol", "knn", "--checkpoint", out, "random:resnet18", "--per-class", "2",
                  "--seeds", "1", "--train", data, "--test", data, "--out", tmp_path / "curve.png", "--no-progress"],
                 ["export", "--checkpoint", out, "--out", tmp_path / "enc.safetensors"],
                 ["embed", "--checkpoint", f"weights:{tmp_path / 'enc.safetensors'}", "--out", tmp_path / "e.npy",
                  *common],
                 ["cluster", "--checkpoint", out, "--clusters", "3", "--out", tmp_path / "clusters", *common],
                 ["search", "--checkpoint", out, "--query", data / "circle" / "0.tif", "--gallery", data,
                  "--out", tmp_path / "search", "--no-progress"]):
        proc = run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "bands 1, 2 and 3 were read" not in proc.stderr  # the warning of tiles read by their first bands
    assert exported_settings(read_weights(tmp_path / "enc.safetensors")[1])["bands"] == (4, 3, 2)
    caches = list_caches()
    assert caches and all(json.loads((c.path / "index.json").read_text())["bands"] == [4, 3, 2] for c in caches)
    # Other bands for a run's encoder, asked for: what embed streams (no cache) is of those bands...
    proc = run("embed", "--checkpoint", out, "--bands", "1", "--out", tmp_path / "gray.npy", *common)
    assert proc.returncode == 0, proc.stderr
    assert len(list_caches()) == len(caches)
    assert np.load(tmp_path / "gray.npy").shape == np.load(tmp_path / "e.npy").shape
    assert not np.allclose(np.load(tmp_path / "gray.npy"), np.load(tmp_path / "e.npy"), atol=1e-3)
    # ... and what eval decodes into a cache, a cache of their own
    proc = run("eval", "knn", "--checkpoint", out, "--bands", "1", "--train", data, "--test", data, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads((c.path / "index.json").read_text())["bands"] for c in list_caches()) == \
        [[1]] + [[4, 3, 2]] * len(caches)
    listing = run("cache").stdout  # the caches of one folder at one size are told apart by their bands
    assert listing.count("px (TIFF bands 4,3,2) from") == len(caches) and listing.count("px (TIFF bands 1) from") == 1
    run("pretrain", "--method", "temporal-order", "--data", data, "--out", tmp_path / "video", "--bands", "4,3,2",
        "--image-size", "16", check_error="data.bands chooses bands of TIFF images; temporal-order reads its own "
                                          "data (videos, frames or interactions): leave out --bands")


def test_an_encoder_giving_nan_features_is_refused_in_one_line(split_folder, tmp_path):
    """A weights file holding a NaN (a diverged run's BatchNorm) gave kNN top-1 0.0, a linear probe
    at chance, a retrieval mAP and an embeddings.npy of NaN, without a word, and cluster a torch
    traceback. Every command now stops at the features, in one line, before saving any of them."""
    import numpy as np
    import pytest
    from safetensors.torch import save_file

    from selfsup.encoder import load_encoder
    from selfsup.errors import UserError
    from selfsup.eval.features import refuse_nonfinite

    state = load_encoder("random:resnet18", image_size=16, small_stem=False).backbone.net.state_dict()
    state["layer4.1.bn2.running_var"][0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    encoder = ["--checkpoint", f"weights:{weights}", "--backbone", "resnet18", "--image-size", "16", "--no-progress"]
    said = "resnet18 weights (nan.safetensors) gives NaN or infinite features for 48 of 48 images; check the weights file"
    out = tmp_path / "out" / "e.npy"
    # streamed in chunks (no image cache yet), then from the cache that the evaluation builds
    run("embed", *encoder, "--data", split_folder / "train", "--out", out, check_error=said)
    for protocol in ("knn", "linear", "retrieval", "finetune"):
        run("eval", protocol, *encoder, "--data", split_folder, check_error=said)
    run("embed", *encoder, "--data", split_folder / "train", "--out", out, check_error=said)
    assert not (tmp_path / "out").exists()
    run("cluster", *encoder, "--data", split_folder / "train", "--out", tmp_path / "c", check_error=said)
    # A sound encoder whose fine-tuning diverges had a test top-1 at chance, and no word either.
    run("eval", "finetune", "--checkpoint", "random:resnet18", "--image-size", "16", "--no-small-stem", "--data",
        split_folder, "--lr", "1e6", "--epochs", "3", "--min-steps", "6", "--no-progress",
        check_error="fine-tuning diverged: its loss is nan at step 6 of 6; lower its learning rate (--lr 100000.0)")

    run_encoder = SimpleNamespace(description="simclr resnet18, 1 epoch (run)", weights_file_sha256=None,
                                  init_seed=None, checkpoint={})
    with pytest.raises(UserError, match=r"for 1 of 2 images; the checkpoint has diverged \(or is damaged\): use "
                                        r"an earlier checkpoint, or pretrain again with a lower learning rate \(lr=\)"):
        refuse_nonfinite(torch.tensor([[0.0, np.inf], [1.0, 0.0]]), run_encoder)
