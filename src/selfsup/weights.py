"""Plain weights files as encoders: `--checkpoint weights:FILE --backbone NAME`.

A reference point for what selfsup pretrains: an ImageNet-supervised torchvision or timm model
whose weights the user has locally (`.safetensors`, or a `.pth`/`.pt` state dict), or an encoder
exported by `selfsup export` (whose metadata names its backbone, so `--backbone` may be left
out). Files are read with safetensors or `torch.load(weights_only=True)`: tensors and plain
containers only, never arbitrary pickled objects. The classifier's weights (fc, head,
classifier) are dropped; every other key must match the backbone, name and shape, or a one-line
`UserError` says what differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint import FORMAT as CHECKPOINT_FORMAT, LOAD_ERRORS
from .console import named_option, option, said_as
from .errors import UserError

CLASSIFIER_PREFIXES = ("fc.", "head.", "head_dist.", "classifier.", "last_linear.")
WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")  # where training scripts nest weights


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata or {}) of a weights file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{str(path)!r} is not a readable safetensors file ({e})") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS:
        raise UserError(f"{str(path)!r} cannot be read as a weights file (a state dict saved with torch.save, "
                        f"or .safetensors); it may hold objects other than tensors") from None
    if isinstance(content, dict) and content.get("format") == CHECKPOINT_FORMAT:
        # Checked before unwrapping: its "model" holds the method's whole state (heads, teacher,
        # ...), whose key mismatch would wrongly blame --backbone.
        raise UserError(f"{str(path)!r} is a selfsup checkpoint, not a weights file; pass it without weights: "
                        f"({said_as(f'--checkpoint {path}', repr(str(path)))})")
    for key in WRAPPER_KEYS:
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not content or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        raise UserError(f"{str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in content.items()}, {}


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path, backbone: str) -> None:
    """Load `state` into `net`, requiring the same keys and shapes (classifier keys aside)."""
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(CLASSIFIER_PREFIXES)}
    state = _resampled_positions(net, state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing from the file (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} keys the backbone lacks (e.g. {unexpected[0]!r})")
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} of other shapes (e.g. {k!r}: {_shape(state[k])} in the file, "
                         f"{_shape(own[k])} in {backbone})")
        raise UserError(f"{str(path)!r} does not fit backbone {backbone!r}: {'; '.join(parts)}; "
                        f"give the {named_option('backbone')} the weights were made for (and "
                        f"{option('small_stem', True)} if it has one)")
    net.load_state_dict(state, strict=True)


def _resampled_positions(net: nn.Module, state: dict[str, torch.Tensor],
                         own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT's position embeddings from a file made at another image size (DINOv2's at 518
    pixels, say) resampled to the backbone's grid, as timm does when it loads pretrained weights."""
    if "pos_embed" not in state or "pos_embed" not in own or state["pos_embed"].shape == own["pos_embed"].shape:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(net, "no_embed_class", False) else getattr(net, "num_prefix_tokens", 1)
    saved, wanted = state["pos_embed"], own["pos_embed"]
    if saved.ndim != 3 or saved.shape[-1] != wanted.shape[-1]:
        return state  # not positions of this width: the shape check below reports it
    side = round((wanted.shape[1] - prefix) ** 0.5)
    resampled = resample_abs_pos_embed(saved, new_size=(side, side), num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


def infer_small_stem(state: dict[str, torch.Tensor]) -> bool | None:
    """A 3x3 first convolution means the CIFAR stem; None when the file has no ResNet stem."""
    conv1 = state.get("conv1.weight")
    return None if conv1 is None or conv1.ndim != 4 else conv1.shape[-1] == 3


def exported_settings(metadata: dict[str, str]) -> dict:
    """Backbone, small_stem, patch_size, image_size and bands from `selfsup export` metadata, if any."""
    if metadata.get("format") != "selfsup-encoder":
        return {}
    out = {"backbone": metadata.get("backbone"), "image_size": int(metadata.get("image_size", 0)) or None}
    for key in ("small_stem", "patch_size", "bands"):
        out[key] = json.loads(metadata.get(key, "null"))
    out["bands"] = tuple(out["bands"]) if out["bands"] else None
    return out
