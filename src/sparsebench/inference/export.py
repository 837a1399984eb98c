"""Compact sparse export: one safetensors file, CSR for sparse layers, no pickle.

Layout of a file written by ``save_sparse``:

* tensors: for each ``SparseLinear`` / ``SparseConv2d`` at ``P``: ``P.crow_indices`` (int32),
  ``P.col_indices`` (int16 when the (block) columns fit, else int32), ``P.values`` (float32;
  ``(nblocks, bh, bw)`` for BSR) and ``P.bias``; every other parameter and buffer as a dense
  tensor under its ``state_dict`` name.
* metadata ``sparsebench``: JSON with the format version, the module tree as plain data
  (``{"type", "args", "children"}`` per module), the dense size for the size report, a
  SHA-256 over all tensor bytes, so corruption inside the data is caught, not only in the
  header, and optionally the model's registry spec (``{"name", "options"}``).

``load_sparse(path)`` rebuilds models made of the module types in ``MODULE_CODECS``
(Sequential, Linear, SparseLinear, activations, LayerNorm, ...). A model with its own classes
(e.g. a Transformer whose ``forward`` is code) is loaded into a skeleton the caller builds:
``load_sparse(path, model=skeleton)`` swaps in the sparse layers and loads the rest; when the
file names a registry model (``save_sparse(..., model_spec=...)``, as ``sparsebench export``
does), ``load_sparse`` builds that skeleton itself with ``sparsebench.models.create``.
Nothing in the file is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from sparsebench.inference.sparse_conv import SparseConv2d
from sparsebench.inference.sparse_linear import SparseLinear
from sparsebench.rundir import atomic_write_bytes, check_output_file

FORMAT = "sparsebench-sparse"
VERSION = 1
_META_KEY = "sparsebench"
_CSR_FIELDS = ("crow_indices", "col_indices", "values")
#: Module types stored as sparse arrays rather than through their state_dict.
SPARSE_TYPES: tuple[type[nn.Module], ...] = (SparseLinear, SparseConv2d)


class SparseFileError(ValueError):
    """A file is not a readable sparsebench sparse export (truncated, corrupt or foreign)."""


@dataclass(frozen=True)
class ExportReport:
    """Sizes of an export: bytes on disk against the dense float32 tensors it replaces."""

    path: Path
    file_bytes: int
    dense_bytes: int
    sparse_layers: int

    @property
    def ratio(self) -> float:
        """Return dense bytes / file bytes (how many times smaller the file is)."""
        return self.dense_bytes / self.file_bytes if self.file_bytes else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.file_bytes / 1e6:.3f} MB on disk vs {self.dense_bytes / 1e6:.3f} "
            f"MB dense ({self.ratio:.2f}x smaller, {self.sparse_layers} sparse layers)"
        )


# type name → (module → constructor args as plain data, args → empty module to load into)
Codec = tuple[Callable[[nn.Module], dict[str, Any]], Callable[[dict[str, Any]], nn.Module]]


def _no_args(cls: type[nn.Module]) -> Codec:
    return (lambda m: {}, lambda a: cls())


def _sparse_stub(a: dict[str, Any]) -> nn.Module:
    # The tree lists sparse layers, but load_sparse builds them from the tensors directly.
    return nn.Identity()


def _sparse_layer(kind: str, a: dict[str, Any], parts: list[Tensor], bias: Tensor | None):  # noqa: ANN202
    """Return the sparse layer described by a tree node's args and its arrays."""
    if kind == "SparseLinear":
        linear = SparseLinear(a["in_features"], a["out_features"], *parts, bias)
        linear.activation = a.get("activation", "none")  # absent from files before it existed
        return linear
    conv = SparseConv2d(
        a["in_channels"],
        a["out_channels"],
        tuple(a["kernel_size"]),
        tuple(a["stride"]),
        tuple(a["padding"]),
        tuple(a["dilation"]),
        *parts,
        bias,
    )
    conv.relu = bool(a.get("relu", False))  # files written before the fused ReLU lack it
    return conv


MODULE_CODECS: dict[str, Codec] = {
    "Sequential": _no_args(nn.Sequential),
    "ModuleList": _no_args(nn.ModuleList),
    "Identity": _no_args(nn.Identity),
    "ReLU": _no_args(nn.ReLU),
    "Tanh": _no_args(nn.Tanh),
    "Sigmoid": _no_args(nn.Sigmoid),
    "GELU": (lambda m: {"approximate": m.approximate}, lambda a: nn.GELU(a["approximate"])),
    "Dropout": (lambda m: {"p": m.p}, lambda a: nn.Dropout(a["p"])),
    "Softmax": (lambda m: {"dim": m.dim}, lambda a: nn.Softmax(a["dim"])),
    "Flatten": (
        lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
        lambda a: nn.Flatten(a["start_dim"], a["end_dim"]),
    ),
    "LayerNorm": (
        lambda m: {
            "shape": list(m.normalized_shape),
            "eps": m.eps,
            "affine": m.elementwise_affine,
            "bias": getattr(m, "bias", None) is not None,
        },
        lambda a: nn.LayerNorm(a["shape"], a["eps"], a["affine"], bias=a["bias"]),
    ),
    "Linear": (
        lambda m: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        },
        lambda a: nn.Linear(a["in_features"], a["out_features"], a["bias"]),
    ),
    "Conv2d": (
        lambda m: {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
            "bias": m.bias is not None,
            "padding_mode": m.padding_mode,
        },
        lambda a: nn.Conv2d(
            a["in_channels"],
            a["out_channels"],
            tuple(a["kernel_size"]),
            tuple(a["stride"]),
            a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"]),
            tuple(a["dilation"]),
            a["groups"],
            a["bias"],
            a["padding_mode"],
        ),
    ),
    "SparseLinear": (
        lambda m: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
            "block": list(m.block),
            "activation": m.activation,
        },
        _sparse_stub,
    ),
    "SparseConv2d": (
        lambda m: {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": list(m.padding),
            "dilation": list(m.dilation),
            "bias": m.bias is not None,
            "block": list(m.block),
            "relu": m.relu,
        },
        _sparse_stub,
    ),
}


def _tree(module: nn.Module) -> dict[str, Any]:
    name = type(module).__name__
    codec = MODULE_CODECS.get(name)
    known = codec is not None and type(module).__module__.startswith(("torch.nn", "sparsebench"))
    node: dict[str, Any] = {
        "type": name if known else f"custom:{type(module).__module__}.{type(module).__qualname__}",
        "args": codec[0](module) if known and codec else {},
    }
    if not isinstance(module, SPARSE_TYPES):
        children = {n: _tree(c) for n, c in module.named_children()}
        if children:
            node["children"] = children
    return node


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{str(t.dtype)}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dense_bytes(m: nn.Module) -> int:
    """Return the float32 bytes of a sparse layer's dense weight and bias."""
    if isinstance(m, SparseLinear):
        weights = m.out_features * m.in_features
        rows = m.out_features
    else:
        weights = m.out_channels * m.cols
        rows = m.out_channels
    return (weights + (rows if m.bias is not None else 0)) * 4


def save_sparse(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    model_spec: dict[str, Any] | None = None,
) -> ExportReport:
    """Write ``model`` (typically from ``compile_sparse``) to a compact safetensors file.

    The write is atomic: a temporary file in the same folder, then a rename; nothing is
    written when ``path`` is a folder or lies below a file (``ValueError``). ``model_spec``
    (``{"name", "options"}`` for ``sparsebench.models.create``) lets ``load_sparse`` rebuild a
    registry model without a skeleton.

    Returns:
        An ``ExportReport`` with the size on disk and the dense size it replaces.
    """
    path = check_output_file(path, "the export file")
    tensors: dict[str, Tensor] = {}
    dense_bytes = 0
    sparse_prefixes = {n for n, m in model.named_modules() if isinstance(m, SPARSE_TYPES)}
    for name, t in model.state_dict().items():
        prefix = name.rpartition(".")[0]
        tensors[name] = t.detach().to("cpu").contiguous().clone()
        if prefix in sparse_prefixes:
            continue
        dense_bytes += t.numel() * t.element_size()
    for prefix in sparse_prefixes:
        dense_bytes += _dense_bytes(model.get_submodule(prefix))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tree": _tree(model),
        "dense_bytes": dense_bytes,
        "sha256": _digest(tensors),
    }
    if model_spec is not None:
        meta["model"] = {"name": model_spec["name"], "options": model_spec.get("options", {})}
    # Atomic, and with the permissions of a plain file (safetensors' own save_file writes 0600).
    atomic_write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(meta)}))
    return ExportReport(path, path.stat().st_size, dense_bytes, len(sparse_prefixes))


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"no sparse export at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise SparseFileError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    if raw is None:
        raise SparseFileError(f"{path} is a safetensors file but not a sparsebench sparse export")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SparseFileError(f"{path}: corrupt sparsebench metadata ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SparseFileError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
            f"{FORMAT!r} version {VERSION}"
        )
    if _digest(tensors) != meta.get("sha256"):
        raise SparseFileError(f"{path}: checksum mismatch, the tensor data is corrupt")
    return meta, tensors


def _build(node: dict[str, Any], where: str) -> nn.Module:
    kind = node["type"]
    if kind not in MODULE_CODECS:
        raise SparseFileError(
            f"module {where or '<root>'} has type {kind!r}, which load_sparse cannot rebuild "
            "from plain data; build the model yourself and pass it as load_sparse(path, model=...)"
        )
    module = MODULE_CODECS[kind][1](node.get("args", {}))
    for name, child in node.get("children", {}).items():
        module.add_module(name, _build(child, f"{where}.{name}" if where else name))
    return module


def _sparse_nodes(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    found = {prefix: node} if node["type"] in ("SparseLinear", "SparseConv2d") else {}
    for name, child in node.get("children", {}).items():
        found |= _sparse_nodes(child, f"{prefix}.{name}" if prefix else name)
    return found


def _identities(node: dict[str, Any], prefix: str = "") -> list[str]:
    found = [prefix] if node["type"] == "Identity" and prefix else []
    for name, child in node.get("children", {}).items():
        found += _identities(child, f"{prefix}.{name}" if prefix else name)
    return found


def _remove_fused(tree: dict[str, Any], root: nn.Module) -> None:
    """Where the saved model had an ``nn.Identity`` and the skeleton has a module without
    parameters or buffers (an activation that a sparse layer applies itself since it was
    fused), put the Identity in: a GELU applied twice would change the outputs."""
    for prefix in _identities(tree):
        parent_name, _, child = prefix.rpartition(".")
        try:
            module = root.get_submodule(prefix)
        except AttributeError:
            continue  # the state-dict check below names a real mismatch
        stateless = not any(True for _ in module.parameters()) and not any(
            True for _ in module.buffers())
        if stateless and not isinstance(module, nn.Identity):
            setattr(root.get_submodule(parent_name), child, nn.Identity())


def load_sparse(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load a file written by ``save_sparse``; the result is in eval mode.

    Args:
        path: the ``.safetensors`` file.
        model: optional skeleton of the same architecture (dense ``nn.Linear``/``nn.Conv2d``
            where the file has sparse layers); needed when the tree holds classes not in
            ``MODULE_CODECS`` and the file names no registry model. It is modified in place
            and returned; an activation that the saved model's sparse layer applies itself
            (an ``nn.Identity`` in the file) is replaced by ``nn.Identity`` in it too.

    Returns:
        The model with sparse layers holding exactly the saved arrays.

    Raises:
        SparseFileError: the file is truncated, corrupt, not an export, or does not fit ``model``.
    """
    path = Path(path)
    meta, tensors = _read(path)
    tree = meta["tree"]
    if model is None and tree["type"].startswith("custom:") and "model" in meta:
        from sparsebench import models

        model = models.create(meta["model"]["name"], **meta["model"].get("options", {}))
    root = _build(tree, "") if model is None else model
    if model is not None:
        _remove_fused(tree, root)
    for prefix, node in _sparse_nodes(tree).items():
        a = node["args"]
        try:
            parts = [tensors.pop(f"{prefix}.{f}" if prefix else f) for f in _CSR_FIELDS]
            bias = tensors.pop(f"{prefix}.bias" if prefix else "bias", None)
            layer = _sparse_layer(node["type"], a, parts, bias)
        except (KeyError, ValueError, TypeError) as exc:
            msg = f"{path}: sparse layer {prefix!r} is inconsistent: {exc}"
            raise SparseFileError(msg) from exc
        if not prefix:
            return layer.eval()
        parent_name, _, child = prefix.rpartition(".")
        try:
            root.get_submodule(parent_name).get_submodule(child)
        except AttributeError as exc:
            raise SparseFileError(f"{path}: the model has no layer {prefix!r}") from exc
        setattr(root.get_submodule(parent_name), child, layer)
    own = {k for k, v in root.state_dict().items() if not _is_sparse_key(root, k)}
    dense = {k: v for k, v in tensors.items()}
    if set(dense) != own:
        raise SparseFileError(
            f"{path}: tensors do not match the model (missing {sorted(own - set(dense))[:5]}, "
            f"unexpected {sorted(set(dense) - own)[:5]})"
        )
    root.load_state_dict(dense, strict=False)
    return root.eval()


def _is_sparse_key(root: nn.Module, key: str) -> bool:
    prefix = key.rpartition(".")[0]
    try:
        return isinstance(root.get_submodule(prefix), SPARSE_TYPES)
    except AttributeError:
        return False
