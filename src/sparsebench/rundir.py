"""The layout of a run directory, shared by the runner (which writes it), the study harness
and the inference tools (which read it). Everything in it loads without pickle.

    DIR/result.json         written last and atomically; its presence means "done"
    DIR/config.yaml         the resolved configuration of the run
    DIR/model.safetensors   the finalized weights (plain state_dict keys, exact zeros)
    DIR/mask.safetensors    boolean masks of the sparsified weights, by weight name
    DIR/init.safetensors    the weights before training (for lottery-ticket retraining)
    DIR/checkpoint/         the last checkpoint (safetensors + JSON), removed when done
    DIR/progress.json       the step, loss, rate and ETA, rewritten as the run trains

``result.json`` (schema 1) holds at least: ``status`` ("finished", "diverged" or "failed"),
``task``, ``method``, ``target_sparsity``, ``sparsity`` (achieved, over the sparsified weights),
``layers`` (per weight: name, shape, size, nonzeros, sparsity, dense_flops, sparse_flops),
``metric`` ({"name", "test", "valid", "higher_is_better"}), ``metrics`` (all of them),
``steps``, ``train_seconds``, ``seconds_per_step``, ``flops`` ({"dense", "sparse"}),
``config`` (the resolved configuration; ``config["model"]`` is {"name", "options"} for
``sparsebench.models.create``), ``seed`` and ``versions``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "INIT_FILE",
    "MASK_FILE",
    "MODEL_FILE",
    "PROGRESS_FILE",
    "RESULT_FILE",
    "atomic_write_bytes",
    "atomic_write_json",
    "is_finished",
    "load_finalized_model",
    "read_result",
]

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
MASK_FILE = "mask.safetensors"
INIT_FILE = "init.safetensors"
PROGRESS_FILE = "progress.json"  # step, loss, rate and ETA, rewritten every run.log_every steps
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"  # in CHECKPOINT_DIR


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename, so a reader (or a
    killed writer) never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the user's other tools
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    """Writes ``value`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """Returns the parsed ``result.json`` of a run directory.

    Raises:
        FileNotFoundError: when the run has no result yet.
        ValueError: when the file is not valid JSON.
    """
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error


def is_finished(run_dir: str | Path) -> bool:
    """Returns True when the run directory holds a result (of any status)."""
    return (Path(run_dir) / RESULT_FILE).exists()


def load_finalized_model(run_dir: str | Path) -> nn.Module:
    """Returns the run's model, rebuilt from its configuration, with its finalized weights
    loaded, in eval mode."""
    from . import models

    result = read_result(run_dir)
    spec = result["config"]["model"]
    model = models.create(spec["name"], **spec.get("options", {}))
    model.load_state_dict(load_file(str(Path(run_dir) / MODEL_FILE)))
    return model.eval()
