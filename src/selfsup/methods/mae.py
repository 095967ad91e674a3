"""MAE, masked autoencoders (He, Chen, Xie, Li, Dollár, Girshick 2022).

    x = view(image)                              # random resized crop (0.2, 1) and flip only
    mask = random 75 % of the patches            # the same count in every image
    latent = encoder(x, visible patches only)    # the ViT never sees a mask token: 4x fewer tokens
    pred = decoder(latent + mask tokens at the hidden positions, own positions)   # (B, N, p*p*3)
    loss = mean over hidden patches of mean((pred - normalise(patch pixels)) ** 2)

The decoder is a few timm transformer blocks, narrower than the encoder; it and its mask token
are thrown away after pretraining: the encoder is what is kept. As in the paper (appendix A.1)
and the official code (facebookresearch/mae, models_mae.py), both encoder and decoder positions
are fixed 2-D sine-cosine embeddings (timm's `build_sincos2d_pos_embed`), the class token is kept
through the encoder and decoder, and linear layers are Xavier-initialised. timm's positions have
the frequencies of MAE's `get_2d_sincos_pos_embed` in another channel order (sin row, sin column,
cos row, cos column against MAE's sin, cos of the column then of the row): a fixed permutation of
the embedding's channels, which the randomly initialised layers around it cannot tell apart.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.vit import VITS, encode, patch_size_of, patchify, sincos_positions, unpatchify
from ..config import RunConfig, ranged
from ..console import option, said_as
from ..errors import UserError
from ..losses import masked_mse
from ..views import ViewConfig, denormalize, eval_view, light_views, make_view
from ..views.masks import num_visible, random_patch_mask, visible_indices
from ..viz import save_image_grid
from .common import Batch, MethodOutput, Progress


@dataclass
class Config:
    mask_ratio: float = ranged(0.75, 0.01, 0.99)  # paper fig. 5: 75 % is best for fine-tuning and linear
    decoder_dim: int = ranged(512, 4, None)  # paper table 1b: width 512
    decoder_depth: int = ranged(8, 1, None)  # paper table 1a: 8 blocks
    decoder_heads: int = ranged(16, 1, None)  # official mae_vit_base_patch16_dec512d8b
    norm_pix_loss: bool = True  # targets normalised per patch (paper table 1c: +0.5 fine-tuning)
    # RandomResizedCrop(scale=(0.2, 1.0)) and a horizontal flip, nothing else (official main_pretrain.py).
    views: ViewConfig = field(default_factory=lambda: light_views(crop_scale=(0.2, 1.0)))


ADAMW = {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.05, "betas": (0.9, 0.95)}


def _cifar() -> dict:
    # The paper's optimiser (PRETRAIN.md: AdamW, base lr 1.5e-4 per 256, betas (0.9, 0.95), weight
    # decay 0.05) on ViT-Tiny with 4x4 patches (an 8x8 grid); warm-up 5 % of the run as 40 of 800
    # epochs; a decoder sized to the 192-wide encoder (4 blocks, width 192, 3 heads), as in
    # IcarusWizard/MAE's CIFAR-10 ViT-Tiny recipe.
    return {"backbone": {"name": "vit-tiny", "patch_size": 4},
            "optim": {**ADAMW, "warmup_epochs": 10.0}, "train": {"epochs": 200, "batch_size": 512},
            "mae": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3}}


def _imagenet() -> dict:
    # Paper: ViT-B/16 at 224, 800 epochs, 40 warm-up, batch 4096 over many GPUs; 256 here for one
    # GPU (the rate scales linearly with the batch, so the base rate is the same).
    return {"backbone": {"name": "vit-base", "patch_size": 16},
            "optim": {**ADAMW, "warmup_epochs": 40.0}, "train": {"epochs": 800, "batch_size": 256}}


PRESETS = {"cifar": _cifar, "imagenet": _imagenet}


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch (last dimension) to zero mean and unit variance; the unbiased variance plus 1e-6,
    as the official code computes it (target.var(dim=-1))."""
    mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1e-6).sqrt()


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = True) -> torch.Tensor:
    """Squared error per patch, averaged over each patch's values, then over the hidden patches."""
    return masked_mse(prediction, normalize_patches(target.float()) if norm_pix else target, mask)


def _check(config: Config, backbone: str, image_size: int, patch_size: int | None) -> None:
    if backbone not in VITS:
        raise UserError(f"mae needs a ViT backbone ({', '.join(VITS)}, "
                        f"with {said_as('--patch-size N', 'patch_size=N')}), "
                        f"not {backbone!r}; use e.g. {option('backbone', 'vit-tiny')}")
    patches = (image_size // patch_size) ** 2
    if not 0 < num_visible(patches, config.mask_ratio) < patches:
        raise UserError(f"mae.mask_ratio {config.mask_ratio} leaves no visible or no hidden patch of "
                        f"{patches}; choose a ratio between 1/{patches} and 1 - 1/{patches}")
    if config.decoder_dim % 4 or config.decoder_dim % config.decoder_heads:
        raise UserError(f"mae.decoder_dim ({config.decoder_dim}) must be a multiple of 4 and of "
                        f"mae.decoder_heads ({config.decoder_heads})")


def check_config(cfg: RunConfig) -> None:
    """Refuse, before any data is read, what MAE cannot run (called by config.resolve)."""
    _check(cfg.method_config, cfg.backbone.name, cfg.data.image_size, cfg.backbone.patch_size)


class Method(nn.Module):
    def __init__(self, config: Config, backbone: Backbone, image_size: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.patch_size = patch_size_of(backbone.net) if backbone.name in VITS else None
        _check(config, backbone.name, image_size, self.patch_size)
        self.config, self.image_size, self.backbone = config, image_size, backbone
        grid, d = image_size // self.patch_size, config.decoder_dim
        self.num_patches = grid * grid
        self.decoder_embed = nn.Linear(backbone.feature_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        norm = functools.partial(nn.LayerNorm, eps=1e-6)  # the official decoder's, not timm's 1e-5
        self.decoder = nn.Sequential(*[Block(d, config.decoder_heads, qkv_bias=True, norm_layer=norm)
                                       for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, self.patch_size ** 2 * 3)
        self.register_buffer("decoder_pos", sincos_positions(grid, d), persistent=False)
        backbone.net.pos_embed.data.copy_(sincos_positions(grid, backbone.feature_dim))
        backbone.net.pos_embed.requires_grad_(False)  # fixed, as in the paper
        self._init_weights()

    def _init_weights(self) -> None:
        """The official initialisation: Xavier-uniform linear layers (the patch embedding too, as a
        linear map of the flattened patch), zero biases, N(0, 0.02) class and mask tokens."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.backbone.net.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.data.view(proj.weight.shape[0], -1))
        nn.init.normal_(self.backbone.net.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, batch: Batch, progress: Progress) -> MethodOutput:
        images = make_view(batch.images, self.config.views, self.image_size, batch.generator)  # (B, 3, S, S)
        mask = random_patch_mask(len(images), self.num_patches, self.config.mask_ratio, batch.generator)  # (B, N)
        latent, prediction = self.reconstruct(images, mask)
        loss = reconstruction_loss(prediction, patchify(images, self.patch_size), mask, self.config.norm_pix_loss)
        return MethodOutput(loss=loss, embedding=latent[:, 0].detach())

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder tokens (B, 1+K, D), predicted patches (B, N, p*p*3)) when `mask` (B, N) hides."""
        keep = visible_indices(mask, num_visible(self.num_patches, self.config.mask_ratio))  # (B, K)
        latent = encode(self.backbone.net, images, keep=keep)  # (B, 1+K, D): visible patches only
        x = self.decoder_embed(latent)  # (B, 1+K, d)
        hidden = self.mask_token.to(x.dtype).expand(len(x), self.num_patches, -1)  # (B, N, d)
        patches = hidden.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])  # visible back in place
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos  # (B, 1+N, d)
        return latent, self.decoder_pred(self.decoder_norm(self.decoder(x))[:, 1:])  # (B, N, p*p*3)

    def save_pictures(self, batch: Batch, run_dir) -> None:
        """pictures.png, one row per image: the masked input, the reconstruction (visible patches
        pasted back, as in the paper's figures) and the original."""
        images = eval_view(batch.images, self.image_size).float()  # (8, 3, S, S)
        mask = random_patch_mask(len(images), self.num_patches, self.config.mask_ratio, batch.generator)
        prediction = self.reconstruct(images, mask)[1].float()
        target = patchify(images, self.patch_size)
        if self.config.norm_pix_loss:  # back to pixels with each patch's own mean and deviation
            prediction = prediction * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        hidden = mask.unsqueeze(-1).expand_as(target)  # (8, N, p*p*3)
        image = lambda patches: unpatchify(patches, self.patch_size, *images.shape[-2:])  # (8, 3, S, S)
        original = denormalize(images)
        masked = original.masked_fill(image(hidden.float()) > 0, 0.5)  # hidden patches grey
        reconstruction = denormalize(image(torch.where(hidden, prediction, target)))
        columns = [c.clamp(0, 1) for c in (masked, reconstruction, original)]
        save_image_grid([torch.stack(row) for row in zip(*columns)], Path(run_dir) / "pictures.png",
                        titles=["masked input", "reconstruction", "original"])

    def encoder(self) -> Backbone:
        return self.backbone
