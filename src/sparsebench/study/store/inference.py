"""The ``inference`` table: dense against compiled-sparse timings of a run's model."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .results import _now
from .schema import StoreFile


@dataclass
class InferenceResult:
    """The medians of one ``bench_model`` measurement of a run's finalized model: dense
    execution against the compiled sparse module (``sparse_layers`` of ``layers`` prunable
    layers chose a sparse kernel), at ``batch`` with ``threads`` torch threads, measured side
    by side in one process; ``workload`` says what one timed call does and ``machine`` the
    CPU, load and kernel path at the time. ``plan`` has one entry per prunable layer: name,
    kind, density, block, the performance model's break-even density, whether it went sparse,
    and the layer's own measured dense and sparse seconds per call."""

    run_id: str
    batch: int
    threads: int
    dense_seconds: float
    sparse_seconds: float
    sparse_layers: int
    layers: int
    workload: str = ""
    machine: str = ""
    measured: str = ""
    plan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Returns dense time / sparse time (above 1: the sparse model is faster)."""
        return self.dense_seconds / self.sparse_seconds


class InferenceTable(StoreFile):
    """The timings of runs' models a store holds, several per run (batch, threads)."""

    def record_inference(self, result: InferenceResult) -> None:
        """Stores one timing of a run's model (replacing an earlier one at the same batch and
        thread count)."""
        row = asdict(result)
        row["measured"] = row["measured"] or _now()
        row["plan"] = json.dumps(row["plan"])
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO inference ({', '.join(row)}) VALUES "
                f"({', '.join(':' + c for c in row)})", row)

    def inference(self, run_ids: Iterable[str] | None = None) -> list[InferenceResult]:
        """Returns the stored timings (of ``run_ids`` only, when given), by run, threads, batch."""
        rows = self._db.execute(
            "SELECT * FROM inference ORDER BY run_id, threads, batch").fetchall()
        wanted = None if run_ids is None else set(run_ids)
        return [InferenceResult(**{**dict(row), "plan": json.loads(row["plan"])}) for row in rows
                if wanted is None or row["run_id"] in wanted]

