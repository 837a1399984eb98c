"""The run store: one SQLite file holding every run of a study, ours and the published ones.

One row per run (one row per *evaluation* where a trained model is evaluated several ways, as
the study's Transformer VD runs are at eleven log-alpha thresholds; ``train_id`` then names the
trained model the rows share). Several processes may use one store at once: the file is in WAL
mode with a busy timeout, and every write is one ``BEGIN IMMEDIATE`` transaction, so two sweep
processes neither corrupt it nor run the same point twice (see :meth:`RunStore.claim`).

Units: ``metric_value`` is in one unit per metric, BLEU in points (0-100) and top-1 as a
fraction (0-1); sparsities are fractions.

Open one :class:`RunStore` per process (or thread); a connection must not cross a fork.

The package: :mod:`.schema` opens the file (layout, migrations, transactions), :mod:`.results`
holds the :class:`Run` row and reads a run's result.json into one, :mod:`.rows` writes and
queries rows, :mod:`.claims` lets sweep processes share the runs, :mod:`.exports` writes CSV and
:mod:`.inference` keeps model timings. :class:`RunStore` is all of these on one connection.
"""

from .claims import DEFAULT_STALE_SECONDS, RunClaims
from .inference import InferenceResult, InferenceTable
from .results import (
    SOURCES,
    STATUSES,
    Run,
    device_kind,
    metrics_of_result,
    model_family_of,
    read_result,
    result_layers,
)
from .rows import RunRows
from .schema import SCHEMA_VERSION, StoreError, StoreFile, StoreReplaced

__all__ = [
    "DEFAULT_STALE_SECONDS",
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
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


class RunStore(RunRows, RunClaims, InferenceTable, StoreFile):
    """A SQLite run store at ``path`` (created with its schema when absent).

    Raises:
        StoreError: when the file is a database without our ``meta`` table, or was written by a
            newer schema than :data:`SCHEMA_VERSION`.
    """


def __getattr__(name: str):
    if name == "TECHNIQUES":  # kept for code written against it
        import warnings

        from ...methods import catalogue

        warnings.warn("sparsebench.study.store.TECHNIQUES is deprecated; ask "
                      "sparsebench.methods.catalogue.names().", DeprecationWarning, stacklevel=2)
        return tuple(catalogue.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
