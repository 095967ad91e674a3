"""Is MAE cheaper than a ViT that sees every patch? (a benchmark)

Measures in one run, on one device, on the same uint8 batch, images per second of:
  mae            selfsup's MAE training step: view, 75 % mask, encoder on the visible patches,
                 decoder on all, loss, backward, AdamW step;
  vit_all        the same ViT on all patches of the same view (a stand-in loss on its tokens),
                 backward, AdamW step: what any method that feeds the encoder whole images pays;
  mask_tokens    MAE with the mask tokens given to the encoder instead (it sees all patches, then
                 the same decoder): the paper's comparison (He et al. 2022, table 2);
  encoder_25 / encoder_all   the encoder alone, forward and backward, on the visible quarter and on
                 all patches: the 4x fewer tokens the paper's efficiency argument rests on.
With --compile each step's forward runs through torch.compile (round 0, untimed, compiles).
The rounds are interleaved (one step of each, repeated) so that a busy machine slows all of them
alike; each figure is the median over rounds. Prints one JSON line per figure, then the ratios.

    python bench/mae_speed.py --device cuda [--batch 512] [--compile]           # ViT-S/16 at 224
    python bench/mae_speed.py --device cpu --threads 1 --batch 8 --rounds 3     # a small CPU run
    python bench/mae_speed.py --backbone vit-tiny --image-size 32 --patch-size 4 --batch 128   # CIFAR preset
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from selfsup import config as config_lib
from selfsup.backbones.vit import encode, patchify
from selfsup.methods import build_method
from selfsup.methods.common import Batch, Progress
from selfsup.methods.mae import reconstruction_loss
from selfsup.train import autocast_for, resolve_device
from selfsup.views import make_view, random_patch_mask, visible_indices
from selfsup.views.masks import num_visible


def build(args):
    # The decoder defaults to the CIFAR preset's (4 blocks of width 192): about 8 % of ViT-S's
    # computation per token, as the paper's 512-wide, 8-block decoder is 9 % of ViT-L's.
    cfg = config_lib.resolve({"method": "mae", "data": {"image_size": args.image_size},
                              "backbone": {"name": args.backbone, "patch_size": args.patch_size},
                              "mae": {"decoder_dim": args.decoder_dim, "decoder_depth": args.decoder_depth,
                                      "decoder_heads": args.decoder_heads}})
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def steps(method, cfg, images, device, compile_losses: bool = False):
    """name -> one training step (or forward-backward) on `images` (each loss's forward through
    torch.compile with `compile_losses`)."""
    generator = torch.Generator(device=device).manual_seed(0)
    net, config, size = method.backbone.net, method.config, cfg.data.image_size
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    mask_token = torch.zeros(method.backbone.feature_dim, device=device, requires_grad=True)
    progress = Progress(0, 1, 1)

    def view():
        x = make_view(images, config.views, size, generator)
        return x, random_patch_mask(len(x), method.num_patches, config.mask_ratio, generator)

    def mae():
        return method(Batch(images, generator), progress).loss

    def vit_all():
        return method.backbone.forward_map(view()[0]).float().pow(2).mean()

    def mask_tokens():
        x, mask = view()
        latent = encode(net, x, mask=mask, mask_token=mask_token)  # (B, 1+N, D): all patches
        decoded = method.decoder(method.decoder_embed(latent) + method.decoder_pos)
        prediction = method.decoder_pred(method.decoder_norm(decoded)[:, 1:])
        return reconstruction_loss(prediction, patchify(x, method.patch_size), mask, config.norm_pix_loss)

    def encoder_25():
        x, mask = view()
        return encode(net, x, keep=visible_indices(mask, num_visible(method.num_patches, config.mask_ratio))).float().pow(2).mean()

    def encoder_all():
        return encode(net, view()[0]).float().pow(2).mean()

    def training(loss_fn, update=True):
        loss_fn = torch.compile(loss_fn) if compile_losses else loss_fn

        def step():
            with autocast_for(device, cfg.train.precision):
                loss = loss_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if update:
                optimizer.step()
        return step

    return {"mae": training(mae), "vit_all": training(vit_all), "mask_tokens": training(mask_tokens),
            "encoder_25": training(encoder_25, update=False), "encoder_all": training(encoder_all, update=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit-small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--decoder-dim", type=int, default=192)
    parser.add_argument("--decoder-depth", type=int, default=4)
    parser.add_argument("--decoder-heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="each step's forward through torch.compile")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg, method = build(args)
    method.to(device).train()
    side = cfg.data.cache_size
    images = torch.randint(0, 256, (args.batch, side, side, 3), dtype=torch.uint8, device=device)
    fns = steps(method, cfg, images, device, args.compile)
    seconds = {name: [] for name in fns}
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocations, kernels)
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:
                seconds[name].append(time.perf_counter() - start)
    rate = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
    setting = {"backbone": args.backbone, "image_size": args.image_size, "patch_size": args.patch_size,
               "patches": method.num_patches, "decoder": f"{args.decoder_depth}x{args.decoder_dim}",
               "batch": args.batch, "device": str(device), "threads": torch.get_num_threads(), "compile": args.compile}
    for name, value in rate.items():
        print(json.dumps({"figure": name, "images_per_s": round(value, 2), **setting}))
    print(json.dumps({"mae_over_vit_all": round(rate["mae"] / rate["vit_all"], 2),
                      "mae_over_mask_tokens": round(rate["mae"] / rate["mask_tokens"], 2),
                      "encoder_25_over_encoder_all": round(rate["encoder_25"] / rate["encoder_all"], 2)}))


if __name__ == "__main__":
    main()
