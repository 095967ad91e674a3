"""Scale on paper: how long would ImageNet-1k pretraining take on 8, 64 and 256 GPUs?

Measured by this script, on the CPU (two gloo processes running selfsup's own Trainer, wrapped in
DistributedDataParallel exactly as under torchrun), for each configuration:
  - the bytes of gradients all-reduced per step (DDP's buckets, counted by a comm hook);
  - the bytes of every other all-gather and all-reduce per step (SimCLR's embedding gather and
    the all-reduce of its gradient, DINO's centre, ...), at two per-process batch sizes, fitted
    as fixed + per image;
  - the bytes of BatchNorm buffers that DDP broadcasts before each forward;
  - the training FLOPs per image (torch.utils.flop_counter over one whole step).
Taken from BENCHMARKS.md (measured on a GPU, given as arguments): a training rate of a reference
configuration on the same card, turned into achieved FLOP/s and assumed to hold for the
configuration projected: an assumption, not a measurement, to replace with the projected
configuration's own rate once a GPU lease measures it (`--rate CONFIG=IMAGES_PER_S`).
Assumed (printed with the table): NCCL bus bandwidths inside a node and across nodes, whether the
all-reduce hides under the backward pass, and nothing else in the way (data loading is
reported separately: the decode rate each node would need).

    PYTHONPATH=src python bench/scale_on_paper.py            # about 2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from bench_data import write_images

IMAGENET_TRAIN_IMAGES = 1_281_167

# name -> (selfsup config, per-GPU batch for the projection, reference of its GPU rate)
CONFIGS = {
    "simclr-resnet50": ({"method": "simclr", "preset": "imagenet", "backbone": {"name": "resnet50"}}, 128,
                        "resnet18-cifar"),
    "dino-vit-s16": ({"method": "dino", "preset": "imagenet", "backbone": {"name": "vit-small", "patch_size": 16}}, 64,
                     "vit-s16-one-view"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_worker(rank: int, world: int, port: int, name: str, per_process_batch: int, data: str, out: str,
                   result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup import config as config_lib
    from selfsup.train import Trainer

    user, _, _ = CONFIGS[name]
    user = config_lib.merge_dicts(user, {
        "data": {"path": data, "image_size": 224, "holdout_fraction": 0.0}, "out": out,
        "train": {"batch_size": per_process_batch * world, "epochs": 1, "device": "cpu", "progress": False}})
    trainer = Trainer(config_lib.resolve(user), None, show_progress=False)

    counts = {"gradient_allreduce": 0, "all_reduce": 0, "all_gather": 0, "collectives": 0}
    original_all_reduce, original_all_gather = torch_dist.all_reduce, torch_dist.all_gather

    def counting_hook(_, bucket):
        counts["gradient_allreduce"] += bucket.buffer().numel() * bucket.buffer().element_size()
        counts["collectives"] += 1
        future = original_all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
        return future.then(lambda f: f.value()[0])

    def all_reduce(tensor, *args, **kwargs):
        counts["all_reduce"] += tensor.numel() * tensor.element_size()
        counts["collectives"] += 1
        return original_all_reduce(tensor, *args, **kwargs)

    def all_gather(parts, tensor, *args, **kwargs):
        counts["all_gather"] += tensor.numel() * tensor.element_size()  # what each process sends
        counts["collectives"] += 1
        return original_all_gather(parts, tensor, *args, **kwargs)

    trainer.model.register_comm_hook(None, counting_hook)
    torch_dist.all_reduce, torch_dist.all_gather = all_reduce, all_gather
    images = next(iter(trainer.stream.epoch(0)))
    with FlopCounterMode(display=False) as flops:
        trainer.step(images)
    torch_dist.all_reduce, torch_dist.all_gather = original_all_reduce, original_all_gather
    module = trainer.model.module
    trained = [p for p in module.parameters() if p.requires_grad]
    if rank == 0:
        Path(result_file).write_text(json.dumps({
            "config": name, "per_process_batch": per_process_batch, **counts,
            "buffer_broadcast": sum(b.numel() * b.element_size() for b in module.buffers()),
            "trained_parameters": sum(p.numel() for p in trained),
            "train_flops_per_image": flops.get_total_flops() / per_process_batch}))
    torch_dist.destroy_process_group()


def measure(name: str, per_process_batch: int, data: Path, work: Path) -> dict:
    result = work / f"{name}-{per_process_batch}.json"
    mp.spawn(measure_worker, args=(2, free_port(), name, per_process_batch, str(data), str(work / f"run-{name}"),
                                   str(result)), nprocs=2, join=True)
    return json.loads(result.read_text())


def reference_flops_per_image(name: str) -> float:
    """Training FLOPs per image of a configuration whose GPU rate BENCHMARKS.md measured."""
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup import config as config_lib
    from selfsup.losses import nt_xent
    from selfsup.methods import build_method
    if name == "resnet18-cifar":  # bench/throughput.py's ceiling step: SimCLR, two 32-pixel views
        cfg = config_lib.resolve({"method": "simclr", "data": {"image_size": 32},
                                  "backbone": {"name": "resnet18", "small_stem": True}})
        method, views = build_method(cfg), 2
        x = torch.randn(2 * 4, 3, 32, 32)
        with FlopCounterMode(display=False) as flops:
            z_a, z_b = method.projection(method.backbone(x)).chunk(2)
            nt_xent(z_a, z_b, 0.5).backward()
        return flops.get_total_flops() / (len(x) / views)
    if name == "vit-s16-one-view":  # bench/mae_speed.py's vit_all step: ViT-S/16 on one 224-pixel view
        cfg = config_lib.resolve({"method": "mae", "data": {"image_size": 224},
                                  "backbone": {"name": "vit-small", "patch_size": 16}})
        method = build_method(cfg)
        x = torch.randn(2, 3, 224, 224)
        with FlopCounterMode(display=False) as flops:
            method.backbone.forward_map(x).float().pow(2).mean().backward()
        return flops.get_total_flops() / len(x)
    raise ValueError(name)


def ring_allreduce_seconds(size_bytes: float, gpus: int, bus_bytes_per_s: float) -> float:
    # A ring all-reduce moves 2 (G - 1) / G of the buffer through each GPU's link.
    return 0.0 if gpus == 1 else 2 * (gpus - 1) / gpus * size_bytes / bus_bytes_per_s


def all_gather_seconds(bytes_per_process: float, gpus: int, bus_bytes_per_s: float) -> float:
    return (gpus - 1) * bytes_per_process / bus_bytes_per_s


def fixed_and_per_image(small: dict, large: dict, key: str) -> tuple[float, float]:
    """Bytes of collective `key` per step as fixed + per image, from runs at 2 and 4 images per process."""
    per_image = (large[key] - small[key]) / 2
    return small[key] - 2 * per_image, per_image


def comm_seconds(sizes: dict, gpus: int, gpu_batch: int, bus: float, latency: float) -> float:
    """Communication per step at `gpus` processes, from sizes measured with 2 processes: bandwidth
    terms of ring algorithms, plus a latency of 2 log2(G) hops (a tree) per collective. The
    per-image part of the other all-reduces is the gradient of gathered embeddings, whose size is
    the whole gathered batch: it grows with the number of processes."""
    gather = sizes["all_gather_fixed"] + sizes["all_gather_per_image"] * gpu_batch
    reduce = sizes["all_reduce_fixed"] + sizes["all_reduce_per_image"] / 2 * gpus * gpu_batch
    hops = 2 * math.log2(gpus) if gpus > 1 else 0.0
    return (ring_allreduce_seconds(sizes["gradient_allreduce"] + reduce, gpus, bus)
            + all_gather_seconds(gather, gpus, bus) + sizes["buffer_broadcast"] / bus
            + (sizes["collectives"] + 1) * hops * latency)  # + 1: the buffer broadcast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet18-cifar-rate", type=float, default=36_833,
                        help="measured images/s of the reference SimCLR step (H200, compiled, BENCHMARKS.md)")
    parser.add_argument("--vit-s16-one-view-rate", type=float, default=6_337,
                        help="measured images/s of ViT-S/16 on one 224-pixel view (H200, eager, batch 512)")
    parser.add_argument("--rate", action="append", default=[], metavar="CONFIG=IMAGES_PER_S",
                        help="a measured per-GPU rate for a projected configuration (e.g. simclr-resnet50=3000)")
    parser.add_argument("--intra-node-gbps", type=float, default=350.0,
                        help="assumed NCCL bus bandwidth inside an 8-GPU NVLink node, GB/s")
    parser.add_argument("--inter-node-gbps", type=float, default=40.0,
                        help="assumed NCCL bus bandwidth per GPU across nodes (one 400 Gb/s NIC per GPU), GB/s")
    parser.add_argument("--intra-node-latency-us", type=float, default=2.0, help="assumed latency per hop in a node")
    parser.add_argument("--inter-node-latency-us", type=float, default=10.0, help="assumed latency per hop across nodes")
    parser.add_argument("--decode-per-core", type=float, default=80.0,
                        help="ImageNet JPEGs decoded and resized per CPU core per second (BENCHMARKS.md's "
                             "Pillow figure at 512 pixels, 158 images/s on 2 shared cores)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rates = {"resnet18-cifar": args.resnet18_cifar_rate, "vit-s16-one-view": args.vit_s16_one_view_rate}
    measured_rates = dict(item.split("=") for item in args.rate)
    rows, configs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_images(work / "images", 16, 256)
        for name, (_, gpu_batch, reference) in CONFIGS.items():
            small, large = measure(name, 2, data, work), measure(name, 4, data, work)
            sizes = {"config": name, "trained_parameters": large["trained_parameters"],
                     "collectives": large["collectives"],
                     "gradient_allreduce": large["gradient_allreduce"], "buffer_broadcast": large["buffer_broadcast"]}
            for key in ("all_gather", "all_reduce"):
                sizes[f"{key}_fixed"], sizes[f"{key}_per_image"] = fixed_and_per_image(small, large, key)
            flops = large["train_flops_per_image"]
            achieved = rates[reference] * reference_flops_per_image(reference)  # FLOP/s on the measured card
            gpu_rate = float(measured_rates.get(name, achieved / flops))
            sizes.update(train_gflop_per_image=flops / 1e9, reference=reference, reference_achieved_tflops=achieved / 1e12,
                         images_per_s_per_gpu=gpu_rate, rate_source="measured" if name in measured_rates else "projected")
            configs.append(sizes)
            print(json.dumps(sizes), flush=True)
            for gpus in args.gpus:
                bus = (args.intra_node_gbps if gpus <= 8 else args.inter_node_gbps) * 1e9
                compute = gpu_batch / gpu_rate
                latency = (args.intra_node_latency_us if gpus <= 8 else args.inter_node_latency_us) * 1e-6
                comm = comm_seconds(sizes, gpus, gpu_batch, bus, latency)
                steps = args.epochs * IMAGENET_TRAIN_IMAGES / (gpus * gpu_batch)
                rows.append({"config": name, "gpus": gpus, "per_gpu_batch": gpu_batch, "global_batch": gpus * gpu_batch,
                             "compute_ms_per_step": 1e3 * compute, "comm_ms_per_step": 1e3 * comm,
                             "hours_overlapped": steps * max(compute, comm) / 3600,
                             "hours_not_overlapped": steps * (compute + comm) / 3600,
                             "decode_cores_per_node": min(gpus, 8) * gpu_rate / args.decode_per_core})
    if args.json:
        print(json.dumps({"assumptions": vars(args), "configs": configs, "rows": rows}))
        return
    print(f"\n{args.epochs} epochs of ImageNet-1k ({IMAGENET_TRAIN_IMAGES:,} images); bus bandwidth "
          f"{args.intra_node_gbps:g} GB/s in a node, {args.inter_node_gbps:g} GB/s per GPU across nodes; latency "
          f"{args.intra_node_latency_us:g} / {args.inter_node_latency_us:g} us per hop; JPEG decoding "
          f"{args.decode_per_core:g} images/s per core")
    print("| configuration | GPUs | global batch | compute / comm per step | hours (comm hidden .. not hidden) "
          "| CPU cores per node to decode JPEGs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['gpus']} | {r['global_batch']:,} | {r['compute_ms_per_step']:.1f} ms / "
              f"{r['comm_ms_per_step']:.1f} ms | {r['hours_overlapped']:.2f} .. {r['hours_not_overlapped']:.2f} | "
              f"{r['decode_cores_per_node']:.0f} |")


if __name__ == "__main__":
    main()
