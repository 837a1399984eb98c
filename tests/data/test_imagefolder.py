"""Image folders on generated JPEGs, and the Pillow transforms worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sparsebench.data.imagefolder import ImageFolder, ImageFolderError
from sparsebench.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    RandomResizedCrop,
    Resize,
    imagenet_eval_transform,
)


def make_folder(root: Path) -> None:
    """Two splits, classes 'cat' and 'ant' (so sorting matters), small JPEGs."""
    sizes = {"train": {"cat": 3, "ant": 2}, "val": {"cat": 1, "ant": 1}}
    for split, classes in sizes.items():
        for name, n in classes.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 10 * i, 30), (10 * i, 100, 200)).save(d / f"{i}.jpeg")


def test_class_mapping_and_shapes(tmp_path: Path) -> None:
    make_folder(tmp_path)
    train = ImageFolder(tmp_path, "train")
    val = ImageFolder(tmp_path, "val")
    assert train.classes == ["ant", "cat"] and val.class_to_idx == {"ant": 0, "cat": 1}
    assert len(train) == 5 and len(val) == 2
    assert [label for _, label in train.samples] == [0, 0, 1, 1, 1]
    torch.manual_seed(0)
    image, label = train[4]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1
    assert val[0][0].shape == (3, 224, 224)


def test_eval_transform_on_constant_image() -> None:
    # A constant 300x400 image: every output pixel is (v/255 - mean) / std, worked by hand.
    value = (51, 102, 204)
    out = imagenet_eval_transform()(Image.new("RGB", (400, 300), value))
    assert out.shape == (3, 224, 224)
    for c in range(3):
        expected = (value[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert out[c].mean().item() == pytest.approx(expected, abs=1e-5)
        assert out[c].std().item() == pytest.approx(0.0, abs=1e-5)
    # Red channel by hand: (0.2 - 0.485) / 0.229 = -1.24454...
    assert out[0, 0, 0].item() == pytest.approx(-1.244541, abs=1e-5)


def test_resize_and_center_crop_sizes() -> None:
    img = Image.new("RGB", (400, 300))
    resized = Resize(256)(img)
    assert resized.size == (341, 256)  # shorter side 256, 400 * 256 / 300 = 341.3
    assert CenterCrop(224)(resized).size == (224, 224)
    assert Resize(256)(Image.new("RGB", (100, 500))).size == (256, 1280)


def test_random_resized_crop_box_within_limits() -> None:
    crop = RandomResizedCrop(224)
    torch.manual_seed(0)
    for _ in range(50):
        left, top, w, h = crop.box(500, 375)
        assert left >= 0 and left + w <= 500 and top >= 0 and top + h <= 375
        assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1  # rounding slack
    assert crop(Image.new("RGB", (500, 375))).size == (224, 224)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageNet layout"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(ImageFolderError, match="holds no images"):
        ImageFolder(tmp_path, "train")
    bad = tmp_path / "train" / "empty" / "broken.jpeg"
    bad.write_bytes(b"not a jpeg at all")
    folder = ImageFolder(tmp_path, "train")
    with pytest.raises(ImageFolderError, match="broken.jpeg"):
        folder[0]
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "zebra" / "z.jpeg")
    with pytest.raises(ImageFolderError, match="zebra"):
        ImageFolder(tmp_path, "val")
