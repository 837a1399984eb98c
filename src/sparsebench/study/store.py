"""The run store: one SQLite file holding every run of a study, ours and the published ones.

One row per run (one row per *evaluation* where a trained model is evaluated several ways, as
the study's Transformer VD runs are at eleven log-alpha thresholds; ``train_id`` then names the
trained model the rows share). Several processes may use one store at once: the file is in WAL
mode with a busy timeout, and every write is one ``BEGIN IMMEDIATE`` transaction, so two sweep
processes neither corrupt it nor run the same point twice (see :meth:`RunStore.claim`).

Units: ``metric_value`` is in one unit per metric, BLEU in points (0-100) and top-1 as a
fraction (0-1); sparsities are fractions.

Open one :class:`RunStore` per process (or thread); a connection must not cross a fork.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..rundir import atomic_write_bytes

__all__ = [
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
    "TECHNIQUES",
    "InferenceResult",
    "Run",
    "RunStore",
    "StoreError",
    "StoreReplaced",
    "metrics_of_result",
    "device_kind",
    "model_family_of",
    "read_result",
    "result_layers",
]

#: Version of the table layout below; bump it (and migrate) whenever a column changes.
#: 2 added ``runs.layers`` (the per-layer report of result.json, so the report needs no run
#: directory) and the ``inference`` table (dense vs compiled-sparse timings of a run's model).
#: 3 added ``runs.metrics``: every metric of every evaluated split, not only the headline one.
SCHEMA_VERSION = 3

STATUSES = ("pending", "running", "finished", "failed", "diverged")
SOURCES = ("ours", "published")
#: The techniques a row may name: the library's four, the dense baseline, the retraining kinds
#: of the study's second question, MP v2 (non-uniform layer distribution, 1.5x steps) and a
#: dense model narrowed to a sparse model's nonzero count (never part of the dense baseline).
TECHNIQUES = (
    "dense",
    "magnitude",
    "random",
    "variational_dropout",
    "l0",
    "scratch-e",
    "scratch-b",
    "lottery",
    "augmented",
    "mp-v2",
    "small-dense",
)
#: Our method registry's aliases, so a result.json naming one still lands on one technique.
_TECHNIQUE_ALIASES = {"vd": "variational_dropout", "l0_regularization": "l0", "none": "dense"}

#: Seconds after which a running claim whose heartbeat stopped may be taken by another worker.
DEFAULT_STALE_SECONDS = 600.0

_JSON_COLUMNS = ("hyperparameters", "config", "flags", "layers", "metrics")

_INFERENCE_TABLE = """
CREATE TABLE IF NOT EXISTS inference (
    run_id         TEXT NOT NULL,
    batch          INTEGER NOT NULL,
    threads        INTEGER NOT NULL,
    dense_seconds  REAL NOT NULL,
    sparse_seconds REAL NOT NULL,
    sparse_layers  INTEGER NOT NULL,
    layers         INTEGER NOT NULL,
    workload       TEXT NOT NULL DEFAULT '',
    machine        TEXT NOT NULL DEFAULT '',
    plan           TEXT NOT NULL DEFAULT '[]',
    measured       TEXT NOT NULL,
    PRIMARY KEY (run_id, batch, threads)
);
"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id                TEXT PRIMARY KEY,
    train_id          TEXT NOT NULL,
    sweep             TEXT NOT NULL DEFAULT '',
    task              TEXT NOT NULL DEFAULT '',
    model_family      TEXT NOT NULL DEFAULT '',
    technique         TEXT NOT NULL,
    variant           TEXT NOT NULL DEFAULT '',
    target_sparsity   REAL,
    achieved_sparsity REAL,
    metric_name       TEXT NOT NULL DEFAULT '',
    metric_value      REAL,
    higher_is_better  INTEGER NOT NULL DEFAULT 1,
    hyperparameters   TEXT NOT NULL DEFAULT '{{}}',
    config            TEXT NOT NULL DEFAULT '{{}}',
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    error             TEXT,
    seconds_per_step  REAL,
    train_seconds     REAL,
    run_dir           TEXT,
    source            TEXT NOT NULL DEFAULT 'ours'
                      CHECK (source IN ({", ".join(repr(s) for s in SOURCES)})),
    flags             TEXT NOT NULL DEFAULT '{{}}',
    layers            TEXT NOT NULL DEFAULT '[]',
    metrics           TEXT NOT NULL DEFAULT '{{}}',
    replica           INTEGER,
    seed              INTEGER,
    worker            TEXT,
    heartbeat         REAL,
    created           TEXT NOT NULL,
    updated           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_family ON runs (source, model_family, technique);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep, status);
{_INFERENCE_TABLE}"""


class StoreError(ValueError):
    """The file is not a run store this version can read (unknown or newer schema)."""


class StoreReplaced(StoreError):
    """The store's file was replaced or removed while this process had it open."""


def _damaged(path: Path, why: str) -> str:
    return (f"{path} is not a sparsebench run store or is damaged ({why}); restore it from "
            f"git or a backup, or point --store at another file.")


def _check_store_path(path: Path) -> None:
    """Raises StoreError when ``path`` cannot be a run store: a folder, or below a file.
    Checked before SQLite opens it, so nothing is created beside a path that is no store."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a run store; point --store at a file "
                         f"(e.g. {path / 'results.db'}).")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{path} cannot be a run store: {parent} is a file, not a "
                                 f"folder; point --store elsewhere.")
            break
    # The file's own bytes are left to SQLite (a file that is not a database fails its first
    # read, before anything is written): opening and closing another descriptor on a database
    # this process has open drops SQLite's POSIX locks on it, and a reader elsewhere then
    # stopped seeing the sweep's commits.


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


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
        self.technique = _TECHNIQUE_ALIASES.get(self.technique, self.technique)
        # Validated here so a bad value is one sentence naming the field, not a CHECK failure.
        if self.technique not in TECHNIQUES:
            raise ValueError(
                f"run {self.id!r}: technique {self.technique!r} is not one of {TECHNIQUES}."
            )
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
    reaching whatever its regularization gives (VD, L0), as the method registry says."""
    if not method or method == "dense":
        return True
    from .. import methods  # here, not at the top: reading a store should not need torch

    try:
        return bool(methods.get(method).uses_sparsity_target)
    except ValueError:
        return True


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


class RunStore:
    """A SQLite run store at ``path`` (created with its schema when absent).

    Raises:
        StoreError: when the file is a database without our ``meta`` table, or was written by a
            newer schema than :data:`SCHEMA_VERSION`.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        _check_store_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken
        # before reading (no upgrade deadlock between two writers).
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            # Before WAL mode is switched on, which rewrites the header of a file that is not
            # in WAL mode yet: a damaged file must be left exactly as it was.
            self._check_integrity()
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._identity = _file_identity(self.path)
            self._open_schema()
        except sqlite3.DatabaseError as error:
            # Closing the connection also removes the -wal/-shm files SQLite made to read it.
            self._db.close()
            if getattr(error, "sqlite_errorname", "") not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
                raise
            raise StoreError(_damaged(self.path, str(error))) from None
        except BaseException:
            self._db.close()
            raise

    def _check_integrity(self) -> None:
        """Raises StoreError when SQLite finds the file damaged (a quick check reads every
        page: a few milliseconds for a study's store), so a truncated store fails here, in
        one sentence, and not later in the middle of a sweep or report; or when it is another
        program's database."""
        problem = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise StoreError(_damaged(self.path, problem))
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite file but not a sparsebench run store "
                f"(it has tables {sorted(tables)} and no 'meta' table); point --store at "
                f"a run store or a new file."
            )

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection."""
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Yields the connection inside one ``BEGIN IMMEDIATE`` transaction (committed on
        success, rolled back on error).

        Raises:
            StoreReplaced: when the file at :attr:`path` is no longer the one this connection
                opened (a ``git checkout``, ``stash`` or ``pull`` of a committed store writes a
                new file): writes would go to the old, deleted one and be lost.
        """
        if self._identity is not None and _file_identity(self.path) != self._identity:
            raise StoreReplaced(
                f"{self.path} was replaced or removed while this process had it open (a git "
                f"checkout, stash or pull?). Nothing more is written to the old file. Start "
                f"the sweep again: runs that finished meanwhile are read back from their run "
                f"directories.")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _open_schema(self) -> None:
        with self.transaction() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:  # a new store (another program's database was refused before)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))
                return
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        raw = row[0] if row else None
        try:
            version = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise StoreError(
                f"{self.path}: schema_version {raw!r} in its meta table is not a number; "
                "this is not a run store this version of sparsebench can read."
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} uses run-store schema {version}, newer than this sparsebench "
                f"reads (up to {SCHEMA_VERSION}); upgrade sparsebench to open it."
            )
        if version < 1:
            raise StoreError(f"{self.path}: unknown run-store schema version {version}.")
        if version == 1:
            self._migrate_from_1()
        if version <= 2:
            self._migrate_from_2()

    def _migrate_from_1(self) -> None:
        """Adds ``runs.layers`` (filled from each finished run's result.json where its run
        directory still exists) and the ``inference`` table, in one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row[0] != "1":  # another process migrated it meanwhile
                return
            db.execute("ALTER TABLE runs ADD COLUMN layers TEXT NOT NULL DEFAULT '[]'")
            db.execute(_INFERENCE_TABLE)
            for run_id, run_dir in db.execute(
                    "SELECT id, run_dir FROM runs WHERE status='finished' AND run_dir IS NOT NULL"
            ).fetchall():
                layers = result_layers(run_dir)
                if layers:
                    db.execute("UPDATE runs SET layers=? WHERE id=?", (json.dumps(layers), run_id))
            db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")

    def _migrate_from_2(self) -> None:
        """Adds ``runs.metrics``, filled from each ended run's result.json where its run
        directory still exists, in one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row[0] != "2":  # another process migrated it meanwhile
                return
            db.execute("ALTER TABLE runs ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'")
            for run_id, run_dir in db.execute(
                    "SELECT id, run_dir FROM runs WHERE status IN ('finished', 'diverged') "
                    "AND run_dir IS NOT NULL").fetchall():
                metrics = metrics_of_result(read_result(run_dir))
                if metrics:
                    db.execute("UPDATE runs SET metrics=? WHERE id=?",
                               (json.dumps(metrics, sort_keys=True), run_id))
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    @property
    def schema_version(self) -> int:
        """Returns the schema version recorded in the file."""
        return int(self._db.execute("SELECT value FROM meta WHERE key='schema_version'")
                   .fetchone()[0])

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

    def add_pending(self, run: Run) -> bool:
        """Adds ``run`` as pending unless a row with its id exists (a restarted sweep keeps its
        finished runs). Returns True when the row was added."""
        row = _to_row(run)
        row.update(status="pending", created=_now(), updated=_now(), worker=None, heartbeat=None)
        with self.transaction() as db:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(_COLUMNS)}) VALUES "
                f"({', '.join(':' + c for c in _COLUMNS)})",
                row,
            )
        return cursor.rowcount == 1

    def claim(
        self, run_id: str, worker: str, *, stale_after: float = DEFAULT_STALE_SECONDS
    ) -> bool:
        """Marks ``run_id`` as running by ``worker`` if it is pending, or running under a claim
        whose heartbeat is older than ``stale_after`` seconds (its worker presumably died).

        Returns True for exactly one of several processes claiming the same run at once.
        """
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET status='running', worker=?, heartbeat=?, updated=? "
                "WHERE id=? AND (status='pending' OR "
                "(status='running' AND (heartbeat IS NULL OR heartbeat < ?)))",
                (worker, now, _now(), run_id, now - stale_after),
            )
        return cursor.rowcount == 1

    def heartbeat(self, run_id: str, worker: str) -> bool:
        """Refreshes the claim of ``worker`` on ``run_id``. Returns False when the worker no
        longer holds it (another worker reclaimed it as stale)."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET heartbeat=? WHERE id=? AND worker=? AND status='running'",
                (time.time(), run_id, worker),
            )
        return cursor.rowcount == 1

    def release(self, run_id: str, worker: str) -> bool:
        """Puts a run claimed by ``worker`` back to pending (e.g. on a clean interrupt).
        Returns True when the worker held it."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET status='pending', worker=NULL, heartbeat=NULL, updated=? "
                "WHERE id=? AND worker=? AND status='running'",
                (_now(), run_id, worker),
            )
        return cursor.rowcount == 1

    def mark_failed(self, run_id: str, error: str) -> None:
        """Records that ``run_id`` failed with ``error`` (the sweep goes on with the others).

        Raises:
            KeyError: when no run has this id.
        """
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET status='failed', error=?, worker=NULL, heartbeat=NULL, "
                "updated=? WHERE id=?",
                (error, _now(), run_id),
            )
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
        existing = self.get(run_id)
        config = dict(result.get("config") or {})
        model_name = (config.get("model") or {}).get("name", "")
        metric = result.get("metric") or {}
        value = metric.get("test")
        if value is None:
            value = metric.get("valid")
        method = technique or result.get("technique") or result.get("method") or "dense"
        base = existing or Run(id=run_id, technique=method)
        target = result.get("target_sparsity", base.target_sparsity)
        if not _uses_target(result.get("method")):
            # VD and L0 have no sparsity target: a config default there is not a target, and
            # keeping it would flag every such run as missing its target.
            target = None
        run = Run(
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
        buffer = io.StringIO()
        columns = [c for c in _COLUMNS if c != "layers"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        for run in self.runs(**filters):
            writer.writerow(_to_row(run))
        atomic_write_bytes(path, buffer.getvalue().encode())
        return Path(path)

    # -- inference timings ---------------------------------------------------------------------

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


def _result_flags(flags: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Returns ``flags`` with what the result says about how it was trained: the layout of
    its activations (``memory_format``; absent for runs from before the option, which were
    NCHW), so step times are only compared between runs that trained alike."""
    flags = dict(flags)
    if result.get("memory_format"):
        flags["memory_format"] = result["memory_format"]
    return flags
