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
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

# The pure file helpers live in ._io (which the data builders use without torch); kept
# importable from here, where the runner and the study have always found them.
from ._io import atomic_write_bytes, atomic_write_json, check_output_dir, check_output_file

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
    "check_output_dir",
    "check_output_file",
    "check_safetensors",
    "is_finished",
    "load_finalized_model",
    "read_result",
    "read_safetensors",
]

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
MASK_FILE = "mask.safetensors"
INIT_FILE = "init.safetensors"
PROGRESS_FILE = "progress.json"  # step, loss, rate and ETA, rewritten every run.log_every steps
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"  # in CHECKPOINT_DIR


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
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); train the run again or restore "
                         f"the file.") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path} holds {type(result).__name__}, not a run's result; train the "
                         f"run again or restore the file.")
    return result


def is_finished(run_dir: str | Path) -> bool:
    """Returns True when the run directory holds a result (of any status)."""
    return (Path(run_dir) / RESULT_FILE).exists()


def read_safetensors(path: str | Path, remedy: str = "restore it or write it again"
                     ) -> dict[str, Tensor]:
    """Returns the tensors of the safetensors file at ``path``.

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: when it is truncated or not a safetensors file; the sentence names the
            file, the problem and ``remedy`` (what the user can do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"{path} is damaged or not a safetensors file "
                         f"({_safetensors_problem(error)}); {remedy}.") from None


def check_safetensors(path: str | Path, remedy: str = "restore it or write it again") -> Path:
    """Returns ``path`` after checking that it is a complete safetensors file (the header only
    is read: cheap for any size). Raises as :func:`read_safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise ValueError(f"{path} is damaged or not a safetensors file "
                         f"({_safetensors_problem(error)}); {remedy}.") from None
    return path


def _safetensors_problem(error: Exception) -> str:
    # "Error while deserializing header: incomplete metadata, file not fully covered": the
    # part after the colon says what is wrong.
    return " ".join(str(error).split(": ", 1)[-1].split())


def load_finalized_model(run_dir: str | Path) -> nn.Module:
    """Returns the run's model, rebuilt from its configuration, with its finalized weights
    loaded, in eval mode.

    Raises:
        FileNotFoundError: when the run has no result or no model file.
        ValueError: when ``result.json`` names no model, or the model file is damaged or holds
            weights of another model (one sentence naming the file).
    """
    from . import models

    run_dir = Path(run_dir)
    result = read_result(run_dir)
    try:
        spec = result["config"]["model"]
        name, options = spec["name"], dict(spec.get("options", {}))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"{run_dir / RESULT_FILE} has no config.model entry with the model's "
                         f"name and options; is it a sparsebench run?") from None
    model = models.create(name, **options)
    path = run_dir / MODEL_FILE
    state = read_safetensors(path, "train the run again or restore its directory")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # missing, unexpected or misshapen weights
        first = str(error).splitlines()[0].rstrip(":. ")
        raise ValueError(f"{path} does not hold the weights of {name} {options or ''} "
                         f"({first}); train the run again or restore its directory.") from None
    return model.eval()
