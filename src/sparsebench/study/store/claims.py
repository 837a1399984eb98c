"""Claiming runs, so several sweep processes sharing a store never train one point twice: a
pending row is claimed by one worker, kept alive by its heartbeat, and released or marked
failed; a claim whose heartbeat stopped may be taken over."""

from __future__ import annotations

import time

from .results import _COLUMNS, Run, _now, _to_row
from .schema import StoreFile

#: Seconds after which a running claim whose heartbeat stopped may be taken by another worker.
DEFAULT_STALE_SECONDS = 600.0


class RunClaims(StoreFile):
    """The claim on each run of a store: which worker trains it, and since when."""

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

    def take_over(self, run_id: str, dead: str | None, worker: str) -> bool:
        """Gives ``worker`` the claim on ``run_id`` that ``dead`` (a process gone) held.
        Conditional on the dead owner, so of several processes taking over only one wins.
        Returns True for that one."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET worker=?, heartbeat=? WHERE id=? AND status='running' "
                "AND worker IS ?", (worker, time.time(), run_id, dead))
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

