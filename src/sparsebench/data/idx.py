"""MNIST / Fashion-MNIST from IDX files (gzip-compressed or plain).

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header

    bytes 0-1  zero
    byte  2    element type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
               0x0E float64)
    byte  3    number of dimensions n
    4·n bytes  the size of each dimension, big-endian uint32

followed by the elements in row-major order. The default location is the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``); nothing is downloaded.

The whole split is held in memory as a uint8 tensor (47 MB for Fashion-MNIST train), so an item
is a slice plus a normalisation: fast enough that a DataLoader needs no workers on a 2-core CPU.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "FASHION_MNIST",
    "MNIST",
    "IdxFormatError",
    "IdxImageDataset",
    "IdxSpec",
    "read_idx",
]


class IdxFormatError(ValueError):
    """An IDX file whose header or size does not describe its contents."""


# IDX type code -> (numpy big-endian dtype, element size in bytes).
_IDX_TYPES: dict[int, tuple[str, int]] = {
    0x08: (">u1", 1),
    0x09: (">i1", 1),
    0x0B: (">i2", 2),
    0x0C: (">i4", 4),
    0x0D: (">f4", 4),
    0x0E: (">f8", 8),
}


def _read_bytes(path: Path) -> bytes:
    """Return the raw (decompressed) bytes of ``path``; gzip is recognised by its magic bytes."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    # Detect gzip by content rather than by suffix: a renamed or re-compressed file still works.
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({exc})") from exc
    return path.read_bytes()


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (gzip or plain).

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        A tensor with the file's dimensions; uint8 files stay ``torch.uint8``, other types map to
        the matching torch dtype (int8, int16, int32, float32, float64) in native byte order.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxFormatError: bad magic number, unknown type code, no dimensions, or a file size that
            does not match the header (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{raw[:4].hex()} (IDX files start with two zero bytes)"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise IdxFormatError(
            f"{path}: unknown IDX type code 0x{type_code:02X} (allowed: {allowed})"
        )
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(
            f"{path}: header declares {ndim} dimensions but the file ends after {len(raw)} bytes"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    np_dtype, itemsize = _IDX_TYPES[type_code]
    expected = header_len + itemsize * int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise IdxFormatError(
            f"{path}: header says dims {dims} of {itemsize}-byte elements "
            f"({expected} bytes in all) but the file holds {len(raw)} bytes"
        )
    array = np.frombuffer(raw, dtype=np_dtype, offset=header_len).reshape(dims)
    # astype to native order (and a copy, so the tensor owns writable memory).
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


@dataclass(frozen=True)
class IdxSpec:
    """What distinguishes MNIST from Fashion-MNIST: where it lives and its pixel statistics."""

    name: str
    mean: float
    std: float
    default_root: Path | None
    install_hint: str
    # Horizontal flips suit clothes, not digits (a flipped 3 is not a 3).
    flip: bool


FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    mean=0.2860,
    std=0.3530,
    default_root=Path("/usr/share/datasets/fashion-mnist"),
    install_hint="install it with `apt-get install dataset-fashion-mnist`",
    flip=True,
)
MNIST = IdxSpec(
    name="mnist",
    mean=0.1307,
    std=0.3081,
    default_root=None,
    install_hint="pass root=<directory holding the MNIST IDX files>",
    flip=False,
)
_SPECS = {FASHION_MNIST.name: FASHION_MNIST, MNIST.name: MNIST}

# Both datasets share the original MNIST file names.
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, stem: str) -> Path | None:
    """Return ``root/stem.gz`` or ``root/stem`` (either naming, as distributed), or None."""
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


class IdxImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """MNIST or Fashion-MNIST as normalised float images.

    Items are ``(image, label)``: image a float32 tensor of shape ``(1, 28, 28)`` normalised as
    ``(x/255 - mean) / std`` with the dataset's standard statistics, label an int in ``[0, 10)``.

    Args:
        root: directory with the four IDX files; defaults to the Debian package's location for
            Fashion-MNIST (MNIST has no default and needs ``root``).
        split: ``"train"``, ``"valid"`` or ``"test"``. ``"valid"`` is the *last* ``valid_size``
            images of the training file and ``"train"`` the rest, so the two never overlap and
            the carve is the same on every machine (the files ship already shuffled).
        dataset: ``"fashion-mnist"`` or ``"mnist"``.
        augment: random crop after 2-pixel zero padding (of the normalised image, i.e. padding
            with the background value), plus a horizontal flip for Fashion-MNIST.
        valid_size: images held out of ``"train"`` for ``"valid"``; 0 trains on all 60,000.

    Raises:
        FileNotFoundError: one sentence saying what to install or which path to pass.
        ValueError: bad ``split``, ``dataset`` or ``valid_size``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        dataset: str = "fashion-mnist",
        augment: bool = False,
        valid_size: int = 5000,
    ) -> None:
        if dataset not in _SPECS:
            raise ValueError(f"dataset={dataset!r} is unknown; allowed: {sorted(_SPECS)}")
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split={split!r} is unknown; allowed: 'train', 'valid', 'test'")
        if valid_size < 0:
            raise ValueError(f"valid_size={valid_size} must be >= 0")
        if split == "valid" and valid_size == 0:
            raise ValueError("split='valid' needs valid_size > 0")
        self.spec = _SPECS[dataset]
        if root is None:
            if self.spec.default_root is None:
                raise FileNotFoundError(
                    f"{dataset} has no default location; {self.spec.install_hint}."
                )
            root = self.spec.default_root
        self.root = Path(root)
        file_split = "test" if split == "test" else "train"
        image_stem, label_stem = _FILES[file_split]
        image_path, label_path = _find(self.root, image_stem), _find(self.root, label_stem)
        if image_path is None or label_path is None:
            missing = image_stem if image_path is None else label_stem
            raise FileNotFoundError(
                f"{dataset} not found: no {missing}[.gz] in {self.root}; "
                f"{self.spec.install_hint} or pass root=<directory with the IDX files>."
            )
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise IdxFormatError(
                f"{image_path}: expected uint8 images of shape (N, H, W), got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise IdxFormatError(
                f"{label_path}: expected {images.shape[0]} labels to match {image_path}, got shape "
                f"{tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= 10):
            # Found here, not as an index error deep inside the loss after the run has started.
            raise IdxFormatError(
                f"{label_path}: labels must be classes 0-9, found {int(labels.min())} to "
                f"{int(labels.max())}; is it a labels file of {dataset}?"
            )
        if file_split == "train" and valid_size > 0:
            if valid_size >= images.shape[0]:
                raise ValueError(
                    f"valid_size={valid_size} must be below the {images.shape[0]} training images"
                )
            cut = images.shape[0] - valid_size
            sl = slice(cut, None) if split == "valid" else slice(None, cut)
            images, labels = images[sl], labels[sl]
        self.split = split
        self.augment = augment
        self.images: torch.Tensor = images.contiguous()  # uint8 (N, H, W)
        self.labels: torch.Tensor = labels.to(torch.int64).contiguous()
        self.num_classes = 10

    def __len__(self) -> int:
        return self.images.shape[0]

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(torch.float32) / 255.0 - self.spec.mean) / self.spec.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image (1, H, W) float32, label int)``."""
        image = self._normalize(self.images[index]).unsqueeze(0)
        if self.augment:
            image = self._augment(image)
        return image, int(self.labels[index])

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        # Pad with the normalised value of a black pixel, so the border looks like background.
        pad = 2
        background = (0.0 - self.spec.mean) / self.spec.std
        _, h, w = image.shape
        padded = torch.full((1, h + 2 * pad, w + 2 * pad), background, dtype=image.dtype)
        padded[:, pad : pad + h, pad : pad + w] = image
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        image = padded[:, top : top + h, left : left + w]
        if self.spec.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the whole split at once, without augmentation.

        Returns:
            ``(images, labels)``: float32 ``(N, 1, H, W)`` normalised images and int64 ``(N,)``
            labels; handy for fast evaluation without a DataLoader.
        """
        return self._normalize(self.images).unsqueeze(1), self.labels
