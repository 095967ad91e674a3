"""Cross-process helpers that are no-ops in a single process, so every loss runs in a CPU test."""
from __future__ import annotations

import atexit
import contextlib
import gc
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from .console import launched_by_torchrun
from .errors import UserError


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of its own slice, summed over
    every process's loss (the gradient of the total loss, as if one process held all the data)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Sum every process's gradient and keep this process's slice in one collective: a
        # reduce-scatter moves half the bytes of an all-reduce followed by slicing.
        own_slice = grad.new_empty((grad.shape[0] // torch_dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter(own_slice, grad.contiguous())
        return own_slice


# PyTorch renamed reduce_scatter_tensor (deprecated from 2.14, with a warning on every process).
_reduce_scatter = getattr(torch_dist, "reduce_scatter_single", None) or torch_dist.reduce_scatter_tensor


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) from all processes in rank order, keeping gradients; x itself in
    one process."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all processes in rank order, without gradients."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        torch_dist.all_reduce(x)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.MAX)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size() if is_distributed() else x


def broadcast_from_first(x: torch.Tensor) -> torch.Tensor:
    """The first process's `x` on every process."""
    if is_distributed():
        x = x.clone()
        torch_dist.broadcast(x, src=0)
    return x


def setup(device_name: str) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on
    CPUs. A no-op in a single process or when already joined. Whether it joined."""
    if not launched_by_torchrun() or is_distributed():
        return False
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    # The other processes wait while the first decodes the data into the cache, which takes more
    # than NCCL's default 10 minutes on a large dataset.
    raw = os.environ.get("SELFSUP_DIST_TIMEOUT_MINUTES", "120")
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"SELFSUP_DIST_TIMEOUT_MINUTES must be a whole number of minutes, 1 or more; got {raw!r}")
    torch_dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=int(raw)))
    atexit.register(_leave_if_still_joined)  # for a Trainer made from Python, outside process_group()
    return True


def _leave_if_still_joined() -> None:
    if is_distributed():
        with contextlib.suppress(Exception):
            torch_dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name: str):
    """Under torchrun: join the process group for the work inside and leave it after, while the
    interpreter is whole. A gloo group left for the interpreter's exit to tear down aborted a run
    that had succeeded ("terminate called without an active exception", SIGABRT: its worker
    threads outlived Python's objects). A no-op in one process or when the caller joined the group."""
    if not setup(device_name):
        yield
        return
    try:
        yield
    except BaseException as error:
        # The failed run's frames hold its DDP wrapper, whose reducer must go before the group it
        # uses; the traceback keeps its lines without them.
        traceback.clear_frames(error.__traceback__)
        gc.collect()
        with contextlib.suppress(Exception):  # the error that stopped the work is the one to report
            torch_dist.destroy_process_group()
        raise
    gc.collect()  # the run's DDP wrapper, held in reference cycles, goes before the group it uses
    torch_dist.barrier()  # every process done with its collectives before any closes its connections
    torch_dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def all_gather_objects(obj) -> list:
    """`obj` from every process, in rank order (pickled between our own processes only)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def on_every_process(work):
    """`work()` on every process; a UserError on any of them stops them all, reported once, by the
    first process (each distinct message once, naming the processes it came from when they differ),
    so that no process is left waiting in a collective for one that gave up."""
    if not is_distributed():
        return work()
    try:
        result, problem = work(), None
    except UserError as e:
        result, problem = None, str(e)
    problems = all_gather_objects(problem)
    if all(p is None for p in problems):
        return result
    by_message: dict[str, list[int]] = {}
    for process, p in enumerate(problems):
        if p is not None:
            by_message.setdefault(p, []).append(process)
    message, ranks = next(iter(by_message.items()))
    if len(by_message) == 1 and ranks in ([0], list(range(len(problems)))):  # the first's, or everyone's
        refuse(message)
    refuse("; ".join(f"on process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {p}"
                     for p, ranks in by_message.items()))


def refuse(message: str):
    """Stop every process on a refusal they all reached: the first says it (a UserError, one line),
    the others exit quietly."""
    if is_main():
        raise UserError(message)
    raise SystemExit(2)


def is_peer_failure(error: BaseException) -> bool:
    """Whether a collective failed because another process of the job stopped."""
    text = str(error)
    return isinstance(error, getattr(torch_dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def data_parallel(method: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`method` in DistributedDataParallel. Buffers that every process already keeps equal through
    its own collectives (MoCo's queue: each process enqueues every process's keys) are left out of
    DDP's broadcast from the first process before each forward: 32 MB a step for 65,536 keys."""
    from torch.nn.parallel import DistributedDataParallel

    from .nn.queue import Queue

    kept_equal = [f"{name}.{buffer}" for name, module in method.named_modules() if isinstance(module, Queue)
                  for buffer, _ in module.named_buffers(recurse=False)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, kept_equal)
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=getattr(method, "may_skip_parameters", False))
