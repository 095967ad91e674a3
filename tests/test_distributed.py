"""Two processes on the CPU (gloo): the gather, DDP steps, data sharding and resume across processes."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from conftest import TINY_RUN, assert_same_state, write_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch_dist.is_available(), reason="torch.distributed is not built in")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)


def spawn(fn, *args, world: int = 2) -> None:
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


# ---------------------------------------------------------------------------------------------
# The gather: SimCLR over 2 processes x B equals 1 process x 2B


def simclr_problem(batch: int = 6, dim: int = 5, out: int = 4):
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(2 * batch, dim, generator=g), torch.randn(2 * batch, dim, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.ReLU(), torch.nn.Linear(8, out))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return x_a, x_b, model


def simclr_step(model, x_a, x_b):
    from selfsup.losses import nt_xent
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    z_a, z_b = model(torch.cat([x_a, x_b])).chunk(2)
    loss = nt_xent(z_a, z_b, temperature=0.3)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    return loss.detach(), grads, [p.detach().clone() for p in model.parameters()]


def gather_worker(rank, world, port, result_file):
    join(rank, world, port)
    from torch.nn.parallel import DistributedDataParallel
    x_a, x_b, model = simclr_problem()
    half = len(x_a) // world
    mine = slice(rank * half, (rank + 1) * half)
    loss, grads, weights = simclr_step(DistributedDataParallel(model), x_a[mine], x_b[mine])
    losses = [torch.zeros(()) for _ in range(world)]
    torch_dist.all_gather(losses, loss)
    torch.save({"loss": torch.stack(losses).mean(), "grads": grads, "weights": weights}, f"{result_file}.{rank}")
    torch_dist.destroy_process_group()


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    spawn(gather_worker, str(tmp_path / "result"))
    x_a, x_b, model = simclr_problem()
    loss, grads, weights = simclr_step(model, x_a, x_b)
    ranks = [torch.load(tmp_path / f"result.{r}", weights_only=True) for r in range(2)]
    # The mean of the per-process losses is the loss of the whole batch; DDP's averaged
    # gradients are its gradients: the gather sends every process the gradient of its keys.
    torch.testing.assert_close(ranks[0]["loss"], loss, rtol=1e-6, atol=1e-7)
    for g_ddp, g_one in zip(ranks[0]["grads"], grads):
        torch.testing.assert_close(g_ddp, g_one, rtol=1e-5, atol=1e-6)
    for w0, w1, w_one in zip(ranks[0]["weights"], ranks[1]["weights"], weights):
        assert torch.equal(w0, w1)  # the processes stay identical
        torch.testing.assert_close(w0, w_one, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The trainer under two processes


def tiny_user(data, out, **train):
    from selfsup.config import merge_dicts
    return merge_dicts(TINY_RUN, {"data": {"path": str(data)}, "out": str(out),
                                  "train": {"epochs": 3, "batch_size": 8, "seed": 5, **train}})


def trainer_worker(rank, world, port, user_json, resume, stop_after):
    join(rank, world, port)
    from selfsup.train import Trainer, run_pretraining
    if stop_after >= 0:
        original, calls = Trainer.step, {"n": 0}

        def step_then_stop(self, images):
            if calls["n"] == stop_after:
                raise SystemExit(0)  # every process stops at the same step, as after a kill
            calls["n"] += 1
            original(self, images)
        Trainer.step = step_then_stop
    try:
        run_pretraining(json.loads(user_json), resume=resume)
    except SystemExit:
        pass


def test_two_process_run_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=12, size=16)
    whole = tiny_user(data, tmp_path / "whole", checkpoint_every_steps=3)
    killed = tiny_user(data, tmp_path / "killed", checkpoint_every_steps=3)
    spawn(trainer_worker, json.dumps(whole), False, -1)
    spawn(trainer_worker, json.dumps(killed), False, 7)
    at_stop = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    # 4 steps per epoch, a checkpoint every 3 steps: the last one before step 8 is mid-epoch 2.
    assert at_stop["position"] == {"epoch": 1, "batch": 2, "step": 6} and at_stop["world"] == 2
    assert len(at_stop["rng"]["views_per_rank"]) == 2
    assert not torch.equal(at_stop["rng"]["views_per_rank"][0], at_stop["rng"]["views_per_rank"][1])
    spawn(trainer_worker, json.dumps(killed), True, -1)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert_same_state(a, b)
    # The epoch metrics too: each process's running sums of the interrupted epoch were restored.
    records = {run: [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("whole", "killed")}
    assert [r["epoch"] for r in records["killed"]] == [1, 2, 3]
    timing = {"images_per_s", "epoch_seconds"}
    for whole_epoch, resumed_epoch in zip(records["whole"], records["killed"]):
        assert {k: v for k, v in whole_epoch.items() if k not in timing} == \
            {k: v for k, v in resumed_epoch.items() if k not in timing}


def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path, capsys):
    from selfsup.train import run_pretraining
    data = write_dataset(tmp_path / "data", per_class=12, size=16)
    user = tiny_user(data, tmp_path / "run", checkpoint_every_steps=3)
    spawn(trainer_worker, json.dumps(user), False, 4)
    result = run_pretraining(user, resume=True)
    assert "resuming a run of 2 process(es) on 1" in capsys.readouterr().err
    final = torch.load(result.checkpoint, weights_only=True)
    assert final["position"] == {"epoch": 3, "batch": 0, "step": 3 * (35 // 8)} and final["world"] == 1


def test_torchrun_launches_the_cli(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=8, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(data, out):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "selfsup", "pretrain", "--data", str(data), "--out", str(out), "--backbone", "resnet18",
             "--no-small-stem", "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
             "--no-progress", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    proc = torchrun(data, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("selfsup: simclr on") == 1  # one process speaks
    assert json.loads(proc.stdout)["epoch"] == 1  # one JSON object, not one per process
    assert "8 (2 processes x 4)" in proc.stderr
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["world"] == 2
    # Bad data: the first process, which opens it, says so in one line; the others stop quietly
    # (torchrun itself then reports that its workers failed).
    (tmp_path / "empty").mkdir()
    proc = torchrun(tmp_path / "empty", tmp_path / "run2")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("selfsup: error: no images found") == 1
    assert "[rank" not in proc.stderr and "barrier" not in proc.stderr, proc.stderr[-3000:]


# Methods where some parameters get no gradient in some steps (DINO's last layer is frozen in the
# first epoch; iBOT's and distillation's heads see no masked patch in some batches): DDP must
# be told, or the second step fails waiting for gradients that never come.
MULTI_CROP_RUNS = {
    "dino": {"method": "dino", "backbone": {"name": "resnet18-half", "small_stem": False},
             "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2, "local_size": 8,
                      "freeze_last_layer_epochs": 1.0}},
    "ibot": {"method": "ibot", "backbone": {"name": "vit-tiny", "patch_size": 4},
             "ibot": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2, "local_size": 8,
                      "shared_head": False, "mask_probability": 0.5}},
}


@pytest.mark.parametrize("method", sorted(MULTI_CROP_RUNS))
def test_two_process_runs_of_methods_with_parameters_unused_in_a_step(tmp_path, method):
    from selfsup.config import merge_dicts
    data = write_dataset(tmp_path / "data", per_class=12, size=16)
    user = merge_dicts(tiny_user(data, tmp_path / "run"), MULTI_CROP_RUNS[method])
    user["train"]["epochs"] = 2
    spawn(trainer_worker, json.dumps(user), False, -1)
    final = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert final["world"] == 2 and final["position"]["epoch"] == 2
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)


# ---------------------------------------------------------------------------------------------
# Sinkhorn-Knopp over processes that hold different numbers of rows (iBOT's masked patches)


def sinkhorn_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    logits = torch.rand(11, 6, generator=g, dtype=torch.float64) * 2 - 1
    logits[4] += 5.0  # far from the rest, as prototypes with a learned gain allow
    return logits


def sinkhorn_worker(rank, world, port, result_file):
    join(rank, world, port)
    from selfsup.losses import sinkhorn_knopp
    mine = sinkhorn_rows()[:7] if rank == 0 else sinkhorn_rows()[7:]  # 7 rows and 4 rows
    torch.save(sinkhorn_knopp(mine.float(), 0.04, iterations=3), f"{result_file}.{rank}")
    torch_dist.destroy_process_group()


def test_sinkhorn_knopp_over_two_unequal_processes_equals_one_process_with_all_rows(tmp_path):
    from selfsup.losses import sinkhorn_knopp
    spawn(sinkhorn_worker, str(tmp_path / "targets"))
    parts = [torch.load(tmp_path / f"targets.{r}", weights_only=True) for r in range(2)]
    whole = sinkhorn_knopp(sinkhorn_rows(), 0.04, iterations=3)
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(torch.cat(parts).double(), whole, rtol=1e-4, atol=1e-6)
