"""Who holds a claim on a store's row, and keeping claims alive: shared by the processes that
divide a store's work among themselves (``sparsebench sweep``, ``sparsebench one-shot``).

A claim names its owner ``host:pid:random``. A row left "running" by a process of this host
that no longer exists (killed outright) may be taken over at once; a claim from another host is
taken only once its heartbeat, refreshed by :class:`Heartbeat`, has stopped for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .store import Run, RunStore, StoreReplaced

__all__ = ["Heartbeat", "claim_open_run", "dead_local_worker", "sigterm_as_interrupt",
           "worker_id"]

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Returns ``host:pid:random``, the claim owner written to the store by this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_worker(worker: str | None) -> bool:
    """Returns True when ``worker`` names a process of this host that no longer exists."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_open_run(store: RunStore, run: Run, worker: str, stale_after: float,
                   on_take_over: Callable[[str | None], None] | None = None) -> bool:
    """Returns True when ``worker`` now holds ``run``, a row last read as pending or running:
    a pending row, or a running one whose holder is a process of this host that is gone (taken
    over at once, then ``on_take_over`` is called with the old holder) or whose heartbeat has
    been silent for ``stale_after`` seconds."""
    if run.status == "running" and dead_local_worker(run.worker):
        claimed = store.take_over(run.id, run.worker, worker)
        if claimed and on_take_over is not None:
            on_take_over(run.worker)
        return claimed
    return store.claim(run.id, worker, stale_after=stale_after)


class Heartbeat(threading.Thread):
    """Refreshes this process's claims (``held``, under ``lock``) every ``every`` seconds, on
    its own connection, until ``stopped`` is set."""

    def __init__(self, path: Path, worker: str, every: float) -> None:
        super().__init__(daemon=True)
        self.path, self.worker, self.every = path, worker, every
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def hold(self, run_id: str) -> None:
        with self.lock:
            self.held.add(run_id)

    def drop(self, run_id: str) -> None:
        with self.lock:
            self.held.discard(run_id)

    def take_all(self) -> list[str]:
        """Returns the claims held and forgets them (to release them)."""
        with self.lock:
            held = sorted(self.held)
            self.held.clear()
        return held

    def run(self) -> None:
        store = RunStore(self.path)
        try:
            while not self.stopped.wait(self.every):
                with self.lock:
                    held = list(self.held)
                for run_id in held:
                    store.heartbeat(run_id, self.worker)
        except StoreReplaced as error:
            # The main thread stops at its next write; the work in progress finishes first,
            # so say it now and stop beating.
            log.warning("%s", error)
        finally:
            store.close()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within it, SIGTERM raises KeyboardInterrupt (on the main thread; elsewhere it changes
    nothing), so a stopped process releases its claims as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
