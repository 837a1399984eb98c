"""Image transforms written with Pillow and torch (no torchvision, see DESIGN.md).

They follow the torchvision definitions that ResNet-50's reference training uses, so numbers are
comparable: ``RandomResizedCrop`` samples an area fraction in ``scale`` and a log-uniform aspect
ratio in ``ratio``, retrying 10 times before falling back to a centre crop; ``Resize`` with an int
scales the shorter side; ``CenterCrop`` rounds the offset like torchvision.

Every random transform draws from torch's global generator, so ``torch.manual_seed`` (and the
DataLoader's per-worker seeding) makes it reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ToTensor",
    "imagenet_eval_transform",
    "imagenet_train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    """Apply transforms in order; returns the last one's output."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    """Scale a PIL image so its shorter side is ``size`` (aspect kept); returns a PIL image."""

    def __init__(self, size: int, interpolation: Image.Resampling = Image.Resampling.BILINEAR):
        if size <= 0:
            raise ValueError(f"Resize size={size} must be positive")
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_w, new_h = int(self.size * w / h), self.size
        if (new_w, new_h) == (w, h):
            return img
        return img.resize((new_w, new_h), self.interpolation)


class CenterCrop:
    """Crop the central ``size``×``size`` square; returns a PIL image (zero-padded if smaller)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        # round() like torchvision, so the same pixels are kept.
        left = int(round((w - self.size) / 2.0))
        top = int(round((h - self.size) / 2.0))
        # PIL pads with zeros when the box leaves the image.
        return img.crop((left, top, left + self.size, top + self.size))


class RandomResizedCrop:
    """Crop a random area/aspect box and resize it to ``size``×``size``; returns a PIL image.

    Args:
        size: output side length (224 for ResNet-50).
        scale: range of the crop's area as a fraction of the image's (0.08–1 for ResNet-50).
        ratio: range of the crop's aspect ratio w/h, sampled log-uniformly (3/4–4/3).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: Image.Resampling = Image.Resampling.BILINEAR,
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"RandomResizedCrop scale={scale} must satisfy 0 < lo <= hi <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop ratio={ratio} must satisfy 0 < lo <= hi")
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Return a sampled crop box ``(left, top, crop_w, crop_h)`` inside a width×height image."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1]))
            aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi)))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return left, top, w, h
        # Fallback (as torchvision): the largest centred box whose aspect is within range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image) -> Image.Image:
        left, top, w, h = self.box(*img.size)
        return img.resize(
            (self.size, self.size), self.interpolation, box=(left, top, left + w, top + h)
        )


class RandomHorizontalFlip:
    """Mirror a PIL image left-right with probability ``p``; returns a PIL image."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand(())) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ToTensor:
    """Convert a PIL RGB/L image to a float32 ``(C, H, W)`` tensor in [0, 1]."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


class Normalize:
    """Per-channel ``(x - mean) / std`` on a ``(C, H, W)`` tensor; returns a new tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize std={tuple(std)} must be positive")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def imagenet_train_transform(size: int = 224) -> Compose:
    """ResNet-50's training transform: random-resized-crop (0.08–1, 3/4–4/3), flip, normalise.

    Returns:
        A callable PIL image -> float32 ``(3, size, size)`` tensor.
    """
    return Compose(
        [
            RandomResizedCrop(size),
            RandomHorizontalFlip(),
            ToTensor(),
            Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet_eval_transform(size: int = 224, resize: int = 256) -> Compose:
    """ResNet-50's evaluation transform: shorter side to ``resize``, centre crop, normalise.

    Returns:
        A callable PIL image -> float32 ``(3, size, size)`` tensor.
    """
    return Compose(
        [Resize(resize), CenterCrop(size), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
