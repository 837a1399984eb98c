"""Writing and reading the ``runs`` table: whole rows, a runner's result, other stores' runs,
and the queries the study and the report make."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exports import write_runs_csv
from .results import _COLUMNS, Run, _from_row, _now, _to_row, run_of_result
from .schema import StoreFile

if TYPE_CHECKING:
    from . import RunStore


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Returns a WHERE clause and its parameters; a filter value may be one value, None
    (no filter) or a list/tuple/set of accepted values."""
    clauses, params = [], []
    for name, value in filters.items():
        if name not in _COLUMNS:
            raise ValueError(f"unknown run field {name!r}; filter on one of {_COLUMNS}.")
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            values = list(value)
            clauses.append(f"{name} IN ({', '.join('?' * len(values))})" if values else "0")
            params.extend(values)
        else:
            clauses.append(f"{name} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class RunRows(StoreFile):
    """The rows of a store's ``runs`` table, one :class:`Run` each."""

    # -- writing -------------------------------------------------------------------------------

    def upsert(self, runs: Iterable[Run]) -> int:
        """Inserts the runs, replacing rows with the same id (keeping their ``created`` time),
        in one transaction. Returns the number of runs written."""
        with self.transaction() as db:
            return self._write(db, runs)

    def replace(self, runs: Iterable[Run], **filters: Any) -> int:
        """Deletes the rows matching ``filters`` (at least one) and writes ``runs``, in one
        transaction: re-importing a file this way never duplicates or half-replaces its rows.
        Returns the number of runs written."""
        where, params = _where(filters)
        if not where:
            raise ValueError("replace() needs at least one filter; refusing to empty the store.")
        with self.transaction() as db:
            db.execute(f"DELETE FROM runs{where}", params)
            return self._write(db, runs)

    @staticmethod
    def _write(db: sqlite3.Connection, runs: Iterable[Run]) -> int:
        now = _now()
        updated = [c for c in _COLUMNS if c != "created"]
        sql = (
            f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES "
            f"({', '.join(':' + c for c in _COLUMNS)}) ON CONFLICT(id) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in updated)
        )
        count = 0
        for run in runs:
            row = _to_row(run)
            row["created"] = row["created"] or now
            row["updated"] = now
            db.execute(sql, row)
            count += 1
        return count

    def set_metrics(self, run_id: str, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Replaces the ``metrics`` of row ``run_id`` alone, in one statement, so a sweep
        writing the rest of the row meanwhile loses nothing.

        Raises:
            KeyError: when the store has no such run.
        """
        with self.transaction() as db:
            cursor = db.execute("UPDATE runs SET metrics=?, updated=? WHERE id=?",
                                (json.dumps(metrics, sort_keys=True), _now(), run_id))
        if cursor.rowcount != 1:
            raise KeyError(f"no run {run_id!r} in {self.path}")

    def record_result(
        self,
        run_id: str,
        result: Mapping[str, Any],
        run_dir: str | Path | None = None,
        *,
        sweep: str | None = None,
        technique: str | None = None,
        model_family: str | None = None,
        variant: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        replica: int | None = None,
    ) -> Run:
        """Stores the runner's ``result.json`` dict (schema in :mod:`sparsebench.rundir`) as the
        row ``run_id`` (created when absent, otherwise updated; the claim is cleared).

        The keyword arguments override what the result implies, for the study harness: a
        scratch-e retraining run is a ``magnitude`` method run to the runner, say.

        Returns:
            The stored :class:`Run`.

        Raises:
            ValueError: when the result lacks ``status``/``metric`` or names an unknown status or
                technique.
        """
        if "status" not in result:
            raise ValueError(f"result for run {run_id!r} has no 'status' field.")
        run = run_of_result(run_id, result, self.get(run_id), run_dir, sweep=sweep,
                            technique=technique, model_family=model_family, variant=variant,
                            hyperparameters=hyperparameters, replica=replica)
        self.upsert([run])
        stored = self.get(run_id)
        assert stored is not None  # just written in its own transaction
        return stored

    def import_runs(self, other: RunStore, runs_dir: str | Path | None = None,
                    only: Callable[[Run], bool] | None = None) -> dict[str, int]:
        """Copies our runs that ended in ``other`` (finished or diverged; a study continued
        on another machine) into this store where this store has no row for them or has them
        still open. Rows this store already holds as ended are kept. A run that failed there
        is left to run here: a failure elsewhere says more about that machine than about the
        run. ``runs_dir``: where their run directories now live here (``runs_dir/<id>``;
        default: unchanged). ``only``: when given, just the runs it accepts are considered
        (e.g. those a sweep plans, to reuse a study's runs in a store of their own).

        Returns the counts ``imported``, ``kept`` and ``failed_there``.
        """
        mine = {run.id: run for run in self.runs(source="ours")}
        incoming, kept = [], 0
        failed_there = sum(1 for run in other.runs(source="ours", status="failed")
                           if only is None or only(run))
        for run in other.runs(source="ours", status=["finished", "diverged"]):
            if only is not None and not only(run):
                continue
            here = mine.get(run.id)
            if here is not None and here.status not in ("pending", "running"):
                kept += 1
                continue
            moved = str(Path(runs_dir) / run.id) if runs_dir is not None else run.run_dir
            incoming.append(replace(run, run_dir=moved, worker=None, heartbeat=None,
                                    created=here.created if here else run.created))
        self.upsert(incoming)
        return {"imported": len(incoming), "kept": kept, "failed_there": failed_there}

    def delete(self, **filters: Any) -> int:
        """Deletes the runs matching ``filters`` (at least one is required). Returns the count."""
        where, params = _where(filters)
        if not where:
            raise ValueError("delete() needs at least one filter; refusing to empty the store.")
        with self.transaction() as db:
            return db.execute(f"DELETE FROM runs{where}", params).rowcount

    # -- reading -------------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        """Returns the run with this id, or None."""
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _from_row(row) if row else None

    def runs(self, **filters: Any) -> list[Run]:
        """Returns the runs whose columns equal the given values (a list/tuple means "any of"),
        ordered by id, e.g. ``runs(source="published", technique=("magnitude", "l0"))``."""
        where, params = _where(filters)
        rows = self._db.execute(f"SELECT * FROM runs{where} ORDER BY id", params).fetchall()
        return [_from_row(row) for row in rows]

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Returns :meth:`runs` as plain dicts."""
        return [run.as_dict() for run in self.runs(**filters)]

    def count(self, **filters: Any) -> int:
        """Returns the number of runs matching ``filters``."""
        where, params = _where(filters)
        return int(self._db.execute(f"SELECT COUNT(*) FROM runs{where}", params).fetchone()[0])

    def distinct(self, column: str, **filters: Any) -> list[Any]:
        """Returns the sorted distinct values of ``column`` among runs matching ``filters``."""
        if column not in _COLUMNS:
            raise ValueError(f"unknown run field {column!r}; choose one of {_COLUMNS}.")
        where, params = _where(filters)
        rows = self._db.execute(
            f"SELECT DISTINCT {column} FROM runs{where} ORDER BY {column}", params
        ).fetchall()
        return [row[0] for row in rows]

    def to_csv(self, path: str | Path, **filters: Any) -> Path:
        """Writes the matching runs as CSV (JSON columns as JSON text; the per-layer lists
        are left out, the report writes them as their own tables), atomically.
        Returns the path written."""
        return write_runs_csv(self.runs(**filters), path)
