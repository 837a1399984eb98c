"""``make demo``: a small real study, end to end, in a few minutes on two cores, run by the
study harness from a sweep file.

LeNet-300-100 on Fashion-MNIST (the Debian package's real images): a dense baseline and all four
techniques (magnitude and random pruning at 50, 80, 90 and 95%, variational dropout and L0 at
three regularization weights each) with one budget of steps; then scratch-e, scratch-b, lottery
and augmented-init retraining of the best 90% magnitude mask; every run goes into a run store
and the report is written beside it. Re-running skips finished runs, and a stopped demo resumes.
The sweep is ``sweeps/fmnist-lenet300-demo.yaml``; the same text is kept here so an installed
package runs it too.

    python -m sparsebench.demo [--out demo_output] [--steps 600] [--workers 1]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from .study import RunStore
from .study.driver import run_sweep
from .study.executors import make_executor
from .study.report import write_report
from .study.sweep import parse_sweep

#: The demo's sweep: also at sweeps/fmnist-lenet300-demo.yaml (a test keeps them equal).
DEMO_SWEEP = """\
name: fmnist-lenet300-demo
task: fmnist-lenet300
steps: 600
replicas: 1
sparsities: [0.5, 0.8, 0.9, 0.95]
dense: true
overrides:
  data.valid_size: 5000
  run.log_every: 200
  eval.batch_size: 2000
  # A short budget: VD's log sigma^2 and L0's log alpha get 10x the learning rate to move.
  optim.method_lr_scale: 10
techniques:
  magnitude: {}
  random: {}
  variational_dropout:
    grid: {kl_weight: [3.0e-6, 1.0e-5, 3.0e-5]}
    fixed: {warmup_end: 0.5}
  l0:
    grid: {l0_weight: [3.0e-5, 1.0e-4, 3.0e-4]}
    fixed: {init_log_alpha: 0.0, warmup_end: 0.5}
retraining:
  kinds: [scratch-e, scratch-b, lottery, augmented]
  sparsities: [0.9]
  replicas: 1
"""


def main(argv: list[str] | None = None) -> int:
    """Runs the demo sweep and writes its report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    values = yaml.safe_load(DEMO_SWEEP)
    values["steps"] = args.steps
    from .train.config import _yaml_number

    spec = parse_sweep(_yaml_number(values), text=DEMO_SWEEP.replace(
        "steps: 600", f"steps: {args.steps}"))
    with RunStore(out / "results.db") as store:
        run_sweep(spec, store, make_executor("local", workers=args.workers), out / "runs")
        report = write_report(store, out / "report", source="ours")
        print("\n run                                       sparsity   test top-1")
        for run in store.runs(sweep=spec.name, status="finished"):
            print(f" {run.id:<40} {run.achieved_sparsity or 0:8.3f}   {run.metric_value:.4f}")
    print(f"\nThe report is at {report.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
