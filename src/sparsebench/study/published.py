"""The study's published runs (Gale, Elsen & Hooker 2019), shipped as package data, read into
the run store as rows with ``source="published"``.

Every quirk of the released CSV files is handled here, file by file (see ``published_data/``):

* ResNet-50 top-1 is a fraction everywhere except ``rn50_baselines.csv`` (percent); the store
  holds fractions, so that file is divided by 100. Each file's unit is declared below and
  checked row by row, so a percent in a fraction file is refused rather than silently mixed.
* Header spellings differ (``Moses BLEU``/``MOSES BLEU``, ``Tensor2Tensor HParams``/``Hparams``/
  ``HParams``, ``label smoothing``/``label_smoothing``, ``global sparsity``/``global_sparsity``,
  ``Target Sparsity``); they are matched case- and separator-insensitively.
* ``rn50_scratch_lr_constant_decay.csv`` has an empty header where the others say
  ``init method``; that one file's empty column is read as ``init_method``.
* ``transformer_variational_dropout.csv`` is wide: eleven ``MOSES BLEU:t``/``Sparsity:t`` pairs
  per trained model, one per log-alpha threshold ``t``. Each pair is one row (threshold in the
  hyperparameters as ``log_alpha_threshold``); the rows of one model share its ``train_id``.
* Scratch files with ``Run 1`` .. ``Run 9`` columns hold nine replicas per row: one store row per
  replica (``replica`` = N), all sharing the row's settings.
* Failed runs (BLEU exactly 0) are kept, flagged ``failed_bleu_zero``; numbers in scientific
  notation (``2.43E-06``) parse as floats.
* ``rn50_l0_regularization.csv`` seems to have its ``label_smoothing`` and ``weight_decay``
  labels swapped; the values are stored under the file's labels and the row is flagged.
* ResNet-50 runs at chance level (top-1 below 1%, as every sparse L0 run is) are flagged
  ``at_chance``.

Retraining files map to the study's kinds: ``scratche`` -> scratch-e, ``scratchb`` -> scratch-b,
``*_augmented_init`` -> augmented (variant scratch-e/scratch-b), ``lottery_ticket`` -> lottery.
The ResNet-50 ``scratch_lr_*`` files give ``time multiplier`` 1 (scratch-e) or 2 (scratch-b)
and ``init method`` baseline or sparse; we read "sparse" as the study's augmented (sparsity-
aware) initialization. That reading is ours: the files do not define it, so the raw
``init_method`` stays in the hyperparameters. The learning-rate variant (``lr_scaled`` ...) is
the row's ``variant``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..methods import catalogue
from .pareto import LEVELS
from .store import Run, RunStore

__all__ = [
    "DATA_ROOT",
    "FILES",
    "FileSpec",
    "ImportCount",
    "PublishedDataError",
    "import_published",
    "read_published_file",
]

#: The package's copy of the published CSV files (and their provenance/licence note).
DATA_ROOT = Path(__file__).resolve().parent / "published_data"



#: A file whose rows are of several retraining kinds, told by each row's hyperparameters.
PER_ROW = "per-row"


class PublishedDataError(ValueError):
    """A published CSV file that is unknown or malformed; the message names file and line."""


@dataclass(frozen=True)
class FileSpec:
    """How to read one published file.

    ``layout`` is "long" (one run per row), "replicas" (``Run N`` columns, one run each) or
    "wide_vd" (``MOSES BLEU:t``/``Sparsity:t`` pairs, one evaluation each). ``metric_unit`` is
    "fraction", "percent" (divided by 100 into the store's fraction) or "bleu".
    """

    path: str
    model_family: str
    metric_unit: str
    layout: str = "long"
    #: Whether the sparsity column is a target the run hits exactly (pruning) or only achieved.
    has_target: bool = False
    #: Name given to a column with an empty header (None: an empty header is an error).
    empty_header: str | None = None
    extra_flags: tuple[tuple[str, Any], ...] = ()
    #: The technique of its rows: by default the catalogue's for the file's name (its stem
    #: after the model prefix, e.g. "magnitude_pruning"); ``PER_ROW`` when each row says.
    technique: str = ""

    def __post_init__(self) -> None:
        if not self.technique:
            stem = self.sweep.split("_", 1)[1]  # "rn50_magnitude_pruning" -> "magnitude_pruning"
            object.__setattr__(self, "technique", catalogue.of_paper_file(stem))

    @property
    def sweep(self) -> str:
        """Returns the sweep name of the file's rows: its file name without ``.csv``."""
        return Path(self.path).stem


_RN50 = "sparse_rn50/technique_comparison/rn50_"
_RN50_RETRAIN = "sparse_rn50/scratch_lotto/rn50_"
_T = "sparse_transformer/technique_comparison/transformer_"
_T_RETRAIN = "sparse_transformer/scratch_lotto/transformer_"

FILES: tuple[FileSpec, ...] = (
    FileSpec(_RN50 + "baselines.csv", "resnet50", "percent"),
    FileSpec(_RN50 + "magnitude_pruning.csv", "resnet50", "fraction",
             has_target=True, extra_flags=(("sparsity_is_nominal", True),)),
    FileSpec(_RN50 + "random_pruning.csv", "resnet50", "fraction",
             has_target=True, extra_flags=(("sparsity_is_nominal", True),)),
    FileSpec(_RN50 + "variational_dropout.csv", "resnet50", "fraction"),
    FileSpec(_RN50 + "l0_regularization.csv", "resnet50", "fraction",
             extra_flags=(("columns_possibly_swapped", "label_smoothing/weight_decay"),)),
    FileSpec(_RN50_RETRAIN + "lottery_ticket.csv", "resnet50", "fraction", has_target=True),
    FileSpec(_RN50_RETRAIN + "scratch_lr_scaled.csv", "resnet50", "fraction",
             layout="replicas", has_target=True, technique=PER_ROW),
    FileSpec(_RN50_RETRAIN + "scratch_lr_constant_final.csv", "resnet50", "fraction",
             layout="replicas", has_target=True, technique=PER_ROW),
    FileSpec(_RN50_RETRAIN + "scratch_lr_constant_decay.csv", "resnet50", "fraction",
             has_target=True, empty_header="init_method", technique=PER_ROW),
    FileSpec(_RN50_RETRAIN + "scratch_lr_continual_decay.csv", "resnet50", "fraction",
             has_target=True, technique=PER_ROW),
    FileSpec(_T + "baselines.csv", "transformer", "bleu"),
    FileSpec(_T + "magnitude_pruning.csv", "transformer", "bleu", has_target=True),
    FileSpec(_T + "random_pruning.csv", "transformer", "bleu", has_target=True),
    FileSpec(_T + "variational_dropout.csv", "transformer", "bleu", layout="wide_vd"),
    FileSpec(_T + "l0_regularization.csv", "transformer", "bleu"),
    FileSpec(_T_RETRAIN + "scratche.csv", "transformer", "bleu", has_target=True),
    FileSpec(_T_RETRAIN + "scratchb.csv", "transformer", "bleu", has_target=True),
    FileSpec(_T_RETRAIN + "scratche_augmented_init.csv", "transformer", "bleu",
             has_target=True),
    FileSpec(_T_RETRAIN + "scratchb_augmented_init.csv", "transformer", "bleu",
             has_target=True),
    FileSpec(_T_RETRAIN + "lottery_ticket.csv", "transformer", "bleu", has_target=True),
)
_BY_PATH = {spec.path: spec for spec in FILES}

_TASKS = {"resnet50": "imagenet", "transformer": "wmt14-en-de"}
_METRICS = {"resnet50": "top1", "transformer": "bleu"}

#: Header spellings -> one canonical key (after lower-casing and turning spaces into "_").
_HEADER_ALIASES = {
    "moses_bleu": "metric",
    "accuracy": "metric",
    "sparsity": "sparsity",
    "target_sparsity": "sparsity",
    "global_sparsity": "sparsity",
    "tensor2tensor_hparams": "hparams_set",
    "hparams": "hparams_set",
}
_RUN_COLUMN = re.compile(r"^run_(\d+)$")
_WIDE_BLEU = re.compile(r"^moses_bleu:(.+)$")


@dataclass(frozen=True)
class ImportCount:
    """Rows of one file: ``csv_rows`` data rows in the file became ``store_rows`` runs."""

    path: str
    csv_rows: int
    store_rows: int


def _canonical(header: str) -> str:
    key = re.sub(r"\s+", "_", header.strip().lower())
    return _HEADER_ALIASES.get(key, key)


def _number(text: str) -> int | float | str:
    """Returns ``text`` as an int or float when it is one (scientific notation included),
    otherwise the stripped text."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _nearest_level(sparsity: float) -> float | None:
    # Transformer MP/RP runs land within 0.1 pp of one of the study's levels (e.g. 0.4994994).
    level = min(LEVELS, key=lambda lv: abs(lv - sparsity))
    return level if abs(level - sparsity) <= 0.001 else None


class _Reader:
    """Reads one file's rows, with errors that name the file and line."""

    def __init__(self, path: Path, spec: FileSpec) -> None:
        self.path, self.spec = path, spec
        self._line = 1  # the line being read, for an error the csv module raises

    def error(self, line: int, message: str) -> PublishedDataError:
        return PublishedDataError(f"{self.path}, line {line}: {message}")

    def float_field(self, line: int, column: str, text: str) -> float:
        value = _number(text)
        if isinstance(value, str):
            raise self.error(line, f"column {column!r} holds {text!r}, which is not a number.")
        return float(value)

    def metric(self, line: int, column: str, text: str) -> float:
        """Returns the metric in the store's unit (BLEU points, top-1 fraction)."""
        value = self.float_field(line, column, text)
        unit = self.spec.metric_unit
        bounds = {"fraction": (0.0, 1.0), "percent": (1.0, 100.0), "bleu": (0.0, 100.0)}[unit]
        if not bounds[0] <= value <= bounds[1]:
            raise self.error(
                line, f"{column!r} = {value} is outside {bounds} for a file whose metric is a "
                f"{unit}; is this file's unit what its name says?"
            )
        return value / 100.0 if unit == "percent" else value

    def sparsity(self, line: int, column: str, text: str) -> float:
        value = self.float_field(line, column, text)
        if not 0.0 <= value <= 1.0:
            raise self.error(line, f"{column!r} = {value} is not a sparsity fraction in [0, 1].")
        return value

    def rows(self) -> Iterator[tuple[int, list[str], list[str]]]:
        """Yields (line number, canonical header, fields) for each data row."""
        try:
            yield from self._rows()
        except csv.Error as error:  # e.g. a NUL byte: a binary or damaged file
            raise self.error(self._line, f"not readable as CSV ({error}); restore the file "
                             f"or take it out of the folder.") from None
        except UnicodeDecodeError as error:
            raise self.error(self._line, f"not UTF-8 text ({error.reason}: a binary or "
                             f"damaged file?); restore the file or take it out of the "
                             f"folder.") from None

    def _rows(self) -> Iterator[tuple[int, list[str], list[str]]]:
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            raw_header = next(reader, None)
            if not raw_header:
                raise self.error(1, "the file is empty (no header line).")
            header = []
            for index, name in enumerate(raw_header):
                if name.strip():
                    header.append(_canonical(name))
                elif self.spec.empty_header:
                    header.append(self.spec.empty_header)
                else:
                    raise self.error(1, f"column {index + 1} has an empty header.")
            if len(set(header)) != len(header):
                raise self.error(1, f"duplicate column names after normalising: {header}.")
            self._line = reader.line_num + 1
            for fields in reader:
                self._line = reader.line_num + 1  # where a read that fails would be
                if not fields:
                    continue  # a blank line, e.g. a trailing one
                if len(fields) != len(header):
                    raise self.error(
                        reader.line_num,
                        f"{len(fields)} fields where the header has {len(header)}.",
                    )
                yield reader.line_num, header, fields


def _require(reader: _Reader, header: list[str], *names: str) -> None:
    missing = [name for name in names if name not in header]
    if missing:
        raise reader.error(
            1, f"no column for {missing} (a header spelled like 'Moses BLEU'/'accuracy' for "
            f"the metric, 'Sparsity'/'global sparsity' for sparsity); header is {header}."
        )


def _retraining_kind(spec: FileSpec, hyper: dict[str, Any], reader: _Reader,
                     line: int) -> tuple[str, str]:
    """Returns (technique, variant) of a retraining row (see the module docstring)."""
    name = spec.sweep
    if spec.technique != PER_ROW:
        if catalogue.get(spec.technique).init == catalogue.AUGMENTED:
            return spec.technique, _fresh_kind(1 if "scratche" in name else 2)
        return spec.technique, ""
    schedule = name.removeprefix("rn50_scratch_")  # e.g. "lr_scaled"
    multiplier, init = hyper.get("time_multiplier"), hyper.get("init_method")
    if multiplier not in (1, 2) or init not in ("baseline", "sparse"):
        raise reader.error(
            line, f"expected time multiplier 1 or 2 and init method 'baseline' or 'sparse', "
            f"got {multiplier!r} and {init!r}."
        )
    steps = _fresh_kind(multiplier)
    if init == "sparse":
        augmented = next(t.name for t in catalogue.entries(catalogue.RETRAINING)
                         if t.init == catalogue.AUGMENTED)
        return augmented, f"{steps}, {schedule}"
    return steps, schedule


def _fresh_kind(steps_factor: float) -> str:
    """Returns the retraining kind with a fresh init and ``steps_factor`` times the source
    run's steps (the study's scratch-e for 1, scratch-b for 2)."""
    return next(t.name for t in catalogue.entries(catalogue.RETRAINING)
                if t.init == catalogue.FRESH and t.steps_factor == steps_factor)


def _flags(spec: FileSpec, value: float) -> dict[str, Any]:
    flags: dict[str, Any] = dict(spec.extra_flags)
    if spec.metric_unit == "bleu" and value == 0.0:
        flags["failed_bleu_zero"] = True
    if spec.model_family == "resnet50" and value < 0.01:
        flags["at_chance"] = True
    return flags


def read_published_file(path: str | Path, spec: FileSpec) -> tuple[int, list[Run]]:
    """Reads one published CSV file as described by ``spec``.

    Returns:
        (number of data rows in the file, the runs they become).

    Raises:
        PublishedDataError: naming the file and line of the first malformed row.
    """
    reader = _Reader(Path(path), spec)
    runs: list[Run] = []
    csv_rows = 0
    base_id = f"published:{spec.path.removesuffix('.csv')}"
    family = spec.model_family
    common = dict(
        sweep=spec.sweep, task=_TASKS[family], model_family=family,
        metric_name=_METRICS[family], higher_is_better=True, status="finished",
        source="published", config={"file": spec.path},
    )
    for line, header, fields in reader.rows():
        csv_rows += 1
        row = _Row(line, header, dict(zip(header, fields, strict=True)), f"{base_id}:{line}")
        if spec.layout == "wide_vd":
            runs += _wide_vd_runs(reader, spec, row, common)
        elif spec.technique == catalogue.DENSE:
            runs += _dense_runs(reader, spec, row, csv_rows, common)
        else:
            runs += _sparse_runs(reader, spec, row, common)
    if csv_rows == 0:
        raise reader.error(2, "the file has a header but no data rows.")
    return csv_rows, runs


@dataclass(frozen=True)
class _Row:
    line: int
    header: list[str]
    cells: dict[str, str]
    id: str


def _wide_vd_runs(reader: _Reader, spec: FileSpec, row: _Row, common: dict[str, Any]
                  ) -> list[Run]:
    """One run per VD threshold column pair of a row (one trained model evaluated at each)."""
    cells = row.cells
    thresholds = [m.group(1) for h in row.header if (m := _WIDE_BLEU.match(h))]
    if not thresholds:
        raise reader.error(1, "no 'MOSES BLEU:<threshold>' columns in a wide VD file.")
    pairs = {f"moses_bleu:{t}" for t in thresholds} | {f"sparsity:{t}" for t in thresholds}
    hyper = {k: _number(v) for k, v in cells.items() if k not in pairs}
    runs = []
    for t in thresholds:
        if f"sparsity:{t}" not in cells:
            raise reader.error(1, f"'MOSES BLEU:{t}' has no matching 'Sparsity:{t}'.")
        value = reader.metric(row.line, f"MOSES BLEU:{t}", cells[f"moses_bleu:{t}"])
        runs.append(Run(
            id=f"{row.id}@t={t}", train_id=row.id, technique=spec.technique,
            achieved_sparsity=reader.sparsity(row.line, f"Sparsity:{t}", cells[f"sparsity:{t}"]),
            metric_value=value,
            hyperparameters={**hyper, "log_alpha_threshold": float(t)},
            flags=_flags(spec, value), **common,
        ))
    return runs


def _dense_runs(reader: _Reader, spec: FileSpec, row: _Row, replica: int,
                common: dict[str, Any]) -> list[Run]:
    _require(reader, row.header, "metric")
    value = reader.metric(row.line, "metric", row.cells["metric"])
    hyper = {k: _number(v) for k, v in row.cells.items() if k != "metric"}
    return [Run(
        id=row.id, technique=catalogue.DENSE, target_sparsity=0.0, achieved_sparsity=0.0,
        metric_value=value, hyperparameters=hyper, replica=replica,
        flags=_flags(spec, value), **common,
    )]


def _sparse_runs(reader: _Reader, spec: FileSpec, row: _Row, common: dict[str, Any]
                 ) -> list[Run]:
    """The runs of a sparse row: one, or one per ``Run N`` column of a replicas file."""
    header, cells, line = row.header, row.cells, row.line
    replica_columns = {int(m.group(1)): h for h in header if (m := _RUN_COLUMN.match(h))}
    if spec.layout == "replicas":
        if not replica_columns:
            raise reader.error(1, "no 'Run N' columns in a file read as replicas.")
        _require(reader, header, "sparsity")
    else:
        _require(reader, header, "sparsity", "metric")
    sparsity = reader.sparsity(line, "sparsity", cells["sparsity"])
    hyper = {k: _number(v) for k, v in cells.items()
             if k not in ("sparsity", "metric") and k not in replica_columns.values()}
    technique, variant = _retraining_kind(spec, hyper, reader, line)
    target = (_nearest_level(sparsity) or sparsity) if spec.has_target else None
    values = (
        [(n, reader.metric(line, f"Run {n}", cells[h]))
         for n, h in sorted(replica_columns.items())]
        if spec.layout == "replicas"
        else [(None, reader.metric(line, "metric", cells["metric"]))]
    )
    return [Run(
        id=row.id if replica is None else f"{row.id}/run{replica}", technique=technique,
        variant=variant, target_sparsity=target, achieved_sparsity=sparsity,
        metric_value=value, hyperparameters=hyper, replica=replica,
        flags=_flags(spec, value), **common,
    ) for replica, value in values]


def _spec_for(path: Path, root: Path) -> FileSpec:
    relative = path.relative_to(root).as_posix()
    spec = _BY_PATH.get(relative)
    if spec is None:
        raise PublishedDataError(
            f"{path}, line 1: unknown published file {relative!r}; sparsebench reads "
            f"{len(FILES)} known files: {', '.join(s.path for s in FILES)}."
        )
    return spec


def import_published(
    store: RunStore,
    root: str | Path | None = None,
    *,
    progress: Callable[[ImportCount], None] | None = None,
) -> list[ImportCount]:
    """Reads every published CSV under ``root`` (default: the package's copy) into ``store``.

    Each file replaces the published rows of its sweep in one transaction, so importing again
    leaves the same rows (no duplicates), and a file that fails leaves the store as it was for
    that file. All files are parsed before any is written, so a malformed file writes nothing.

    Returns:
        One :class:`ImportCount` per file, in the order of :data:`FILES`.

    Raises:
        PublishedDataError: for an unknown file under ``root`` or a malformed row (file, line).
        FileNotFoundError: when ``root`` holds no CSV file.
    """
    root = Path(root) if root is not None else DATA_ROOT
    paths = sorted(root.rglob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no published CSV files under {root}.")
    specs = {_spec_for(path, root).path: path for path in paths}
    parsed = [
        (spec, *read_published_file(specs[spec.path], spec)) for spec in FILES
        if spec.path in specs
    ]
    counts = []
    for spec, csv_rows, runs in parsed:
        store.replace(runs, source="published", sweep=spec.sweep)
        count = ImportCount(spec.path, csv_rows, len(runs))
        counts.append(count)
        if progress:
            progress(count)
    return counts
