"""Every bad file or input the command line meets: one sentence, exit code 2, nothing changed.

One table of cases, each running the real ``sparsebench`` entry point on its own copy of tiny
fixtures (a Fashion-MNIST-shaped IDX folder, a finished LeNet-300-100 run of four steps and a
run store with hand-made rows). Each case asserts the exit code, a stable fragment of the
message naming the file or field, that stderr is one line without a traceback, and that no
file under the case's folder was created, changed or removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsebench import cli
from sparsebench.rundir import CHECKPOINT_DIR, CHECKPOINT_FILE, MODEL_FILE
from sparsebench.study.source_masks import pack_masks
from sparsebench.study.store import Run, RunStore

# ---- fixtures: tiny data, one finished run, one store ----------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with ``idx/`` (Fashion-MNIST-shaped data, 96 train and 32 test images),
    ``run/`` (a finished magnitude run of 4 steps) and ``store.db`` (a run store with three
    rows)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    idx = root / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for stem, count in (("train", 96), ("t10k", 32)):
        _write_idx(idx / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(idx / f"{stem}-labels-idx1-ubyte", np.arange(count) % 10)
    argv = [a.replace("{idx}", str(idx)) for a in TRAIN]
    assert cli.main(["train", *argv, "--steps", "4", "--out", str(root / "run")]) == 0
    store = RunStore(root / "store.db")
    store.upsert([Run(id=f"r{i}", technique="magnitude", target_sparsity=0.5 + 0.1 * i,
                      achieved_sparsity=0.5 + 0.1 * i, metric_name="top1", metric_value=0.5,
                      status="finished", model_family="lenet300") for i in range(3)])
    store.close()
    assert not list(root.glob("store.db-*"))  # WAL files: SQLite removes them on close
    return root


#: A tiny fmnist-lenet300 run on the generated data (``{idx}`` is filled in per case).
TRAIN = ["--task", "fmnist-lenet300", "--method", "magnitude", "--sparsity", "0.5",
         "--no-progress", "--set", "data.root={idx}", "--set", "data.valid_size=16",
         "--set", "data.batch_size=16", "--set", "eval.batch_size=32",
         "--set", "run.checkpoint_every=2", "--set", "run.log_every=1000"]


class Workspace:
    """One case's folder; fixtures are copied in when a case first asks for them."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base = root, base

    def _copy(self, name: str) -> Path:
        target = self.root / name
        if not target.exists():
            source = self.base / name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        return target

    @property
    def idx(self) -> Path:
        return self._copy("idx")

    @property
    def run(self) -> Path:
        return self._copy("run")

    @property
    def store(self) -> Path:
        return self._copy("store.db")

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def train(self, *extra: str, out: Path | None = None) -> list[str]:
        argv = [a.replace("{idx}", str(self.idx)) for a in TRAIN]
        return ["train", *argv, "--steps", "4", "--out", str(out or self.root / "new-run"),
                *extra]


def _truncated(path: Path, keep: float = 0.5) -> bytes:
    raw = path.read_bytes()
    return raw[:int(len(raw) * keep)]


def _random_bytes(count: int = 4096) -> bytes:
    return np.random.default_rng(1).integers(0, 256, count, dtype=np.uint8).tobytes()


def _truncate_in_place(path: Path, keep: float = 0.5) -> Path:
    path.write_bytes(_truncated(path, keep))
    return path


def _store_damaged(w: Workspace) -> Path:
    return _truncate_in_place(w.store)


def _store_random(w: Workspace) -> Path:
    return w.file("random.db", _random_bytes())


def _sqlite_not_a_store(w: Workspace) -> Path:
    import sqlite3

    path = w.root / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE things (x)")
    db.close()
    return path


def _future_store(w: Workspace) -> Path:
    import sqlite3

    path = w.store
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.close()
    return path


def _sweep_file(w: Workspace, text: str, name: str = "sweep.yaml") -> Path:
    return w.file(name, text)


GOOD_SWEEP = """task: fmnist-lenet300
steps: 4
sparsities: [0.5]
techniques:
  magnitude: {}
"""


def _checkpoint_damaged(w: Workspace) -> Path:
    """An unfinished run directory (config, init) whose checkpoint is cut in half."""
    run = w.root / "unfinished"
    shutil.copytree(w.run, run)
    (run / "result.json").unlink()
    (run / MODEL_FILE).unlink()
    (run / CHECKPOINT_DIR).mkdir()
    # Any safetensors file cut short: the runner must refuse it, not resume from it.
    raw = w.run.joinpath("init.safetensors").read_bytes()
    (run / CHECKPOINT_DIR / CHECKPOINT_FILE).write_bytes(raw[:len(raw) // 2])
    return run


def _unfinished_with(w: Workspace, config_text: str) -> Path:
    run = w.root / "unfinished"
    run.mkdir()
    (run / "config.yaml").write_text(config_text)
    return run


PUBLISHED_CSV = "sparse_rn50/technique_comparison/rn50_magnitude_pruning.csv"


def _published_root(w: Workspace, text: bytes | str) -> Path:
    """A --root folder holding one known published file with ``text`` in it."""
    w.file(f"published/{PUBLISHED_CSV}", text)
    return w.root / "published"


def _published_truncated(w: Workspace) -> Path:
    """The package's real file, cut two characters into its tenth data row."""
    from sparsebench.study.published import DATA_ROOT

    lines = (DATA_ROOT / PUBLISHED_CSV).read_text().splitlines(keepends=True)
    return _published_root(w, "".join(lines[:11]) + lines[11][:2])


def _labels_of(w: Workspace, top: int) -> Path:
    """The data folder with one training label replaced by ``top``."""
    labels = np.arange(96) % 10
    labels[5] = top
    _write_idx(w.idx / "train-labels-idx1-ubyte", labels)
    return w.idx


def _random_model(w: Workspace) -> Path:
    (w.run / MODEL_FILE).write_bytes(_random_bytes())
    return w.run


def _model_with_wrong_weights(w: Workspace) -> Path:
    state = load_file(str(w.run / MODEL_FILE))
    state.pop(next(iter(state)))
    save_file(state, str(w.run / MODEL_FILE))
    return w.run


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Workspace], list[str]]
    message: str  # a stable fragment: names the file or field
    xfail: str | None = None


CASES = [
    # -- run stores: status, report, sweep, import-runs, rescore, bench-runs, import-published
    Case("status-truncated-store", lambda w: ["status", "--store", str(_store_damaged(w))],
         "store.db is not a sparsebench run store or is damaged (database disk image is "
         "malformed); restore it from git"),
    Case("status-random-bytes-store", lambda w: ["status", "--store", str(_store_random(w))],
         "random.db is not a sparsebench run store or is damaged"),
    Case("report-store-is-a-folder",
         lambda w: ["report", "--store", str(w.idx), "--out", str(w.root / "r")],
         "idx is a folder, not a run store"),
    Case("status-sqlite-but-not-a-store",
         lambda w: ["status", "--store", str(_sqlite_not_a_store(w))],
         "other.db is an SQLite file but not a sparsebench run store"),
    Case("status-store-from-a-newer-version",
         lambda w: ["status", "--store", str(_future_store(w))],
         "uses run-store schema 99, newer than this sparsebench reads"),
    Case("status-missing-store", lambda w: ["status", "--store", str(w.root / "none.db")],
         "none.db: no such run store"),
    Case("report-truncated-store",
         lambda w: ["report", "--store", str(_store_damaged(w)), "--out", str(w.root / "r")],
         "store.db is not a sparsebench run store or is damaged"),
    Case("report-two-stores-one-random",
         lambda w: ["report", "--store", str(w.store), str(_store_random(w)),
                    "--out", str(w.root / "r")],
         "random.db is not a sparsebench run store or is damaged"),
    Case("report-out-is-a-file",
         lambda w: ["report", "--store", str(w.store), "--out", str(w.file("somefile", "x"))],
         "--out " + "{root}/somefile is a file, not a folder"),
    Case("report-out-below-a-file",
         lambda w: ["report", "--store", str(w.store),
                    "--out", str(w.file("somefile", "x") / "report")],
         "somefile is a file, not a folder"),
    Case("report-bad-tolerance",
         lambda w: ["report", "--store", str(w.store), "--out", str(w.root / "r"),
                    "--tolerance", "0"], "--tolerance must be a positive number"),
    Case("sweep-truncated-store",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP)), "--store", str(_store_damaged(w))],
         "store.db is not a sparsebench run store or is damaged"),
    Case("sweep-random-bytes-store",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP)), "--store", str(_store_random(w))],
         "random.db is not a sparsebench run store or is damaged"),
    Case("sweep-store-below-a-file",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP)),
                    "--store", str(w.file("plain", "x") / "s.db")],
         "plain is a file, not a folder"),
    Case("sweep-report-is-a-file",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP)), "--store", str(w.store),
                    "--report", str(w.file("somefile", "x"))],
         "--report " + "{root}/somefile is a file, not a folder"),
    Case("import-runs-from-truncated-store",
         lambda w: ["import-runs", "--from", str(_store_damaged(w)),
                    "--into", str(_sqlite_not_a_store(w))],
         "store.db is not a sparsebench run store or is damaged"),
    Case("rescore-random-bytes-store", lambda w: ["rescore", "--store", str(_store_random(w))],
         "random.db is not a sparsebench run store or is damaged"),
    Case("bench-runs-truncated-store",
         lambda w: ["bench-runs", "--store", str(_store_damaged(w))],
         "store.db is not a sparsebench run store or is damaged"),
    Case("import-published-random-bytes-store",
         lambda w: ["import-published", "--store", str(_store_random(w))],
         "random.db is not a sparsebench run store or is damaged"),
    # -- sweep files
    Case("sweep-yaml-syntax-error",
         lambda w: ["sweep", str(_sweep_file(w, "task: fmnist-lenet300\nsteps: [4\n")),
                    "--store", str(w.store)],
         "sweep.yaml: not valid YAML (expected ',' or ']', but got '<stream end>' at line 3, "
         "column 1)"),
    Case("sweep-yaml-bad-indentation",
         lambda w: ["sweep", str(_sweep_file(w, "task: x\n steps: 4\n  - a\n")),
                    "--store", str(w.store)], "sweep.yaml: not valid YAML ("),
    Case("sweep-file-missing",
         lambda w: ["sweep", str(w.root / "nope.yaml"), "--store", str(w.store)],
         "nope.yaml: no such sweep file"),
    Case("sweep-file-is-binary",
         lambda w: ["sweep", str(w.file("sweep.yaml", b"\xff\xfe\x00\x01")),
                    "--store", str(w.store)],
         "sweep.yaml is not a sweep file: byte 0 is not UTF-8"),
    Case("sweep-file-is-a-list",
         lambda w: ["sweep", str(_sweep_file(w, "- 1\n- 2\n")), "--store", str(w.store)],
         "the file must hold a mapping of sweep fields"),
    Case("sweep-unknown-field",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP + "replicaz: 2\n")),
                    "--store", str(w.store)], "sweep.yaml: "),
    Case("sweep-bad-threads",
         lambda w: ["sweep", str(_sweep_file(w, GOOD_SWEEP)), "--store", str(w.store),
                    "--threads", "0"], "--threads must be at least 1"),
    Case("import-runs-sweep-file-broken",
         lambda w: ["import-runs", "--from", str(w.store), "--into", str(w.store),
                    "--sweep", str(_sweep_file(w, "task: [\n"))], "sweep.yaml: not valid YAML"),
    # -- train: config files, flags and run directories
    Case("train-config-yaml-syntax-error",
         lambda w: w.train("--config", str(w.file("c.yaml", "optim:\n  lr: 0.1\n bad: [1\n"))),
         "c.yaml: not valid YAML (expected <block end>, but found '<block mapping start>' at "
         "line 3, column 2)"),
    Case("train-config-tab-indented",
         lambda w: w.train("--config", str(w.file("c.yaml", "optim:\n\tlr: 0.1\n"))),
         "c.yaml: not valid YAML (found character '\\t' that cannot start any token at line 2, "
         "column 1)"),
    Case("train-config-missing", lambda w: w.train("--config", str(w.root / "none.yaml")),
         "none.yaml: no such config file"),
    Case("train-config-binary",
         lambda w: w.train("--config", str(w.file("c.yaml", _random_bytes(64)))),
         "c.yaml is not a config file: byte"),
    Case("train-config-not-a-mapping",
         lambda w: w.train("--config", str(w.file("c.yaml", "[1, 2]\n"))),
         "c.yaml must hold a mapping of config sections"),
    Case("train-config-unknown-section",
         lambda w: w.train("--config", str(w.file("c.yaml", "optimizer: {lr: 1}\n"))),
         "Unknown config section 'optimizer'"),
    Case("train-config-is-a-folder", lambda w: w.train("--config", str(w.idx)),
         "is a folder, not a config file"),
    Case("train-set-bad-yaml", lambda w: w.train("--set", "optim.lr=[1"),
         "--set 'optim.lr=[1': the value is not valid YAML"),
    Case("train-set-options-not-a-mapping", lambda w: w.train("--set", "model.options=5"),
         "model.options = 5 is invalid: it must be a mapping"),
    Case("train-set-betas-not-numbers", lambda w: w.train("--set", "optim.betas=[a, b]"),
         "optim.betas = ['a', 'b'] is invalid: it must be a list of numbers"),
    Case("train-set-unknown-key", lambda w: w.train("--set", "optim.lrr=0.1"),
         "Unknown config key 'optim.lrr'"),
    Case("train-set-no-equals", lambda w: w.train("--set", "optim.lr"),
         "must look like section.key=value"),
    Case("train-unknown-task", lambda w: ["train", "--task", "nope", "--out", str(w.root / "o")],
         "Unknown task 'nope'"),
    Case("train-sparsity-out-of-range", lambda w: w.train("--sparsity", "1.5"),
         "sparsity.sparsity = 1.5 is invalid"),
    Case("train-steps-zero", lambda w: w.train("--set", "run.steps=0"),
         "run.steps = 0 is invalid"),
    Case("train-out-is-a-file", lambda w: w.train(out=w.file("somefile", "x")),
         "--out " + "{root}/somefile is a file, not a folder"),
    Case("train-out-below-a-file", lambda w: w.train(out=w.file("somefile", "x") / "run"),
         "somefile is a file, not a folder"),
    Case("train-mask-from-truncated",
         lambda w: w.train("--set", "sparsity.mask_from="
                           + str(_truncate_in_place(w.run / "mask.safetensors"))),
         "mask.safetensors is damaged or not a safetensors file (incomplete metadata, file not "
         "fully covered); point sparsity.mask_from at an intact file"),
    Case("train-mask-from-missing",
         lambda w: w.train("--set", f"sparsity.mask_from={w.root / 'none.safetensors'}"),
         "sparsity.mask_from = '" + "{root}/none.safetensors': no such file"),
    Case("train-init-from-random-bytes",
         lambda w: w.train("--set", "sparsity.init_from="
                           + str(w.file("init.safetensors", _random_bytes()))),
         "init.safetensors is damaged or not a safetensors file"),
    Case("train-damaged-checkpoint", lambda w: w.train(out=_checkpoint_damaged(w)),
         "state.safetensors is not a readable sparsebench checkpoint"),
    Case("train-damaged-saved-config",
         lambda w: w.train(out=_unfinished_with(w, "model: {name: lenet300\n")),
         "config.yaml: not valid YAML"),
    Case("train-other-run-in-out",
         lambda w: w.train(out=_unfinished_with(w, "model: {name: lenet5}\n")),
         "holds an unfinished run with another model, method or seed"),
    Case("train-damaged-result",
         lambda w: w.train(out=w.file("done/result.json", "{\"status\": ").parent),
         "result.json is not valid JSON"),
    Case("train-truncated-idx",
         lambda w: w.train("--set", "data.root=" + str(_truncate_in_place(
             w.idx / "train-images-idx3-ubyte").parent)),
         "train-images-idx3-ubyte: "),
    Case("train-idx-labels-out-of-range",
         lambda w: w.train("--set", "data.root=" + str(_labels_of(w, 200))),
         "train-labels-idx1-ubyte: labels must be classes 0-9, found 0 to 200"),
    Case("train-idx-missing",
         lambda w: w.train("--set", f"data.root={w.root}"),
         "no train-images-idx3-ubyte[.gz] in"),
    Case("train-block-larger-than-the-layer",
         lambda w: w.train("--set", "sparsity.block=[4096, 4096]"),
         "block (4096, 4096) is larger than the whole"),
    Case("tasks-show-unknown", lambda w: ["tasks", "--show", "nope"], "Unknown task 'nope'"),
    # -- export and bench-inference
    Case("export-truncated-model",
         lambda w: ["export", str(_truncate_in_place(w.run / MODEL_FILE).parent),
                    "--out", str(w.root / "m.safetensors")],
         "model.safetensors is damaged or not a safetensors file (incomplete metadata, file not "
         "fully covered); train the run again"),
    Case("export-random-bytes-model",
         lambda w: ["export", str(_random_model(w)), "--out", str(w.root / "m.safetensors")],
         "model.safetensors is damaged or not a safetensors file (header too large)"),
    Case("export-model-of-another-shape",
         lambda w: ["export", str(_model_with_wrong_weights(w)),
                    "--out", str(w.root / "m.safetensors")],
         "model.safetensors does not hold the weights of lenet300"),
    Case("export-out-is-a-folder",
         lambda w: ["export", str(w.run), "--out", str(w.idx)], "is a folder; name a file"),
    Case("export-out-below-a-file",
         lambda w: ["export", str(w.run), "--out", str(w.file("somefile", "x") / "m.st")],
         "somefile is a file, not a folder"),
    Case("export-damaged-result",
         lambda w: ["export", str(w.file("r/result.json", "[1,").parent), "--out",
                    str(w.root / "m.safetensors")], "result.json is not valid JSON"),
    Case("export-result-without-model",
         lambda w: ["export", str(w.file("r/result.json", "{\"config\": {}}").parent), "--out",
                    str(w.root / "m.safetensors")], "has no config.model entry"),
    Case("export-unfinished-run",
         lambda w: ["export", str(w.root), "--out", str(w.root / "m.safetensors")],
         "result.json does not exist"),
    Case("export-bad-batch",
         lambda w: ["export", str(w.run), "--out", str(w.root / "m.safetensors"),
                    "--batch", "0"], "--batch must be positive integers"),
    Case("bench-inference-truncated-model",
         lambda w: ["bench-inference", str(_truncate_in_place(w.run / MODEL_FILE).parent),
                    "--repeats", "1"], "model.safetensors is damaged or not a safetensors file"),
    # -- the study's published CSVs
    Case("import-published-truncated-csv",
         lambda w: ["import-published", "--store", str(w.store),
                    "--root", str(_published_truncated(w))],
         "rn50_magnitude_pruning.csv, line 12: 1 fields where the header has"),
    Case("import-published-binary-blob",  # no comma or newline in 200 kB: one huge field
         lambda w: ["import-published", "--store", str(w.store), "--root", str(_published_root(
             w, b"sparsity,top1\n" + b"x" * 200_000))],
         "rn50_magnitude_pruning.csv, line 2: not readable as CSV (field larger than field "
         "limit"),
    Case("import-published-binary",
         lambda w: ["import-published", "--store", str(w.store), "--root", str(_published_root(
             w, b"\xff\xfe\xfa" * 50))], "rn50_magnitude_pruning.csv, line 1: not UTF-8 text"),
    Case("import-published-unknown-file",
         lambda w: ["import-published", "--store", str(w.store),
                    "--root", str(w.file("pub/other.csv", "a,b\n1,2\n").parent)],
         "unknown published file 'other.csv'"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Returns every file and folder under ``root`` with a hash of its content."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        snapshot[key] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                         else "folder")
    return snapshot


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                          if c.xfail else []) for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_changes_nothing(case, base, tmp_path, capsys):
    w = Workspace(tmp_path, base)
    argv = case.argv(w)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = argv[0]
    assert lines[0].startswith(f"sparsebench {command}: error: "), err
    assert case.message.replace("{root}", str(tmp_path)) in lines[0]
    assert _snapshot(tmp_path) == before


def test_the_table_covers_every_kind_of_input():
    assert len(CASES) >= 40
    commands = {case.id.split("-")[0] for case in CASES}
    assert {"status", "report", "sweep", "train", "export", "import", "rescore", "bench",
            "tasks"} <= commands


@pytest.mark.parametrize("argv, message", [
    (["status", "--store", "{store}"], "is not a sparsebench run store or is damaged"),
    (["sweep", "{sweep}", "--store", "{store}"], "sweep.yaml: not valid YAML"),
])
def test_a_separate_process_prints_one_line_too(argv, message, tmp_path):
    # In a process of its own, logging goes to stderr as well: still one line.
    store = tmp_path / "store.db"
    store.write_bytes(b"SQLite format 3\x00" + _random_bytes(200))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("task: [\n")
    before = _snapshot(tmp_path)
    argv = [a.format(store=store, sweep=sweep) for a in argv]
    completed = subprocess.run([sys.executable, "-m", "sparsebench", *argv],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in completed.stderr
    assert _snapshot(tmp_path) == before


def test_packed_source_mask_damaged_is_one_sentence(tmp_path):
    from sparsebench.study.source_masks import restore_source

    archive = tmp_path / "masks" / "r0.safetensors"
    archive.parent.mkdir()
    archive.write_bytes(pack_masks({"fc.weight": torch.ones(4, 4, dtype=torch.bool)})[:40])
    with pytest.raises(ValueError) as info:
        restore_source(archive, {}, [], tmp_path / "runs" / "r0")
    message = str(info.value)
    assert message.startswith(f"{archive}: damaged or not a safetensors file (")
    assert "restore it from git" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_atomic_writes_follow_the_umask(tmp_path):
    from sparsebench.rundir import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary left


def test_export_writes_a_plain_file(base, tmp_path):
    w = Workspace(tmp_path, base)
    out = tmp_path / "m.safetensors"
    old = os.umask(0o022)
    try:
        assert cli.main(["export", str(w.run), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # safetensors' own writer gave 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "run"]


def test_export_names_each_layer_once(base, tmp_path):
    w = Workspace(tmp_path, base)
    completed = subprocess.run(
        [sys.executable, "-m", "sparsebench", "export", str(w.run),
         "--out", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    output = (completed.stdout + completed.stderr).split()
    assert [output.count(layer) for layer in ("fc1", "fc2", "fc3")] == [1, 1, 1], output


def test_tasks_and_seed_have_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["tasks", "--help"])
    text = capsys.readouterr().out
    assert "Lists the task presets" in text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the initial weights" in text
