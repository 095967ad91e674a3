"""Encoders with one contract, whatever their origin (torchvision or timm).

Every backbone answers `forward(x) -> (B, D)` pooled features and `forward_map(x)`, the feature
map (B, C, h, w) of a CNN or the tokens (B, N, D) of a ViT, and knows its `feature_dim` and
`kind`, and `small_stem`: whether its ResNet stem is the small one, None where it has no such stem
(ViTs, other timm models), so that what is exported says what the weights need. `net` is the
plain torchvision/timm model with its classifier removed, so its state dict loads into that model
with no selfsup code (see `selfsup.export`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import BackboneConfig
from ..console import one_of, option
from ..errors import UserError, nearest, unknown_choice
from .vit import TIMM_VIT_FAMILIES, VITS, build_vit, check_image_size, set_drop_path


class Backbone(nn.Module):
    def __init__(self, name: str, net: nn.Module, feature_dim: int, kind: str,
                 pooled: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 feature_map: Callable[[nn.Module, torch.Tensor], torch.Tensor], small_stem: bool | None = None):
        super().__init__()
        self.name, self.net, self.feature_dim, self.kind = name, net, feature_dim, kind
        self.small_stem = small_stem
        self._pooled, self._feature_map = pooled, feature_map
        # None: images in the layout they come in (views come channels-last). The trainer sets the
        # standard layout when train.channels_last is off: a convolution given channels-last images
        # runs channels-last whatever its weights' layout.
        self.input_format: torch.memory_format | None = None

    def _laid_out(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_format is None else x.contiguous(memory_format=self.input_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(self.net, self._laid_out(x))  # (B, D)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self._feature_map(self.net, self._laid_out(x))  # (B, C, h, w) or (B, N, D)


# ---------------------------------------------------------------------------------------------
# torchvision ResNets


def _resnet_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _small_stem(net: nn.Module) -> None:
    """CIFAR variant (He et al. 2016, sec. 4.2; SimCLR appendix B.9): a 3x3 stride-1 first
    convolution and no max-pool, so 32x32 images keep their resolution into the first stage."""
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def _torchvision_resnet(builder_name: str) -> Callable[[BackboneConfig, int], Backbone]:
    def build(cfg: BackboneConfig, image_size: int) -> Backbone:
        import torchvision

        net = getattr(torchvision.models, builder_name)(weights=None)
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        if cfg.small_stem:
            _small_stem(net)
        return Backbone(cfg.name, net, feature_dim, "cnn", lambda m, x: m(x), _resnet_map, bool(cfg.small_stem))
    return build


# timm keyword arguments of `resnet18-half`: ResNet-18 with half the channels (32 to 256).
RESNET18_HALF = dict(channels=(32, 64, 128, 256), stem_width=32)


def _resnet18_half(cfg: BackboneConfig, image_size: int) -> Backbone:
    """ResNet-18 at half width, 4x cheaper: for CPU demos and tests. A timm ResNet, so exported
    weights load into timm.create_model("resnet18", num_classes=0, **RESNET18_HALF)."""
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=0, **RESNET18_HALF)
    if cfg.small_stem:
        _small_stem(net)
    return Backbone(cfg.name, net, net.num_features, "cnn", lambda m, x: m(x), lambda m, x: m.forward_features(x),
                    bool(cfg.small_stem))


# ---------------------------------------------------------------------------------------------
# timm models


def _timm(model_name: str, cfg: BackboneConfig, image_size: int) -> Backbone:
    import timm

    kwargs = {}
    if model_name.startswith(TIMM_VIT_FAMILIES) or cfg.patch_size:
        kwargs["img_size"] = image_size
        if cfg.patch_size:
            kwargs["patch_size"] = cfg.patch_size
    try:
        net = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UserError(f"unknown timm model {model_name!r}{nearest(model_name, timm.list_models())}; "
                            f"see timm.list_models()") from None
        raise
    except TypeError as e:
        raise UserError(f"timm model {model_name!r} does not take these options ({e})") from None
    kind = "vit" if hasattr(net, "patch_embed") else "cnn"
    patches = getattr(net, "patch_embed", None)
    if isinstance(patches, timm.layers.PatchEmbed) and not patches.dynamic_img_pad:
        # Its stride-p convolution would silently drop the pixels past the last whole patch.
        check_image_size(image_size, image_size, patches.patch_size[0], cfg.name)
    return Backbone(cfg.name, net, net.num_features, kind, lambda m, x: m(x), lambda m, x: m.forward_features(x),
                    _timm_small_stem(net, cfg))


def _timm_small_stem(net: nn.Module, cfg: BackboneConfig) -> bool | None:
    """Give a timm ResNet the small stem when asked (as `resnet18-half`, itself a timm ResNet);
    None for models without a ResNet stem, where the option means nothing."""
    from timm.models.resnet import ResNet

    if not isinstance(net, ResNet):
        return None
    if cfg.small_stem:
        if not (isinstance(net.conv1, nn.Conv2d) and isinstance(net.maxpool, nn.MaxPool2d)):
            raise UserError(f"{cfg.name} has a deep stem that selfsup cannot replace by the small one; "
                            f"drop {option('small_stem')}, or choose a timm ResNet with a single-convolution stem")
        _small_stem(net)
    return bool(cfg.small_stem)


# name -> builder(config, image size)
BACKBONES: dict[str, Callable[[BackboneConfig, int], Backbone]] = {
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet34": _torchvision_resnet("resnet34"),
    "resnet50": _torchvision_resnet("resnet50"),
    "resnet18-half": _resnet18_half,
    **{name: build_vit(name) for name in VITS},
}


def zero_init_residual(net: nn.Module) -> None:
    """Zero the scale of the last BatchNorm in every residual branch of a ResNet, so that each block
    starts as the identity (Goyal et al. 2017; torchvision's `zero_init_residual`, timm's
    `zero_init_last`, which timm's ResNets already apply when built)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for module in net.modules():
        if hasattr(module, "zero_init_last"):
            module.zero_init_last()
        elif isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def no_blocks_to_drop(name: str) -> UserError:
    """backbone.drop_path_rate on a network without ViT blocks: refused when the config is resolved
    (selfsup's ResNets, before data is read) or, for a timm CNN, when it is built."""
    return UserError(f"backbone.drop_path_rate drops the blocks of a ViT; {name} has none (drop the option, "
                     f"or choose {one_of('backbone', VITS)})")


def check_backbone_name(name: str) -> None:
    """Refuse an unknown backbone before any data is read."""
    if name.startswith("timm:"):
        import timm

        model_name = name[len("timm:"):]
        if not timm.is_model(model_name):
            raise UserError(f"unknown timm model {model_name!r}{nearest(model_name, timm.list_models())}; "
                            f"see timm.list_models()")
    elif name not in BACKBONES:
        raise unknown_choice("backbone", name, list(BACKBONES) + ["timm:NAME"])


def build_backbone(cfg: BackboneConfig, image_size: int) -> Backbone:
    """The encoder named by `cfg.name`: a registry entry, or `timm:NAME` for any timm model."""
    check_backbone_name(cfg.name)
    backbone = (_timm(cfg.name[len("timm:"):], cfg, image_size) if cfg.name.startswith("timm:")
                else BACKBONES[cfg.name](cfg, image_size))
    if cfg.drop_path_rate:
        if backbone.kind != "vit" or not hasattr(backbone.net, "blocks"):
            raise no_blocks_to_drop(cfg.name)
        set_drop_path(backbone.net, cfg.drop_path_rate)
    return backbone
