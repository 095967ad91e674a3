"""Vision Transformers from timm, with the token-level access masked image modeling needs.

`vit-tiny`, `vit-small` and `vit-base` are timm's `vit_{tiny,small,base}_patch16_224` built at the
run's image size and patch size (default: 16 from 64 pixels up, 4 below, so a 32-pixel CIFAR image
is an 8x8 grid). The backbone's pooled vector is the class token after the final norm (what
`timm.create_model(..., num_classes=0)` returns); its `forward_map` is every token (B, 1+N, D),
class token first. `encode` runs timm's own patch embedding, positions, blocks and norm, and can
drop patch tokens before the blocks (MAE: the encoder sees only the visible patches) or replace
chosen patches by a learned token (iBOT, DINOv2). Positions are resampled (timm's bicubic
`resample_abs_pos_embed`) when the image size differs from the size the model was built for, so an
encoder trained at 224 can embed 96-pixel crops or be evaluated at another size; any side that is
a multiple of the patch size works, any other is refused with a `UserError` (no silent resizing).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..config import BackboneConfig
from ..errors import UserError

if TYPE_CHECKING:
    from . import Backbone

# Our names -> timm's architectures (patch size and image size are overridden at build time).
VITS = {"vit-tiny": "vit_tiny_patch16_224", "vit-small": "vit_small_patch16_224",
        "vit-base": "vit_base_patch16_224"}


# timm's families of plain ViTs (their models take an image size and a patch size).
TIMM_VIT_FAMILIES = ("vit", "deit", "eva")


def is_vit_name(name: str) -> bool:
    """Whether a --backbone name is a ViT, without building it (to choose a method's preset)."""
    return name in VITS or (name.startswith("timm:") and name[len("timm:"):].startswith(TIMM_VIT_FAMILIES))


def default_patch_size(image_size: int) -> int:
    """16 (ViT/16, Dosovitskiy et al. 2021) from 64 pixels up; 4 below, so that a 32-pixel image
    still gives 64 tokens, the common CIFAR setting."""
    return 16 if image_size >= 64 else 4


def check_image_size(height: int, width: int, patch_size: int, name: str = "this ViT", option: str = "image_size",
                     other_patch_sizes: bool = True, whose: str = "") -> None:
    """Refuse sides that are not a whole number of patches, suggesting the nearest valid values of
    `option` (and another patch size, where the command has that option); `whose` says where
    the patch size came from."""
    from ..console import named_option, option as named, said_as

    if height % patch_size or width % patch_size or min(height, width) < patch_size:
        side = max(height, width, patch_size)
        lower, upper = max(patch_size, side // patch_size * patch_size), -(-side // patch_size) * patch_size
        sizes = f"{lower} or {upper}" if lower != upper else str(lower)
        patch_hint = f", or a {named_option('patch_size')} that divides {side}" if other_patch_sizes else ""
        use = said_as(f"{named(option)} {sizes}", f"{named(option)}{sizes}")
        raise UserError(f"{name} with patch size {patch_size}{whose} needs image sides that are multiples of "
                        f"{patch_size}, got {height}x{width}; use {use}{patch_hint}")


def build_vit(name: str) -> Callable[[BackboneConfig, int], "Backbone"]:
    """Registry entry for one of `VITS`."""
    def build(cfg: BackboneConfig, image_size: int):
        import timm

        from . import Backbone

        patch_size = cfg.patch_size or default_patch_size(image_size)
        check_image_size(image_size, image_size, patch_size, cfg.name)
        # dynamic_img_size: the patch embedding accepts other sizes (positions resampled); it adds
        # no weights, so the state dict still loads into a plain timm model of this size.
        net = timm.create_model(VITS[name], pretrained=False, num_classes=0, img_size=image_size,
                                patch_size=patch_size, dynamic_img_size=True)
        return Backbone(cfg.name, net, net.num_features, "vit", lambda m, x: encode(m, x)[:, 0], encode)
    return build


def set_drop_path(net: torch.nn.Module, rate: float) -> None:
    """Stochastic depth (Huang et al. 2016) on a timm ViT's residual branches, at rates rising
    linearly from 0 in the first block to `rate` in the last (timm's, DINO's and MAE's rule);
    0 removes it. It adds no weights, so the state dict is unchanged."""
    from timm.layers import DropPath

    blocks = list(net.blocks)
    for i, block in enumerate(blocks):
        block_rate = rate * i / max(1, len(blocks) - 1)
        for branch in ("drop_path1", "drop_path2"):
            setattr(block, branch, DropPath(block_rate) if block_rate > 0 else torch.nn.Identity())


def patch_size_of(net: torch.nn.Module) -> int:
    return net.patch_embed.patch_size[0]


def positions(net: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1+N, D) the model's positions, resampled to a grid of another size when needed."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(net.pos_embed, new_size=list(grid), old_size=list(net.patch_embed.grid_size),
                                  num_prefix_tokens=1)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """(1, 1+N, dim) fixed 2-D sine-cosine positions of a grid x grid patch grid (timm's
    `build_sincos2d_pos_embed`, row-major like the tokens), zeros for the class token: MAE's
    positions (He et al. 2022, appendix A.1)."""
    from timm.layers import build_sincos2d_pos_embed

    patches = build_sincos2d_pos_embed([grid, grid], dim)  # (N, dim)
    return torch.cat([torch.zeros(1, dim), patches]).unsqueeze(0)


def encode(net: torch.nn.Module, images: torch.Tensor, keep: torch.Tensor | None = None,
           mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens (B, 1+K, D) of a timm ViT after its final norm, class token first.

    keep: (B, K) indices of the patches to run the blocks on (the others are dropped after their
    positions are added, as in MAE); None keeps all N. mask: (B, N) bool, patches whose embedding
    is replaced by `mask_token` (D,) before positions are added (iBOT, DINOv2). With neither, this
    is timm's `forward_features`.
    """
    check_image_size(images.shape[-2], images.shape[-1], patch_size_of(net))
    patches = net.patch_embed(images)  # (B, h, w, D): dynamic_img_size keeps the grid
    grid = patches.shape[1:3]
    patches = patches.flatten(1, 2)  # (B, N, D), row-major over the grid
    if mask is not None:
        patches = torch.where(mask.unsqueeze(-1), mask_token.to(patches.dtype), patches)
    pos = positions(net, grid)  # (1, 1+N, D)
    patches = patches + pos[:, 1:]
    if keep is not None:
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (B, K, D)
    cls = (net.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1)  # (B, 1, D)
    tokens = net.norm_pre(net.pos_drop(torch.cat([cls, patches], dim=1)))
    return net.norm(net.blocks(tokens))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) in the patch embedding's token order (row-major), each patch
    flattened as (row, column, channel) like MAE's targets."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    b, p = patches.shape[0], patch_size
    c = patches.shape[-1] // (p * p)
    x = patches.reshape(b, height // p, width // p, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)
