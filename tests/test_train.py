"""The training loop end to end on tiny data: run folder, monitors, resume, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup
from selfsup.config import load_yaml, merge_dicts
from selfsup.errors import UserError
from selfsup.methods import build_method
from selfsup.train import run_pretraining

from conftest import TINY_RUN, write_dataset

REPO = Path(__file__).resolve().parents[1]


def tiny(data, out, **extra):
    return merge_dicts(TINY_RUN, merge_dicts({"data": {"path": str(data)}, "out": str(out)}, extra))


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_network_is_given_the_memory_format_train_channels_last_asks(labelled_folder, tmp_path, monkeypatch,
                                                                         channels_last):
    import selfsup.train as train_module
    inputs = []  # what the first convolution is given

    def build_and_watch(cfg):
        method = build_method(cfg)
        method.backbone.net.conv1.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        return method
    monkeypatch.setattr(train_module, "build_method", build_and_watch)
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1, "channels_last": channels_last}))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert len(inputs) > 4  # the steps' views and the kNN monitor's images
    assert all(x.is_contiguous(memory_format=layout) and x.shape[1] == 3 and min(x.shape[2:]) > 1 for x in inputs)


def test_pretrain_writes_checkpoint_config_metrics_and_curves(labelled_folder, tmp_path, monkeypatch):
    import selfsup.train as train_module
    drawn = []  # the epochs each drawing of curves.png showed
    draw = train_module.plot_training_curves
    monkeypatch.setattr(train_module, "plot_training_curves",
                        lambda metrics, out: drawn.append([m["epoch"] for m in metrics]) or draw(metrics, out))
    result = selfsup.pretrain(data=labelled_folder, out=tmp_path / "run", epochs=2, batch_size=8, image_size=16,
                              backbone="resnet18", small_stem=False, show_progress=False)
    run = tmp_path / "run"
    assert result.checkpoint == run / "last.pt" and result.checkpoint.is_file()
    from selfsup.outputs import current_umask
    assert result.checkpoint.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    assert (run / "config.yaml").read_text().splitlines()[1] == "method: simclr"  # after selfsup's header
    assert (run / "curves.png").stat().st_size > 1000
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    for key in ("loss", "lr", "std_ratio", "effective_rank", "images_per_s"):
        assert key in lines[-1]
    assert 0 <= lines[-1]["knn_top1"] <= 1  # class folders -> kNN on the held-out part
    assert 0 < lines[-1]["std_ratio"] <= 1.5
    # With each kNN reading (every epoch of two here), and not again at the end with the same epochs.
    assert drawn == [[1], [1, 2]], drawn
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["position"] == {"epoch": 2, "batch": 0, "step": 2 * (34 // 8)}
    assert checkpoint["config"]["train"]["epochs"] == 2


def test_a_new_run_where_one_died_before_its_first_checkpoint_starts_its_metrics_afresh(labelled_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 9.0}) + "\n")  # no last.pt beside it
    selfsup.pretrain(data=labelled_folder, out=run, epochs=1, batch_size=8, image_size=16, backbone="resnet18",
                     small_stem=False, show_progress=False)
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1] and lines[0]["loss"] != 9.0


def test_collapse_monitor_statistics():
    from selfsup.monitor import effective_rank, std_ratio
    spread = torch.randn(512, 64)
    collapsed = torch.randn(1, 64).repeat(512, 1) + 1e-4 * torch.randn(512, 64)
    assert 0.9 < std_ratio(spread).item() < 1.1
    assert std_ratio(collapsed).item() < 0.01
    assert effective_rank(spread).item() > 50
    one_direction = torch.randn(512, 1) * torch.randn(1, 64)
    assert effective_rank(one_direction).item() == pytest.approx(1.0, abs=1e-3)


def test_collapse_warning_is_printed(labelled_folder, tmp_path, capsys):
    # A threshold above any real value makes the warning fire: the check is wired to the metric.
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1, "collapse_warning": 1.0}))
    assert "may be collapsing" in capsys.readouterr().err


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "selfsup", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


KILL_ARGS = ["--backbone", "resnet18", "--no-small-stem", "--image-size", "16", "--epochs", "3",
             "--batch-size", "8", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run every killed-and-resumed run must reproduce, trained once, in this process."""
    from selfsup.cli import main
    root = tmp_path_factory.mktemp("kill")
    data = write_dataset(root / "data", per_class=24, size=16)
    torch.set_num_threads(1)
    assert main(["pretrain", "--data", str(data), "--out", str(root / "whole"), *KILL_ARGS]) == 0
    return data, torch.load(root / "whole" / "last.pt", weights_only=True)


@pytest.mark.parametrize("every_steps", [0, 3])
def test_killed_run_resumes_to_bitwise_identical_weights(tmp_path, uninterrupted, every_steps):
    from conftest import assert_same_state
    data, whole = uninterrupted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads as the uninterrupted run
    killed_dir = tmp_path / "killed"
    args = ["--data", str(data), *KILL_ARGS, "--set", f"train.checkpoint_every_steps={every_steps}"]
    killed = _cli("pretrain", "--out", str(killed_dir), *args, env=env)
    deadline = time.time() + 300
    while not (killed_dir / "last.pt").exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)  # no chance to clean up: only the atomic last.pt survives
    killed.wait()
    at_kill = torch.load(killed_dir / "last.pt", weights_only=True)["position"]
    assert at_kill["epoch"] < 3, "the run ended before it could be killed; the test proves nothing"

    resumed = _cli("pretrain", "--out", str(killed_dir), "--resume", "--no-progress", env=env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_same_state(whole, torch.load(killed_dir / "last.pt", weights_only=True))
    epochs_logged = [json.loads(l)["epoch"] for l in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs_logged == [1, 2, 3]


def test_batch_larger_than_dataset(labelled_folder, tmp_path):
    with pytest.raises(UserError, match=r"batch_size=64 is larger than the 35 training images"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"batch_size": 64}))
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next((labelled_folder / "circle").iterdir()), one / "a.png")
    with pytest.raises(UserError, match=r"batch_size=2 is larger than the 1 training image in "):
        run_pretraining(tiny(one, tmp_path / "run", train={"batch_size": 2}))


def test_resume_without_checkpoint_and_rerun_without_resume(labelled_folder, tmp_path):
    with pytest.raises(UserError, match="resume=True: no checkpoint"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run"), resume=True)
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1}))
    with pytest.raises(UserError, match="already holds a run"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1}))
    with pytest.raises(UserError, match="train.epochs cannot change"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 3}), resume=True)
    with pytest.raises(UserError, match="written by method 'simclr'"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run", method="byol"), resume=True)
    with pytest.raises(UserError, match=r"its preset cannot change \(saved 'cifar', given 'imagenet'\)"):
        run_pretraining({**tiny(labelled_folder, tmp_path / "run", train={"epochs": 1}), "preset": "imagenet"},
                        resume=True)


def test_resume_on_other_data_is_refused(labelled_folder, tmp_path):
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1}))
    fewer = write_dataset(tmp_path / "fewer", per_class=6)
    with pytest.raises(UserError, match=r"holds 18 images, not the 36 images this run was trained on"):
        run_pretraining(tiny(fewer, tmp_path / "run", train={"epochs": 1}), resume=True)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for folder in labelled_folder.iterdir():
        folder.rename(renamed / f"x{folder.name}")
    with pytest.raises(UserError, match=r"holds 36 images, as many as this run was trained on, but not the same "
                                        r"files \(renamed, or others\); resume with the run's data \(data=PATH"):
        run_pretraining(tiny(renamed, tmp_path / "run", train={"epochs": 1}), resume=True)
    # The data gone from where the run found it: --data says where it is now.
    labelled_folder.rmdir()
    with pytest.raises(UserError, match=r"resume=True: the run's data, '.*', does not exist; if the data moved, "
                                        r"resume with data=PATH where it is now"):
        run_pretraining({"out": str(tmp_path / "run")}, resume=True)
    for folder in renamed.iterdir():
        folder.rename(renamed / folder.name[1:])
    run_pretraining({"out": str(tmp_path / "run"), "data": {"path": str(renamed)}}, resume=True)  # resumes (and ends)
    # config.yaml says where the data is now, as last.pt does: a new run from it finds the data.
    assert load_yaml(tmp_path / "run" / "config.yaml")["data"]["path"] == str(renamed)


def test_a_run_folder_that_holds_images_is_refused(labelled_folder, tmp_path):
    """The run's last.pt and curves.png went among the images, and curves.png became one of them."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.JPG").write_bytes(b"")
    (tmp_path / "photos" / "notes.txt").write_text("")
    with pytest.raises(UserError, match=r"^out='.*photos' holds images \(e.g. 'a.JPG'\): the run's files would "
                                        r"mix with them, and its pictures become images of that folder; choose a "
                                        r"new or empty `out`$"):
        run_pretraining(tiny(labelled_folder, tmp_path / "photos"))
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.JPG", "notes.txt"]


def test_a_run_folder_given_as_data_is_refused(labelled_folder, tmp_path):
    """--data and --out swapped: the run folder's pictures were the images to train on (its one
    curves.png refused as fewer than a batch, more trained on), and the run was written among the images."""
    run = tmp_path / "runs" / "simclr"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    write_dataset(run, per_class=1)  # the run's pictures, where --out's figures would be
    with pytest.raises(UserError, match=r"^data='.*simclr' is a run folder \(it holds last.pt\), not images; give the "
                                        r"images to pretrain on as `data` and the run folder as `out`$"):
        run_pretraining(tiny(run, labelled_folder, train={"batch_size": 2}))
    assert sorted(p.name for p in labelled_folder.iterdir()) == ["circle", "square", "stripes"]


def test_a_run_folder_that_is_a_file_is_refused(labelled_folder, tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(UserError, match=r"^out='.*run' is a file, not a folder; choose another `out`$"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run"))
    assert (tmp_path / "run").read_text() == "notes"


def test_a_refused_run_writes_nothing_and_keeps_the_users_files(labelled_folder, tmp_path):
    mine = tmp_path / "proj" / "config.yaml"
    mine.parent.mkdir()
    mine.write_text("# my settings\ntrain:\n  epochs: 3\n")
    with pytest.raises(UserError, match="holds a config.yaml that selfsup did not write"):
        run_pretraining(tiny(labelled_folder, mine.parent))
    assert mine.read_text() == "# my settings\ntrain:\n  epochs: 3\n"
    with pytest.raises(UserError, match="larger than the"):
        run_pretraining(tiny(labelled_folder, tmp_path / "refused", train={"batch_size": 64}))
    assert not (tmp_path / "refused" / "config.yaml").exists()
    # Settings that are not sections, or out of their range: one line each, before any data is read.
    for user, message in [({"train": 5}, "'train' is a section and must be a mapping"),
                          ({"simclr": {"temperature": 0}}, r"simclr.temperature must be in \[1e-06, inf\]"),
                          ({"simclr": {"views": {"flip_prob": 5}}}, r"simclr.views.flip_prob must be in \[0.0, 1.0\]"),
                          ({"simclr": {"views": {"crop_scale": [0.9, 0.1]}}}, "crop_scale must be in increasing order"),
                          ({"backbone": {"name": "resnet18", "patch_size": 4}}, "patch_size= is for ViTs"),
                          ({"method": "egomotion", "egomotion": {"crop_scale": [0.9, 0.2]}},
                           "egomotion.crop_scale must be in increasing order"),
                          ({"backbone": {"name": "vit-tiny", "patch_size": 0}},
                           r"backbone.patch_size \(patch_size=\) must be in \[1, inf\]")]:
        with pytest.raises(UserError, match=message):
            run_pretraining(merge_dicts(tiny(tmp_path / "nowhere", tmp_path / "r"), user))


def test_the_python_api_takes_the_method_from_the_config(labelled_folder, tmp_path):
    result = selfsup.pretrain(data=labelled_folder, out=tmp_path / "run", config={"method": "byol"}, epochs=1,
                              batch_size=8, image_size=16, backbone="resnet18", small_stem=False, show_progress=False)
    assert result.config.method == "byol"
    resumed = selfsup.pretrain(out=tmp_path / "run", resume=True, show_progress=False)  # the run's own method
    assert resumed.config.method == "byol"
    # Its encoder at its training size, or at another one (transfer to data of another resolution).
    trained, larger = selfsup.load_encoder(tmp_path / "run"), selfsup.load_encoder(tmp_path / "run", image_size=24)
    assert (trained.image_size, larger.image_size, larger.cache_size) == (16, 24, 24) and trained.key != larger.key


def test_unwritable_run_folder(labelled_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to the run folder"):
        run_pretraining(tiny(labelled_folder, blocker / "run"))


def test_missing_data_and_unknown_names(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_pretraining(tiny(tmp_path / "nowhere", tmp_path / "run"))
    with pytest.raises(UserError, match="unknown backbone 'resnet19'.*resnet18"):
        run_pretraining(tiny(tmp_path, tmp_path / "run2", backbone={"name": "resnet19"}))
    with pytest.raises(UserError, match="unknown timm model"):
        run_pretraining(tiny(tmp_path, tmp_path / "run3", backbone={"name": "timm:resnet_nonexistent"}))


def test_in_process_interruption_resumes_exactly(tmp_path, monkeypatch):
    from conftest import assert_same_state, interrupted_then_resumed
    data = write_dataset(tmp_path / "data", per_class=10, size=16)
    user = tiny(data, tmp_path, train={"epochs": 3, "checkpoint_every_steps": 2})
    whole, at_stop, resumed = interrupted_then_resumed(user, stop_after_steps=5, monkeypatch=monkeypatch)
    assert at_stop["position"]["step"] == 4 and at_stop["position"]["epoch"] == 1  # mid-epoch checkpoint
    assert_same_state(whole, resumed)


def test_pictures_are_redrawn_at_every_checkpoint(labelled_folder, tmp_path, monkeypatch):
    from selfsup.train import Trainer
    drawn = []
    original = Trainer.save_pictures
    monkeypatch.setattr(Trainer, "save_pictures", lambda self: (drawn.append(self.position.step), original(self)))
    run_pretraining(tiny(labelled_folder, tmp_path / "run", method="inpainting",
                         train={"epochs": 1, "checkpoint_every_steps": 2}))  # 4 steps of 8 images
    assert drawn == [2, 4]  # mid-epoch at step 2, then the epoch's end
    assert (tmp_path / "run" / "pictures.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# Optimizer pieces against their definitions, in float64


@pytest.mark.parametrize("seed", range(3))
def test_lars_steps_match_a_float64_reference(seed):
    """You et al. 2017 as SimCLR uses it: u = g + wd w; for adapted tensors u *= eta |w| / |u|;
    buffer = momentum buffer + u; w -= lr buffer. Biases (lars=False) take plain SGD steps."""
    from selfsup.optim import LARS
    rng = np.random.default_rng(seed)
    lr, momentum, wd, eta = 0.7, 0.9, 1e-2, 1e-3
    weights = [rng.normal(size=(5, 3)), rng.normal(size=(5,))]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    optimizer = LARS([{"params": params[:1], "weight_decay": wd, "lars": True},
                      {"params": params[1:], "weight_decay": 0.0, "lars": False}],
                     lr=lr, momentum=momentum, eta=eta)
    buffers = [None, None]
    for _ in range(3):
        grads = [rng.normal(size=w.shape) * rng.uniform(0.1, 10) for w in weights]
        for param, grad in zip(params, grads):
            param.grad = torch.tensor(grad)
        optimizer.step()
        for i, (w, g) in enumerate(zip(weights, grads)):
            u = g + wd * w if i == 0 else g
            if i == 0:
                u = u * eta * np.linalg.norm(w) / np.linalg.norm(u)
            buffers[i] = u if buffers[i] is None else momentum * buffers[i] + u
            weights[i] = w - lr * buffers[i]
        for param, w in zip(params, weights):
            np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_gradients_are_clipped_one_tensor_at_a_time(seed):
    """DINO's clip_gradients: each gradient g becomes g * min(1, c / (|g| + 1e-6)), on its own."""
    from selfsup.optim import clip_gradients_per_tensor
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=shape) * scale for shape, scale in [((4, 3), 0.01), ((7,), 1.0), ((2, 2, 3), 30.0)]]
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = torch.tensor(grad)
    params.append(torch.nn.Parameter(torch.zeros(3)))  # no gradient: left alone
    clip_gradients_per_tensor(params, 1.5)
    for param, grad in zip(params, grads):
        expected = grad * min(1.0, 1.5 / (np.linalg.norm(grad) + 1e-6))
        np.testing.assert_allclose(param.grad.numpy(), expected, rtol=1e-12)
    assert params[-1].grad is None


def test_the_trainer_clips_every_trained_gradient_before_the_step(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", per_class=4, size=16)
    norms = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        norms.append(max(float(p.grad.norm()) for group in self.param_groups for p in group["params"]
                         if p.grad is not None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run_pretraining(tiny(data, tmp_path / "off", train={"epochs": 1}))
    unclipped = max(norms)
    assert unclipped > 0.05
    norms.clear()
    run_pretraining(tiny(data, tmp_path / "on", train={"epochs": 1}, optim={"clip_grad": 0.05}))
    assert norms and max(norms) <= 0.05 * (1 + 1e-5)


def test_resuming_what_this_version_cannot_continue_exactly_is_refused(labelled_folder, tmp_path):
    """A checkpoint whose optimizer groups or step count no longer fit (a run started by another
    selfsup version): a one-line refusal, not a traceback or a silently shifted schedule."""
    from selfsup.checkpoint import save_checkpoint
    user = tiny(labelled_folder, tmp_path / "run", train={"epochs": 2})
    run_pretraining(user)
    finished = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps = finished["position"]["step"] // 2

    def resume_from(position, optimizer):
        content = {k: v for k, v in finished.items() if k not in ("format", "version")}
        save_checkpoint(tmp_path / "run" / "last.pt", **{**content, "position": position, "optimizer": optimizer})
        return run_pretraining(user, resume=True)

    halfway = {"epoch": 1, "batch": 0, "step": steps}
    groups = finished["optimizer"]["param_groups"]  # one more group than now, same parameters
    split = [{**groups[0], "params": groups[0]["params"][:1]}, {**groups[0], "params": groups[0]["params"][1:]}]
    regrouped = {**finished["optimizer"], "param_groups": split + groups[1:]}
    with pytest.raises(UserError, match=r"holds an optimizer state that this selfsup version groups otherwise"):
        resume_from(halfway, regrouped)
    with pytest.raises(UserError, match=rf"at step {steps + 1}, batch 0 of epoch 2, which {steps} steps per epoch"):
        resume_from({**halfway, "step": steps + 1}, finished["optimizer"])
    assert resume_from(halfway, finished["optimizer"]).metrics[-1]["epoch"] == 2  # the same state goes on


def test_a_step_names_its_phases_for_the_profiler_and_only_then(tmp_path, monkeypatch):
    # bench/step_profile.py reads these ranges; outside a profiler they must cost nothing.
    from contextlib import nullcontext
    from torch.profiler import profile
    from selfsup import config as config_lib, phases
    from selfsup.train import Trainer
    data = write_dataset(tmp_path / "data", per_class=4, size=16)
    trainer = Trainer(config_lib.resolve(tiny(data, tmp_path / "run", method="byol")), None, show_progress=False)
    images = next(iter(trainer.stream.epoch(0)))
    with profile() as prof:
        trainer.step(images)
    names = {event.key for event in prof.key_averages()}
    assert {"selfsup.forward", "selfsup.views", "selfsup.backward", "selfsup.optimizer", "selfsup.after_step",
            "selfsup.metrics"} <= names
    entered = []
    monkeypatch.setattr(phases, "record_function", lambda name: entered.append(name) or nullcontext())
    trainer.step(images)
    assert entered == []
    with profile():
        trainer.step(images)
    assert "selfsup.forward" in entered  # the stand-in is the one that phase() calls


def test_a_run_whose_loss_diverges_stops_in_one_line_before_saving_it(tmp_path, monkeypatch):
    from selfsup.methods import simclr
    from selfsup.train import run_pretraining
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    user = {**TINY_RUN, "data": {"path": str(data), "image_size": 16}, "out": str(tmp_path / "run"),
            "train": {**TINY_RUN["train"], "epochs": 2, "checkpoint_every_steps": 1}}
    real, steps = simclr.nt_xent, {"n": 0}

    def diverging(*args, **kwargs):
        steps["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if steps["n"] > 2 else loss
    monkeypatch.setattr(simclr, "nt_xent", diverging)
    with pytest.raises(UserError, match=r"^the loss became nan in epoch 2: the run diverged \(last.pt holds its "
                                        r"last finite state\); start a new run with a lower learning rate: "
                                        r"selfsup\.pretrain\("
                                        r"config='.*config.yaml', lr=0.03, out=NEW_DIR\) \(this one: lr=0.12\)$"):
        run_pretraining(user)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["position"] == {"epoch": 1, "batch": 0, "step": 2}  # after epoch 1, the last finite step
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_run_folder_inside_its_data_is_refused(labelled_folder, tmp_path):
    for out in (labelled_folder, labelled_folder / "runs" / "a"):
        with pytest.raises(UserError, match="lies inside data='.*choose a run folder outside the data"):
            run_pretraining(tiny(labelled_folder, out))
    assert not (labelled_folder / "runs").exists()


def _scalars(where: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reading of a run's events (or of one events file): {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(where if where.is_file() else where / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_follow_the_metrics_and_a_resumed_run_draws_the_same_curve(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from conftest import interrupted_then_resumed
    steps_seen = {}
    from selfsup.train import Trainer
    original_step = Trainer.step

    def step_and_note_loss(self, images):  # each step's loss as the step computed it
        original_step(self, images)
        steps_seen.setdefault(str(self.out), []).append(
            (self.epoch_sums["loss"].item(), self.epoch_sums["steps"].item(), self.position.step))

    monkeypatch.setattr(Trainer, "step", step_and_note_loss)
    data = write_dataset(tmp_path / "data", per_class=12, size=16)  # 35 training images: 4 steps of 8 an epoch
    user = tiny(data, tmp_path, train={"epochs": 3, "tensorboard": True, "log_every_steps": 3,
                                       "checkpoint_every_steps": 5})
    _, at_stop, _ = interrupted_then_resumed(user, stop_after_steps=7, monkeypatch=monkeypatch)
    whole, resumed = _scalars(tmp_path / "whole"), _scalars(tmp_path / "killed")

    # Each step's own loss, from the epoch's running sums the steps left behind.
    own, previous = {}, (0.0, 0.0)
    for loss_sum, steps, step in steps_seen[str(tmp_path / "whole")]:
        if steps == 1:
            previous = (0.0, 0.0)
        own[step] = loss_sum - previous[0]
        previous = (loss_sum, steps)
    # step/loss: the mean of the last 3 steps, every 3 steps, across epochs' ends.
    expected = [(s, np.mean([own[s - 2], own[s - 1], own[s]])) for s in (3, 6, 9, 12)]
    assert [s for s, _ in whole["step/loss"]] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in whole["step/loss"]], [v for _, v in expected], rtol=1e-5)
    # epoch/: every figure of metrics.jsonl, at the epoch's last step.
    lines = [json.loads(l) for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in whole["epoch/loss"]] == [l["step"] for l in lines] == [4, 8, 12]
    np.testing.assert_allclose([v for _, v in whole["epoch/loss"]], [l["loss"] for l in lines], rtol=1e-6)
    assert {f"epoch/{k}" for k in lines[-1] if k not in ("epoch", "step")} <= set(whole)
    # Killed after step 7, resumed from its checkpoint in epoch 2 (step 5): what the killed run
    # wrote after step 5 (step/ at 6) is hidden, what it wrote up to it stays, the step/ point at 6
    # still covers steps 4 to 6, and the curves are the uninterrupted run's.
    assert (at_stop["position"]["step"], at_stop["position"]["batch"]) == (5, 1)
    before_the_kill = sorted((tmp_path / "killed" / "tensorboard").glob("events.*"))[0]
    assert [s for s, _ in _scalars(before_the_kill)["step/loss"]] == [3, 6]
    timings = {"epoch/epoch_seconds", "epoch/images_per_s"}
    assert set(resumed) == set(whole)
    assert {t: v for t, v in resumed.items() if t not in timings} == {t: v for t, v in whole.items() if t not in timings}


def test_tensorboard_turned_on_at_resume_draws_the_epochs_before_it(labelled_folder, tmp_path):
    pytest.importorskip("tensorboard")
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 2}))
    run_pretraining({"out": str(tmp_path / "run"), "train": {"tensorboard": True}}, resume=True)  # ends at once
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing trained: nothing opened
    half = tmp_path / "half"
    run_pretraining(tiny(labelled_folder, half, train={"epochs": 2}))
    checkpoint = torch.load(half / "last.pt", weights_only=True)
    lines = (half / "metrics.jsonl").read_text().splitlines()
    (half / "metrics.jsonl").write_text(lines[0] + "\n")  # as if stopped at the end of epoch 1
    from selfsup.checkpoint import save_checkpoint
    first = torch.load(half / "last.pt", weights_only=True)
    first["position"] = {"epoch": 1, "batch": 0, "step": checkpoint["position"]["step"] // 2}
    save_checkpoint(half / "last.pt", **{k: v for k, v in first.items() if k not in ("format", "version")})
    run_pretraining({"out": str(half), "train": {"tensorboard": True}}, resume=True)
    scalars = _scalars(half)
    assert [s for s, _ in scalars["epoch/loss"]] == [json.loads(l)["step"] for l in
                                                     (half / "metrics.jsonl").read_text().splitlines()]
    assert len(scalars["epoch/loss"]) == 2  # epoch 1 from metrics.jsonl, epoch 2 as it ran


def test_tensorboard_without_its_package_is_refused_before_any_work(labelled_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` meets without the package
    with pytest.raises(UserError, match=r"tensorboard=True needs the tensorboard package: pip install"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"tensorboard": True}))
    assert not (tmp_path / "run").exists()
    pytest.importorskip("tensorboard")
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1, "tensorboard": True}))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # resumed where the package is missing
    with pytest.raises(UserError, match=r"this run writes TensorBoard scalars, which need the tensorboard package: "
                                        r"pip install .*; or resume with config=\{'train': \{'tensorboard': False\}\}"):
        run_pretraining({"out": str(tmp_path / "run")}, resume=True)


def test_the_compile_mode_reaches_the_backbone_and_needs_compile(labelled_folder, tmp_path, monkeypatch):
    from selfsup import train
    from selfsup.backbones import Backbone
    modes = []
    monkeypatch.setattr(Backbone, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    monkeypatch.setattr(train, "compile_views", lambda: None)  # the views' own compile is tested in test_views
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1, "compile": True,
                                                                    "compile_mode": "reduce-overhead"}))
    assert modes == ["reduce-overhead"]
    with pytest.raises(UserError, match="compile_mode 'max-autotune' applies to a compiled run: add compile=True"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run2", train={"compile_mode": "max-autotune"}))
    with pytest.raises(UserError, match="compile_mode"):
        run_pretraining(tiny(labelled_folder, tmp_path / "run3", train={"compile": True, "compile_mode": "fast"}))


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_line_and_keeps_the_previous(tmp_path):
    # torch.save turns a failed write into "RuntimeError: ... unexpected pos 704 vs 598": a traceback.
    import resource
    script = ("import torch\nfrom selfsup.checkpoint import save_checkpoint\nfrom selfsup.errors import UserError\n"
              f"save_checkpoint({str(tmp_path / 'last.pt')!r}, weights=torch.ones(10))\n"
              "try:\n"
              f"    save_checkpoint({str(tmp_path / 'last.pt')!r}, weights=torch.ones(1_000_000))\n"
              "except UserError as e:\n    print(e)\n")
    limit = 200_000  # bytes: the first checkpoint fits, the second (4 MB) does not
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert done.returncode == 0, done.stderr
    # A size limit (EFBIG), not a full disk: freeing space would not help, so it is not suggested.
    assert done.stdout.strip() == (f"cannot write {str(tmp_path / 'last.pt')!r} (File too large; the previous "
                                   f"checkpoint is kept there); choose a writable `out`")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["weights"].shape == (10,)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_run_asked_to_stop_saves_after_the_step_and_resumes_to_the_same_weights(tmp_path, uninterrupted, stop):
    # A scheduler's SIGTERM (SLURM, Kubernetes) or Ctrl-C: the work since the last checkpoint is kept.
    from conftest import assert_same_state
    data, whole = uninterrupted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    run = subprocess.Popen([sys.executable, "-m", "selfsup", "pretrain", "--out", str(out), "--data", str(data),
                            *KILL_ARGS], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as at a terminal
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    first = torch.load(out / "last.pt", weights_only=True)["position"]  # the end of epoch 1
    run.send_signal(stop)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 128 + stop, err
    at_stop = torch.load(out / "last.pt", weights_only=True)["position"]
    assert first["step"] < at_stop["step"] < 3 * first["step"], "no checkpoint at the stop, or the run ended first"
    how = "interrupted" if stop == signal.SIGINT else "stopped by SIGTERM"
    where = (f"at the end of epoch {at_stop['epoch']} of 3" if at_stop["batch"] == 0 else
             f"in epoch {at_stop['epoch'] + 1} of 3, after step {at_stop['step']} of {3 * first['step']}")
    assert err.strip().splitlines()[-1] == (f"selfsup: {how} {where}, saved in {out / 'last.pt'}; continue with: "
                                            f"selfsup pretrain --out {out} --resume")
    resumed = _cli("pretrain", "--out", str(out), "--resume", "--no-progress", env=env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert_same_state(whole, torch.load(out / "last.pt", weights_only=True))


def test_a_second_run_into_the_folder_a_run_writes_to_is_refused(labelled_folder, tmp_path):
    """Two runs given one --out wrote into it together: the second's checkpoint replaced the
    first's, and metrics.jsonl held both runs' epochs."""
    from selfsup.train import run_folder_lock
    out = tmp_path / "run"
    out.mkdir()
    with run_folder_lock(out):  # as a run in another process holds it
        with pytest.raises(UserError, match=r"^another selfsup run is writing to '.*run'; wait for it to end "
                                            r"\(then resume it with resume=True, if it stopped\), "
                                            r"or choose another `out`$"):
            run_pretraining(tiny(labelled_folder, out, train={"epochs": 1}))
        assert out.is_dir() and not any(out.iterdir())  # left as it was, not removed
    run_pretraining(tiny(labelled_folder, out, train={"epochs": 1}))  # free again: it runs
    assert (out / "last.pt").is_file()


def test_a_scheduler_stop_while_the_images_are_decoded_says_so_and_leaves_no_folder(labelled_folder, tmp_path):
    """SIGTERM before the first step ended the process without a word (status 143), and left the
    empty run folder and a half-built cache behind. (In a process of its own: unhandled, SIGTERM
    would end the test's.)"""
    script = (
        "import os, signal, sys\n"
        "import selfsup.data.decode as decode\n"
        "from selfsup.cli import main\n"
        "real = decode.decode_noting\n"
        "def decode_then_stop(*args):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler, a few images in\n"
        "    return real(*args)\n"
        "decode.decode_noting = decode_then_stop\n"
        f"sys.exit(main(['pretrain', '--data', {str(labelled_folder)!r}, '--out', {str(tmp_path / 'run')!r},"
        " '--image-size', '16', '--epochs', '1', '--no-progress']))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert run.stderr.strip().splitlines()[-1] == ("selfsup: stopped by SIGTERM before training began; nothing was "
                                                   "saved yet: run the same command again")
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()
    assert not list(Path(os.environ["SELFSUP_CACHE"]).glob(".building-*"))  # the cache it was building: removed


def test_monitor_data_is_the_knn_monitors_bank_and_queries_and_nothing_is_held_out(labelled_folder, split_folder,
                                                                                     tmp_path, capsys):
    """--monitor-data: the kNN monitor reads its train/ (memory bank) and test/ (queries) and gives
    the figure an evaluation of the checkpoint gives on them; every training image is trained on."""
    out = tmp_path / "run"
    run_pretraining(merge_dicts(tiny(labelled_folder, out, train={"epochs": 1, "batch_size": 4}),
                                {"data": {"monitor_path": str(split_folder)}}))
    assert (f"monitor: kNN on 18 test images of {split_folder} against its 48 training images, 3 classes from "
            f"subfolders (circle, square, stripes)") in capsys.readouterr().err
    assert torch.load(out / "last.pt", weights_only=True)["position"]["step"] == 36 // 4  # 35 // 4 with one held out
    monitored = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]["knn_top1"]
    evaluated = selfsup.evaluate_knn(out / "last.pt", data=split_folder, k=48, temperature=0.07, record=False,
                                     show_progress=False)
    assert monitored == round(evaluated["top1"], 4)

    # Resumed: the monitor data may move (and is said where), not come or go.
    moved = split_folder.rename(tmp_path / "moved")
    with pytest.raises(UserError, match=r"the run's monitor data, '.*ds', does not exist; if it moved, resume with "
                                        r"monitor_data=PATH where it is now"):
        run_pretraining({"out": str(out)}, resume=True)
    with pytest.raises(UserError, match=r"its kNN monitor reads '.*ds', with nothing of its data held out: give "
                                        r"monitor_data=PATH where that is now"):
        run_pretraining({"out": str(out), "data": {"monitor_path": ""}}, resume=True)
    run_pretraining({"out": str(out), "data": {"monitor_path": str(moved)}}, resume=True)  # finished: lists, ends
    assert load_yaml(out / "config.yaml")["data"]["monitor_path"] == str(moved)

    held_out = tmp_path / "held-out"
    run_pretraining(tiny(labelled_folder, held_out, train={"epochs": 1}))
    with pytest.raises(UserError, match=r"its kNN monitor reads a held-out part of its data, which `monitor_data` "
                                        r"would give back to training: leave it out"):
        run_pretraining({"out": str(held_out), "data": {"monitor_path": str(moved)}}, resume=True)


def test_monitor_data_that_is_missing_or_not_split_is_refused_in_one_line(labelled_folder, tmp_path):
    with pytest.raises(UserError, match=r"monitor_data='.*nowhere' does not exist; give labelled images"):
        run_pretraining(merge_dicts(tiny(labelled_folder, tmp_path / "run"),
                                    {"data": {"monitor_path": str(tmp_path / "nowhere")}}))
    with pytest.raises(UserError, match=r"monitor_data='.*labelled' must hold train/ and test/ \(or val/\) folders"):
        run_pretraining(merge_dicts(tiny(labelled_folder, tmp_path / "run"),
                                    {"data": {"monitor_path": str(labelled_folder)}}))
    image = next((labelled_folder / "circle").iterdir())
    with pytest.raises(UserError, match=r"monitor_data='.*\.png' is a file; give a folder or tar holding train/"):
        run_pretraining(merge_dicts(tiny(labelled_folder, tmp_path / "run"), {"data": {"monitor_path": str(image)}}))
    write_dataset(tmp_path / "other" / "train", per_class=2)
    for name in ("circle", "square"):
        shutil.copytree(labelled_folder / name, tmp_path / "other" / "test" / name)
    with pytest.raises(UserError, match=r"^`monitor_data`: train and test classes differ: only in train: "
                                        r"\['stripes'\]"):
        run_pretraining(merge_dicts(tiny(labelled_folder, tmp_path / "run"),
                                    {"data": {"monitor_path": str(tmp_path / "other")}}))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_nan_features_leave_out_the_monitors_knn_with_a_warning_and_the_run_goes_on(labelled_folder, tmp_path,
                                                                                      monkeypatch, capsys):
    import selfsup.train as train_module
    extract = train_module.extract_features

    def one_nan(*args, **kwargs):
        features = extract(*args, **kwargs)
        features[0, 0] = float("nan")
        return features
    monkeypatch.setattr(train_module, "extract_features", one_nan)
    run_pretraining(tiny(labelled_folder, tmp_path / "run", train={"epochs": 1}))
    assert "epoch 1: the encoder gives NaN or infinite features for 2 of the 36 images of the kNN monitor" \
        in capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["epoch"] == 1 and "knn_top1" not in record
