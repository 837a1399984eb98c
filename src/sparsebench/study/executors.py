"""Where a sweep's runs execute: in this process, in a local process pool, or as Ray tasks.

An executor takes a task (plain data: the resolved run configuration as a dict, the run
directory and the CPU threads it may use) and returns a ``concurrent.futures.Future`` whose
result is ``{"ok": True, "result": <result.json dict>}`` or ``{"ok": False, "error": "..."}``;
a run that raises never takes the sweep down with it. The sweep driver alone talks to the run
store, so workers (other processes, other machines) need only the code, the data and a shared
run directory.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "LocalPoolExecutor", "RayExecutor",
           "execute", "make_executor"]

EXECUTORS = ("local", "ray")


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Trains one run from ``task`` (``config``: a RunConfig as plain data, ``run_dir``,
    optional ``threads``) and returns ``{"ok": True, "result": ...}``, or ``{"ok": False,
    "error": ...}`` with the exception and the last lines of its traceback."""
    try:
        import torch

        from ..train import train
        from ..train.config import RunConfig

        if task.get("threads"):
            torch.set_num_threads(int(task["threads"]))
        config = RunConfig.from_dict(task["config"])
        return {"ok": True, "result": train(config, task["run_dir"], progress=False)}
    except Exception as error:  # noqa: BLE001 - recorded as the run's failure, sweep goes on
        tail = "".join(traceback.format_exception(error)[-3:]).strip()
        return {"ok": False, "error": f"{type(error).__name__}: {error}\n{tail}"}


class Executor(Protocol):
    """Runs tasks; ``slots`` is how many may be in flight at once."""

    slots: int

    def submit(self, task: dict[str, Any]) -> Future:
        """Returns a future of :func:`execute`'s answer for ``task``."""
        ...

    def close(self) -> None:
        """Stops the workers (running tasks are abandoned; the sweep releases their claims)."""
        ...


class InProcessExecutor:
    """Runs each task in this process when submitted (one at a time)."""

    slots = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def submit(self, task: dict[str, Any]) -> Future:
        """Runs ``task`` now; returns its completed future."""
        future: Future = Future()
        future.set_result(execute({**task, "threads": task.get("threads") or self.threads}))
        return future

    def close(self) -> None:
        """Nothing to stop."""


class LocalPoolExecutor:
    """A pool of ``workers`` spawned processes (spawn, not fork: torch's threads and the
    store's SQLite connection must not cross a fork), each run with ``threads`` CPU threads."""

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.slots = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._pool = ProcessPoolExecutor(max_workers=workers,
                                         mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: dict[str, Any]) -> Future:
        """Queues ``task`` in the pool; returns its future."""
        return self._pool.submit(execute, {**task, "threads": task.get("threads") or self.threads})

    def close(self) -> None:
        """Cancels queued tasks and stops the worker processes."""
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.terminate()  # a run killed here resumes from its checkpoint next time
        self._pool.shutdown(wait=False, cancel_futures=True)


class RayExecutor:
    """Each run is a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs. Joins the cluster at
    ``address`` (``"auto"`` for the local one) or starts a local instance with ``workers``
    CPUs (all of this machine's by default). Workers need sparsebench installed, the data, and
    the run directory on a shared filesystem."""

    def __init__(self, *, address: str | None = None, workers: int | None = None,
                 cpus: float = 1.0, gpus: float = 0.0, threads: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'ray>=2.60' "
                             "(or use --executor local).") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                ray.init(address=address, **options)
            else:
                num_cpus = int(workers * cpus) if workers else None
                ray.init(num_cpus=num_cpus, **options)
            self._started = True
        threads = threads or max(1, int(cpus))
        self._remote = ray.remote(execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        self._threads = threads
        available = ray.cluster_resources().get("CPU", 1.0)
        self.slots = workers or max(1, int(available // cpus))

    def submit(self, task: dict[str, Any]) -> Future:
        """Starts ``task`` as a Ray task; returns its future."""
        return self._remote.remote({**task, "threads": task.get("threads") or self._threads}
                                   ).future()

    def close(self) -> None:
        """Shuts down the Ray instance this executor started (a joined cluster stays up)."""
        if self._started:
            self._ray.shutdown()


def make_executor(kind: str, *, workers: int | None = None, address: str | None = None,
                  cpus: float = 1.0, gpus: float = 0.0, threads: int | None = None) -> Executor:
    """Returns the executor named ``kind``: ``local`` runs in this process for one worker
    (torch's own thread count) and in a spawn pool for more (the machine's cores shared out);
    ``ray`` runs Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs each. ``threads`` (torch threads
    per run) overrides the default of each.

    Raises:
        ValueError: for an unknown kind, a worker count below 1, or Ray missing.
    """
    if kind not in EXECUTORS:
        raise ValueError(f"--executor {kind!r} is not one of {list(EXECUTORS)}.")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    if kind == "ray":
        return RayExecutor(address=address, workers=workers, cpus=cpus, gpus=gpus,
                           threads=threads)
    if address:
        raise ValueError("--address only applies to --executor ray.")
    if (workers or 1) == 1:
        return InProcessExecutor(threads)
    return LocalPoolExecutor(workers, threads)
