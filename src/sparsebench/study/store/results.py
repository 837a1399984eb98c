"""A run's row: the :class:`Run` record, how it is encoded into the ``runs`` table and back,
and what a run directory's ``result.json`` says, mapped into a row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...methods import catalogue

STATUSES = ("pending", "running", "finished", "failed", "diverged")
SOURCES = ("ours", "published")


_JSON_COLUMNS = ("hyperparameters", "config", "flags", "layers", "metrics")


@dataclass
class Run:
    """One row of the store, with JSON columns decoded.

    ``metric_value`` is BLEU in points or top-1 as a fraction; sparsities are fractions.
    ``train_id`` names the trained model (several evaluations of one model share it).
    ``layers`` is the per-layer list of the run's result.json (name, kind, shape, size,
    nonzeros, FLOPs, sparsity), kept here so reports need no run directory. ``metrics`` is its
    ``metrics``: split -> metric name -> value (``{"test": {"bleu": .., "loss": ..}}``).
    """

    id: str
    technique: str
    train_id: str = ""
    sweep: str = ""
    task: str = ""
    model_family: str = ""
    variant: str = ""
    target_sparsity: float | None = None
    achieved_sparsity: float | None = None
    metric_name: str = ""
    metric_value: float | None = None
    higher_is_better: bool = True
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    error: str | None = None
    seconds_per_step: float | None = None
    train_seconds: float | None = None
    run_dir: str | None = None
    source: str = "ours"
    flags: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    replica: int | None = None
    seed: int | None = None
    worker: str | None = None
    heartbeat: float | None = None
    created: str = ""
    updated: str = ""

    def __post_init__(self) -> None:
        if not self.train_id:
            self.train_id = self.id
        # An alias (a result.json naming "vd") lands on the catalogue's one name.
        self.technique = catalogue.canonical(self.technique)
        # Validated here so a bad value is one sentence naming the field, not a CHECK failure.
        if catalogue.find(self.technique) is None:
            raise ValueError(f"run {self.id!r}: technique {self.technique!r} is not one of "
                             f"{catalogue.names()}.")
        if self.status not in STATUSES:
            raise ValueError(f"run {self.id!r}: status {self.status!r} is not one of {STATUSES}.")
        if self.source not in SOURCES:
            raise ValueError(f"run {self.id!r}: source {self.source!r} is not one of {SOURCES}.")
        for name in ("target_sparsity", "achieved_sparsity"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"run {self.id!r}: {name}={value} is not a fraction in [0, 1]."
                )

    @property
    def label(self) -> str:
        """Returns the series name used in tables and figures: technique, plus variant."""
        return f"{self.technique} ({self.variant})" if self.variant else self.technique

    @property
    def device(self) -> str:
        """Returns the kind of device the run trained on (``cpu``, ``cuda``): a study may go
        on on another machine, and its runs' speeds differ."""
        return device_kind(str((self.config.get("run") or {}).get("device") or "cpu"))

    def as_dict(self) -> dict[str, Any]:
        """Returns the row as a plain dict (JSON columns as dicts)."""
        return asdict(self)


_COLUMNS = tuple(f.name for f in fields(Run))


def model_family_of(model_name: str) -> str:
    """Returns the family of a registered model name: the part before the first ``-``
    (``resnet50-small`` -> ``resnet50``, ``transformer-tiny`` -> ``transformer``)."""
    return model_name.split("-", 1)[0]


def _uses_target(method: str | None) -> bool:
    """Returns whether the runner's method hits a sparsity target (pruning) rather than
    reaching whatever its regularization gives (VD, L0), as the catalogue says."""
    technique = catalogue.find(method)
    return technique is None or technique.role != catalogue.SPARSIFIER or technique.takes_target


def device_kind(device: str) -> str:
    """Returns the kind of a torch device name, its index dropped (``cuda:1`` -> ``cuda``)."""
    return device.split(":", 1)[0]


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """Returns ``run_dir/result.json``, or {} when it cannot be read."""
    try:
        result = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def result_layers(run_dir: str | Path) -> list[dict[str, Any]]:
    """Returns the ``layers`` list of ``run_dir/result.json``, or [] when it cannot be read."""
    layers = read_result(run_dir).get("layers")
    return list(layers) if isinstance(layers, list) else []


def metrics_of_result(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Returns the numeric ``metrics`` of a result.json dict, split by split."""
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    return {str(split): {str(k): float(v) for k, v in values.items()
                         if isinstance(v, int | float) and not isinstance(v, bool)}
            for split, values in metrics.items() if isinstance(values, dict)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _to_row(run: Run) -> dict[str, Any]:
    row = run.as_dict()
    for name in _JSON_COLUMNS:
        row[name] = json.dumps(row[name], sort_keys=True)
    row["higher_is_better"] = int(bool(row["higher_is_better"]))
    return row


def _from_row(row: sqlite3.Row) -> Run:
    values = dict(row)
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name] or ("[]" if name == "layers" else "{}"))
    values["higher_is_better"] = bool(values["higher_is_better"])
    return Run(**values)



def run_of_result(
    run_id: str,
    result: Mapping[str, Any],
    existing: Run | None,
    run_dir: str | Path | None = None,
    *,
    sweep: str | None = None,
    technique: str | None = None,
    model_family: str | None = None,
    variant: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    replica: int | None = None,
) -> Run:
    """Returns the row for the runner's ``result.json`` dict of run ``run_id``, over the
    ``existing`` row (None when the store has none); the keyword arguments override what the
    result implies (see :meth:`RunStore.record_result`)."""
    config = dict(result.get("config") or {})
    model_name = (config.get("model") or {}).get("name", "")
    metric = result.get("metric") or {}
    value = metric.get("test")
    if value is None:
        value = metric.get("valid")
    method = technique or result.get("technique") or result.get("method") or catalogue.DENSE
    base = existing or Run(id=run_id, technique=method)
    target = result.get("target_sparsity", base.target_sparsity)
    if not _uses_target(result.get("method")):
        # VD and L0 have no sparsity target: a config default there is not a target, and
        # keeping it would flag every such run as missing its target.
        target = None
    return Run(
        id=run_id,
        train_id=base.train_id,
        sweep=sweep if sweep is not None else base.sweep,
        task=str(result.get("task") or base.task),
        model_family=model_family or base.model_family or model_family_of(model_name),
        technique=method,
        variant=variant if variant is not None else base.variant,
        target_sparsity=target,
        achieved_sparsity=result.get("sparsity", base.achieved_sparsity),
        metric_name=str(metric.get("name") or base.metric_name),
        metric_value=None if value is None else float(value),
        higher_is_better=bool(metric.get("higher_is_better", base.higher_is_better)),
        hyperparameters=dict(hyperparameters or base.hyperparameters),
        config=config,
        status=str(result["status"]),
        error=result.get("error"),
        seconds_per_step=result.get("seconds_per_step"),
        train_seconds=result.get("train_seconds"),
        run_dir=str(run_dir) if run_dir is not None else base.run_dir,
        source="ours",
        flags=_result_flags(base.flags, result),
        layers=list(result.get("layers") or base.layers),
        metrics=metrics_of_result(result),  # an attempt's own: none if it diverged
        replica=replica if replica is not None else base.replica,
        seed=result.get("seed", base.seed),
        created=base.created,
    )


def _result_flags(flags: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Returns ``flags`` with what the result says about how it was trained: the layout of
    its activations (``memory_format``; absent for runs from before the option, which were
    NCHW), so step times are only compared between runs that trained alike."""
    flags = dict(flags)
    if result.get("memory_format"):
        flags["memory_format"] = result["memory_format"]
    return flags
