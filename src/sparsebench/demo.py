"""``make demo``: a small real study, end to end, in a few minutes on two cores.

LeNet-300-100 on Fashion-MNIST (the Debian package's real images): a dense baseline and all four
techniques (magnitude and random pruning at several targets, variational dropout and L0 at
several regularization weights) with one budget of steps each; then lottery-ticket and
scratch retraining of the 90% magnitude mask; every run goes into a run store and the report
is written beside it. Re-running skips finished runs.

    python -m sparsebench.demo [--out demo_output] [--steps 600]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .study import RunStore
from .study.report import write_report
from .train import build_config, train

TASK = "fmnist-lenet300"
# A short budget: the techniques' own parameters (log σ², log α) get 10x the learning rate so
# they can move within it, and L0's gates start less open than the paper's default.
QUICK = ["data.valid_size=5000", "run.log_every=200", "eval.batch_size=2000",
         "optim.method_lr_scale=10"]
# Regularization weights that span low to high sparsity in a few hundred steps on this task.
VD_WEIGHTS = (3e-6, 1e-5, 3e-5)
L0_WEIGHTS = (3e-5, 1e-4, 3e-4)


def plan(steps: int) -> list[tuple[str, str, float | None, list[str]]]:
    """Returns (run name, method, target sparsity, extra overrides) for every demo run."""
    runs: list[tuple[str, str, float | None, list[str]]] = [("dense", "dense", None, [])]
    for method in ("magnitude", "random"):
        for sparsity in (0.5, 0.8, 0.9, 0.95):
            runs.append((f"{method}-{sparsity}", method, sparsity, []))
    warmup = ["sparsity.warmup_end=0.5"]
    runs += [(f"vd-{w:g}", "variational_dropout", None, [f"sparsity.kl_weight={w}", *warmup])
             for w in VD_WEIGHTS]
    runs += [(f"l0-{w:g}", "l0", None, [f"sparsity.l0_weight={w}", "sparsity.init_log_alpha=0",
                                        *warmup]) for w in L0_WEIGHTS]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    store = RunStore(out / "results.db")
    runs = plan(args.steps)
    for index, (name, method, sparsity, extra) in enumerate(runs, 1):
        print(f"[{index}/{len(runs) + 3}] {name}", flush=True)
        config = build_config(TASK, method=method, sparsity=sparsity, steps=args.steps,
                              overrides=[*QUICK, *extra])
        result = train(config, out / "runs" / name, progress=False)
        store.record_result(name, result, out / "runs" / name, sweep="demo")
    source = out / "runs" / "magnitude-0.9"
    retraining = {
        "lottery": [f"sparsity.init_from={source / 'init.safetensors'}"],
        "scratch-e": [],
        "augmented": ["sparsity.augmented_init=true"],
    }
    for offset, (kind, extra) in enumerate(retraining.items(), len(runs) + 1):
        print(f"[{offset}/{len(runs) + 3}] {kind} from magnitude-0.9", flush=True)
        mask = f"sparsity.mask_from={source / 'mask.safetensors'}"
        config = build_config(TASK, method="magnitude", sparsity=0.9, steps=args.steps,
                              overrides=[*QUICK, mask, "run.seed=1", *extra])
        result = train(config, out / "runs" / kind, progress=False)
        store.record_result(kind, result, out / "runs" / kind, sweep="demo", technique=kind)
    report = write_report(store, out / "report", source="ours")
    print("\n run                      sparsity   test top-1")
    for run in store.runs(sweep="demo"):
        print(f" {run.id:<24} {run.achieved_sparsity or 0:8.3f}   {run.metric_value:.4f}")
    print(f"\nThe report is at {report.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
