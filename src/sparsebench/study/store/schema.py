"""The store's file: the table layout and its migrations, opening a file (refusing what is no
run store, before SQLite writes anything) and the one-transaction-per-write discipline.

Only the connection opened here ever touches the file: opening and closing another
descriptor on it would drop SQLite's POSIX locks of this process's connection.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ...rundir import check_output_file
from .results import SOURCES, STATUSES, _now, metrics_of_result, read_result, result_layers

if TYPE_CHECKING:
    from . import RunStore

#: Version of the table layout below; bump it (and migrate) whenever a column changes.
#: 2 added ``runs.layers`` (the per-layer report of result.json, so the report needs no run
#: directory) and the ``inference`` table (dense vs compiled-sparse timings of a run's model).
#: 3 added ``runs.metrics``: every metric of every evaluated split, not only the headline one.
SCHEMA_VERSION = 3

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
    try:  # below a file: the parent check every output path of sparsebench gets
        check_output_file(path, "--store")
    except ValueError as error:
        raise StoreError(str(error)) from None
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


class StoreFile:
    """The connection to a run store's file at ``path`` (created with its schema when absent);
    :class:`~sparsebench.study.store.RunStore` adds the reading and writing of runs.

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

