"""``sparsebench train`` and ``sparsebench tasks``."""

from __future__ import annotations

import argparse

from ..methods import catalogue
from ..rundir import CONFIG_FILE, RESULT_FILE, check_output_dir, check_safetensors
from . import build_config, load_yaml, presets, train

__all__ = ["register"]


def _without_target() -> list[str]:
    """The sparsifiers whose sparsity follows from their hyperparameters, not a target."""
    return [name for name in catalogue.sparsifiers()
            if not catalogue.get(name).method_class.uses_sparsity_target]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train one run from a task preset and options",
                              description="Train one run. Re-running on the same --out resumes "
                              "from its last checkpoint; a finished --out is not trained again.")
    p.add_argument("--task", required=True, help="a task preset (see `sparsebench tasks`)")
    p.add_argument("--method", default=None,
                   help=f"{catalogue.DENSE} or a technique that sparsifies while training: "
                   f"{', '.join(catalogue.sparsifiers())} (default: the --config file's, "
                   f"else {catalogue.DENSE})")
    p.add_argument("--sparsity", type=float, default=None,
                   help="target sparsity in [0, 1) for the techniques that take one (not "
                   f"{', '.join(_without_target())}: their hyperparameters set it)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the initial weights, data order and noise (run.seed; "
                   "default 0); runs that differ only in it are replicas")
    p.add_argument("--config", default=None, help="a YAML file of config sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set optim.lr=0.05 "
                   "--set sparsity.kl_weight=1e-4")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: log lines every run.log_every steps instead")
    p.set_defaults(func=_train)

    t = subparsers.add_parser(
        "tasks", help="list the task presets and their defaults",
        description="Lists the task presets `sparsebench train --task` starts from: each "
                    "one's model, dataset, batch, optimizer and steps. --show TASK prints one "
                    "preset's full default config as YAML, a starting point for --config.")
    t.add_argument("--show", metavar="TASK", help="print one task's full default config")
    t.set_defaults(func=_tasks)


def _train(args: argparse.Namespace) -> int:
    config = build_config(args.task, method=args.method, sparsity=args.sparsity,
                          steps=args.steps, seed=args.seed, config_file=args.config,
                          overrides=args.overrides)
    out = check_output_dir(args.out)
    # Files the run will read, checked now: a damaged one found after the data are loaded
    # and the run directory is made would cost time and leave a directory behind.
    for key in ("mask_from", "init_from"):
        path = getattr(config.sparsity, key)
        if path is not None:
            try:
                check_safetensors(path, f"point sparsity.{key} at an intact file")
            except FileNotFoundError:
                raise FileNotFoundError(f"sparsity.{key} = {path!r}: no such file.") from None
    saved = out / CONFIG_FILE
    if saved.exists() and not (out / RESULT_FILE).exists():
        previous = load_yaml(saved)
        current = config.to_dict()
        if previous.get("model", {}).get("name") != current["model"]["name"] or \
                previous.get("sparsity", {}).get("method") != current["sparsity"]["method"] or \
                previous.get("run", {}).get("seed") != current["run"]["seed"]:
            raise ValueError(f"{out} holds an unfinished run with another model, method or "
                             f"seed; choose another --out or delete it.")
    result = train(config, out, progress=not args.no_progress)
    if not result:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if result.get("status") == "diverged":
        print(f"diverged: {result['error']}")
        return 3
    metric = result["metric"]
    print(f"{out}: {result['method']} sparsity {result['sparsity']:.4f}, "
          f"test {metric['name']} {metric['test']:.4f}, {result['seconds_per_step']:.3f} s/step")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    if args.show:
        print(build_config(args.show).to_yaml(), end="")
        return 0
    for p in presets():
        v = p.values
        data = v["data"]
        batch = (f"{data.get('max_tokens')} tokens" if "max_tokens" in data
                 else f"batch {data.get('batch_size')}")
        print(f"{p.name:<20} {p.description}")
        print(f"{'':<20} model {v['model']['name']}, data {data['dataset']}, {batch}, "
              f"{v['optim']['name']} lr {v['optim']['lr']} ({v['optim']['schedule']}), "
              f"{v['run']['steps']} steps")
    return 0
