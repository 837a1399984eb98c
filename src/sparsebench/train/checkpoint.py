"""Checkpoints without pickle: one safetensors file with every tensor (model, optimizer,
sparsifier, random generators) and a JSON header with the rest (step, data position, Python's
random state, optimizer hyperparameters). Written atomically, so a run killed at any moment
finds either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from ..rundir import atomic_write_bytes

__all__ = ["load_checkpoint", "optimizer_from_flat", "optimizer_to_flat", "save_checkpoint"]

_META_KEY = "sparsebench_checkpoint"


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Returns an optimizer ``state_dict`` split into tensors and JSON-safe values."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    """Returns an optimizer ``state_dict`` rebuilt from ``optimizer_to_flat``'s output."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict[str, Any]) -> None:
    """Writes groups of tensors (``{"model": {...}, "optim": {...}}``) and ``meta`` to one file.

    Tensors are copied to contiguous CPU memory: safetensors refuses shared storage, and a
    checkpoint must not alias the live training state.
    """
    flat = {
        f"{group}/{name}": tensor.detach().to("cpu", copy=True).contiguous()
        for group, items in tensors.items()
        for name, tensor in items.items()
    }
    data = save(flat, metadata={_META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Returns the tensor groups and the meta written by ``save_checkpoint``.

    Raises:
        ValueError: when the file is not a sparsebench checkpoint or is damaged.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        flat = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in flat.items():
            group, key = name.split("/", 1)
            groups.setdefault(group, {})[key] = tensor
    except Exception as error:  # noqa: BLE001 - any parse failure means a damaged file
        problem = " ".join(str(error).split(": ", 1)[-1].split()) or type(error).__name__
        raise ValueError(f"{path} is not a readable sparsebench checkpoint ({problem}); delete "
                         f"the folder {path.parent} to train the run from its start, or "
                         f"restore the file.") from None
    return groups, meta
