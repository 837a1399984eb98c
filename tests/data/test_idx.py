"""IDX parsing on generated files, its errors, and the real Fashion-MNIST when installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from sparsebench.data.idx import IdxFormatError, IdxImageDataset, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(type_code: int, dims: list[int], payload: bytes) -> bytes:
    """An IDX file written by hand from the format description (big-endian header)."""
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return header + payload


@pytest.mark.parametrize("compress", [False, True])
def test_read_uint8_images(tmp_path: Path, compress: bool) -> None:
    payload = bytes(range(24))  # 2 images of 3x4
    raw = idx_bytes(0x08, [2, 3, 4], payload)
    path = tmp_path / ("x.idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(raw) if compress else raw)
    t = read_idx(path)
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 4)
    assert t[1, 2, 3].item() == 23 and t[0, 1, 0].item() == 4


def test_read_big_endian_int32(tmp_path: Path) -> None:
    path = tmp_path / "ints"
    path.write_bytes(idx_bytes(0x0C, [3], struct.pack(">iii", 1, -2, 70000)))
    assert read_idx(path).tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "ends after"),
        (b"\x00\x00", "too short"),
    ],
)
def test_corrupt_header_errors_name_the_file(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    # header 4 + 3*4 = 16 bytes, plus 2*2*2 = 8 pixels: 24 expected, 23 present.
    path.write_bytes(gzip.compress(idx_bytes(0x08, [2, 2, 2], bytes(7))))
    with pytest.raises(IdxFormatError, match=r"24 bytes in all\) but the file holds 23"):
        read_idx(path)


def write_fake_mnist(root: Path, n_train: int = 12, n_test: int = 4) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes((i * 7) % 256 for i in range(n * 28 * 28))
        (root / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(0x08, [n, 28, 28], pixels))
        labels = bytes(i % 10 for i in range(n))
        (root / f"{stem}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(0x08, [n], labels))
        )


def test_dataset_normalisation_and_valid_split(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    train = IdxImageDataset(tmp_path, "train", valid_size=2)
    valid = IdxImageDataset(tmp_path, "valid", valid_size=2)
    test = IdxImageDataset(tmp_path, "test")
    assert (len(train), len(valid), len(test)) == (10, 2, 4)
    # valid is the last 2 training images: labels 10 % 10 and 11 % 10.
    assert [valid[i][1] for i in range(2)] == [0, 1]
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 0
    # Pixel 1 of image 0 is 7; Fashion-MNIST normalisation (7/255 - 0.2860) / 0.3530.
    assert image[0, 0, 1].item() == pytest.approx((7 / 255 - 0.2860) / 0.3530, abs=1e-6)
    mnist = IdxImageDataset(tmp_path, "test", dataset="mnist")
    assert mnist[0][0][0, 0, 1].item() == pytest.approx((7 / 255 - 0.1307) / 0.3081, abs=1e-6)
    images, labels = test.tensors()
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]


def test_augmentation_keeps_shape_and_pixels(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    plain = IdxImageDataset(tmp_path, "test")
    aug = IdxImageDataset(tmp_path, "test", augment=True)
    torch.manual_seed(0)
    seen_shifted = False
    for _ in range(20):
        image, _ = aug[1]
        assert image.shape == (1, 28, 28)
        seen_shifted |= not torch.equal(image, plain[1][0])
    assert seen_shifted


def test_missing_dataset_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        IdxImageDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="pass root="):
        IdxImageDataset(dataset="mnist")


def test_bad_arguments(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        IdxImageDataset(tmp_path, "val")
    with pytest.raises(ValueError, match="dataset='cifar'"):
        IdxImageDataset(tmp_path, dataset="cifar")


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    train = IdxImageDataset(split="train", valid_size=5000)
    valid = IdxImageDataset(split="valid", valid_size=5000)
    test = IdxImageDataset(split="test")
    assert (len(train), len(valid), len(test)) == (55000, 5000, 10000)
    assert train.images.shape[1:] == (28, 28)
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9
    # Fashion-MNIST's test set is balanced: 1,000 images per class.
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # The standard statistics are those of the full training set.
    full = IdxImageDataset(split="train", valid_size=0).images.float() / 255
    assert full.mean().item() == pytest.approx(0.2860, abs=5e-4)
    assert full.std().item() == pytest.approx(0.3530, abs=5e-4)
