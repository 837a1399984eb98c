"""The masks of the runs that retraining derives from, kept beside the run store.

A study's second phase (scratch-e, scratch-b, lottery ticket, augmented init) needs the final
mask of the magnitude run it derives from. Run directories are not committed (they hold
checkpoints and weights), so a study resumed on a fresh checkout would otherwise have to train
those magnitude runs again, and on another machine or device they do not come out bit for bit
the same: the retraining runs already finished would then describe a mask nobody has.

So the first time a retraining point uses a source, its mask is copied into
``<store folder>/masks/<run id>.safetensors``, one bit per weight (a ResNet or Transformer of
the CPU tasks takes a few hundred kB), to be committed with the store. The rest of what a
retraining run needs comes from the store: the source's configuration, and from it the initial
weights (a function of the seed; see :func:`sparsebench.train.loop.write_initial_weights`).

The file is plain safetensors: for each weight, its mask packed eight to a byte (most
significant bit first, numpy's ``packbits`` order) as uint8, with the shapes in the header's
metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from ..rundir import CONFIG_FILE, MASK_FILE, atomic_write_bytes, read_safetensors

__all__ = ["ARCHIVE_DIR", "PACKED_FORMAT", "archive_path", "archive_source", "pack_masks",
           "restore_source", "unpack_masks"]

ARCHIVE_DIR = "masks"
PACKED_FORMAT = "sparsebench-packed-masks/1"
_BIT_VALUES = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def archive_path(store_path: str | Path, run_id: str) -> Path:
    """Returns where the mask of run ``run_id`` of the store at ``store_path`` is kept."""
    return Path(store_path).parent / ARCHIVE_DIR / f"{run_id}.safetensors"


def pack_masks(masks: Mapping[str, torch.Tensor]) -> bytes:
    """Returns the safetensors bytes of ``masks`` (boolean, by weight name), one bit each."""
    packed, shapes = {}, {}
    for name, mask in masks.items():
        bits = mask.detach().to("cpu", torch.bool).flatten()
        padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.uint8)
        padded[:bits.numel()] = bits.to(torch.uint8)
        packed[name] = (padded.view(-1, 8) * _BIT_VALUES).sum(dim=1).to(torch.uint8)
        shapes[name] = list(mask.shape)
    return save(packed, metadata={"format": PACKED_FORMAT, "shapes": json.dumps(shapes)})


def unpack_masks(data: bytes) -> dict[str, torch.Tensor]:
    """Returns the boolean masks of bytes written by :func:`pack_masks`.

    Raises:
        ValueError: when the bytes are not such a file.
    """
    try:
        packed = load(data)
        # The metadata is only in the header: 8 bytes of its length, then JSON.
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except Exception as error:  # safetensors raises its own error types
        problem = " ".join(str(error).split(": ", 1)[-1].split())
        raise ValueError(f"damaged or not a safetensors file ({problem})") from None
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != PACKED_FORMAT:
        raise ValueError(f"not a packed mask file (format {metadata.get('format')!r}, "
                         f"expected {PACKED_FORMAT!r})")
    try:
        shapes = json.loads(metadata["shapes"])
        shapes = {str(name): [int(dim) for dim in shape] for name, shape in shapes.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError("its header's 'shapes' entry is missing or damaged") from None
    masks = {}
    for name, shape in shapes.items():
        if name not in packed:
            raise ValueError(f"mask {name!r} is in the header's shapes but not in the file")
        size = 1
        for dim in shape:
            size *= dim
        bits = (packed[name].unsqueeze(1) & _BIT_VALUES).ne(0).flatten()
        if bits.numel() < size or bits.numel() - size >= 8:
            raise ValueError(f"mask {name!r}: {packed[name].numel()} bytes cannot hold shape "
                             f"{shape}")
        masks[name] = bits[:size].reshape(shape)
    return masks


def archive_source(run_dir: str | Path, destination: str | Path) -> bool:
    """Copies the mask of the run in ``run_dir`` to ``destination``, packed, unless it is
    there already. Returns True when it wrote the file."""
    destination = Path(destination)
    if destination.is_file():
        return False
    masks = read_safetensors(Path(run_dir) / MASK_FILE,
                             "delete that run from the store so the sweep trains it again")
    atomic_write_bytes(destination, pack_masks(masks))
    return True


def restore_source(archive: str | Path, config: Mapping[str, Any],
                   layers: list[Mapping[str, Any]], run_dir: str | Path) -> Path:
    """Writes into ``run_dir`` what a retraining run reads from its source: the mask from
    ``archive`` and the source's ``config`` (the initial weights are written from it when a
    lottery ticket asks). ``layers`` (the store's per-weight record of the source) checks that
    the archive is that run's mask. Returns ``run_dir``.

    Raises:
        ValueError: when the archive is unreadable or its masks do not match ``layers``.
    """
    from ..train.config import RunConfig

    archive, run_dir = Path(archive), Path(run_dir)
    try:
        masks = unpack_masks(archive.read_bytes())
    except ValueError as error:
        raise ValueError(f"{archive}: {error}; restore it from git, or delete it and the run "
                         f"it belongs to from the store so the sweep trains that run again."
                         ) from None
    for layer in layers:
        mask = masks.get(str(layer.get("name")))
        if mask is None:
            raise ValueError(f"{archive} has no mask for {layer.get('name')!r}, which the "
                             "store records for that run.")
        if list(mask.shape) != list(layer.get("shape", mask.shape)) or (
                "nonzeros" in layer and int(mask.sum()) != int(layer["nonzeros"])):
            raise ValueError(
                f"{archive}: the mask of {layer['name']!r} keeps {int(mask.sum())} of "
                f"{list(mask.shape)} but the store records {layer.get('nonzeros')} of "
                f"{layer.get('shape')}; it is not that run's mask.")
    atomic_write_bytes(run_dir / CONFIG_FILE,
                       RunConfig.from_dict(dict(config)).to_yaml().encode())
    atomic_write_bytes(run_dir / MASK_FILE, save({k: v.contiguous() for k, v in masks.items()}))
    return run_dir
