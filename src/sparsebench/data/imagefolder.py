"""Image classification folders in the ImageNet layout, decoded lazily with Pillow.

    root/train/<class>/*.jpeg
    root/val/<class>/*.jpeg

Only file paths are listed up front; each item is opened and decoded when asked for, so a dataset
far larger than memory streams through a DataLoader. Class indices are the sorted class-folder
names of ``root/train`` (when it exists), so train and val agree on them on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sparsebench.data.transforms import imagenet_eval_transform, imagenet_train_transform

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "ImageFolderError"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class ImageFolderError(ValueError):
    """A folder that does not have the expected layout, or an image that cannot be decoded."""


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """``root/<split>/<class>/<image>`` as ``(image tensor, class index)`` items.

    Args:
        root: the dataset root holding ``train/`` and/or ``val/``.
        split: sub-folder name, usually ``"train"`` or ``"val"``.
        transform: PIL image -> tensor; by default ResNet-50's training transform for
            ``"train"`` and its evaluation transform otherwise (see ``transforms.py``).
        classes: explicit class names in index order; by default the sorted folder names of
            ``root/train`` if it exists, else of ``root/<split>``.
        extensions: file suffixes (case-insensitive) counted as images.

    Raises:
        FileNotFoundError: ``root/<split>`` does not exist (one sentence on what to pass).
        ImageFolderError: no class folders, a class folder with no images, or a split folder
            naming a class that the class list lacks.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        directory = self.root / split
        if not directory.is_dir():
            raise FileNotFoundError(
                f"image folder {directory} does not exist; pass root=<dir> holding "
                f"{split}/<class>/<images> (ImageNet layout)."
            )
        if classes is None:
            class_source = self.root / "train" if (self.root / "train").is_dir() else directory
            classes = _class_dirs(class_source)
        self.classes: list[str] = list(classes)
        if not self.classes:
            raise ImageFolderError(f"{directory}: no class sub-folders found")
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        present = _class_dirs(directory)
        unknown = sorted(set(present) - set(self.class_to_idx))
        if unknown:
            raise ImageFolderError(
                f"{directory}: class folders {unknown[:5]} are not among the {len(self.classes)} "
                "training classes"
            )
        suffixes = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = []
        for name in present:
            files = sorted(
                p
                for p in (directory / name).iterdir()
                if p.is_file() and p.suffix.lower() in suffixes
            )
            if not files:
                raise ImageFolderError(
                    f"{directory / name}: class folder holds no images ({', '.join(suffixes)})"
                )
            self.samples.extend((p, self.class_to_idx[name]) for p in files)
        if transform is None:
            is_train = split == "train"
            transform = imagenet_train_transform() if is_train else imagenet_eval_transform()
        self.transform = transform
        self.split = split

    @property
    def num_classes(self) -> int:
        """Return the number of classes (length of ``classes``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """Return item ``index`` decoded as an RGB PIL image (no transform).

        Raises:
            ImageFolderError: the file cannot be read or decoded; the message names the file.
        """
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                # convert() forces the full decode here, so a truncated file fails now, named.
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ImageFolderError(f"cannot read image {path}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(transform(image), class index)``."""
        return self.transform(self.load(index)), self.samples[index][1]
