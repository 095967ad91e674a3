"""Do selfsup's batched views follow the same distribution as torchvision's per-image pipeline?

The unit tests check each operation against torchvision with fixed parameters; this checks the
whole random recipe. For the CIFAR SimCLR recipe (crop 0.08-1, flip, colour jitter 0.4/0.4/0.4/0.1
with p 0.8, grayscale 0.2, no blur), two views of each of N images are made by selfsup on the
batch and by torchvision's transforms on PIL images, and statistics of the pairs are compared:
pixel mean and contrast, HSV saturation, sharpness (mean absolute horizontal difference), how much
the two views of an image agree (cosine of the mean-centred pixels, full size and 4x4 pooled),
and the spread of brightness across images. Means over --repeats draws.

    PYTHONPATH=src python bench/views_vs_torchvision.py [--data src/selfsup/sample/cifar10-sample.tar.xz]
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from selfsup.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, make_view
from selfsup.views.ops import rgb_to_hsv


def read_images(path: str, count: int) -> list[np.ndarray]:
    images = []
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.isfile() and "/train/" in member.name and member.name.endswith((".jpg", ".png")):
                images.append(np.array(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if len(images) == count:
                    break
    return images


def pair_statistics(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Statistics of views a, b (N, 3, H, W) in [0, 1], b the second view of a's images."""
    centred = lambda v: (v - v.mean(dim=1, keepdim=True))
    pooled = lambda v: F.avg_pool2d(v, 8).flatten(1)
    return {"mean": a.mean().item(), "contrast": a.std(dim=(1, 2, 3)).mean().item(),
            "saturation": rgb_to_hsv(a)[:, 1].mean().item(),
            "sharpness": (a[..., 1:] - a[..., :-1]).abs().mean().item(),
            "views_agree": F.cosine_similarity(centred(a.flatten(1)), centred(b.flatten(1))).mean().item(),
            "views_agree_4x4": F.cosine_similarity(centred(pooled(a)), centred(pooled(b))).mean().item(),
            "brightness_spread": a.mean(dim=(1, 2, 3)).std().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="src/selfsup/sample/cifar10-sample.tar.xz")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = read_images(args.data, args.images)
    batch = torch.from_numpy(np.stack(images))
    side = batch.shape[1]
    recipe = ViewConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_prob=0.0)
    reference = T.Compose([T.RandomResizedCrop(side, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                           T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                           T.ToTensor()])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    makers = {"selfsup": lambda: (make_view(batch, recipe, side, generator) * std + mean).clamp(0, 1),
              "selfsup, random jitter order": lambda: (make_view(
                  batch, ViewConfig(**{**recipe.__dict__, "random_jitter_order": True}), side, generator) * std + mean
              ).clamp(0, 1),
              "torchvision": lambda: torch.stack([reference(Image.fromarray(image)) for image in images])}
    for name, make in makers.items():
        draws = [pair_statistics(make(), make()) for _ in range(args.repeats)]
        print(json.dumps({"views": name, "images": len(images),
                          **{key: round(float(np.mean([d[key] for d in draws])), 4) for key in draws[0]},
                          "views_agree_sd": round(float(np.std([d["views_agree"] for d in draws])), 4)}))
    original = batch.permute(0, 3, 1, 2).float() / 255
    print(json.dumps({"views": "original images", **{k: round(v, 4) for k, v in pair_statistics(original, original).items()}}))


if __name__ == "__main__":
    main()
