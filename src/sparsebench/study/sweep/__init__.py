"""Sweep files: the study's experiment grid as YAML, validated where it enters, and the points
(one training run each) it resolves to.

A sweep file names a task, the techniques with a hyperparameter grid or a random search each,
the target sparsities (for the techniques that take one), replicas (seeds ``0 .. replicas-1``),
one step budget for all techniques and overrides common to every run; optional blocks add the
dense baseline, the retraining study (scratch-e, scratch-b, lottery, augmented init from the
best magnitude-pruning run per sparsity), magnitude pruning v2 and small dense models at equal
parameters. An example (``sweeps/`` at the repository root has more)::

    name: lenet300-small
    task: fmnist-lenet300
    steps: 600
    replicas: 1
    sparsities: [0.5, 0.8, 0.9]
    dense: true
    overrides: {data.valid_size: 5000, optim.method_lr_scale: 10}
    techniques:
      magnitude: {grid: {begin: [0.1], end: [0.5, 0.6]}}
      random: {}
      variational_dropout: {grid: {kl_weight: [3.0e-6, 1.0e-5]}, fixed: {warmup_end: 0.5}}
      l0:
        random: {samples: 3, seed: 0,
                 space: {l0_weight: {log_uniform: [3.0e-5, 3.0e-4]}, init_log_alpha: {choice: [0]}}}
    retraining: {kinds: [scratch-e, scratch-b, lottery, augmented], sparsities: [0.9], replicas: 1}
    select_by: valid.loss   # what picks phase 2's source run (default: the headline metric)
    mp_v2: {sparsities: [0.9], last_sparsity: 0.8, steps_factor: 1.5}
    small_dense: {option: width, sparsities: [0.9]}
    variant: 4x steps       # optional: its runs drawn apart, as "magnitude (4x steps)"

Points are plain data. A point's id is a readable prefix plus a hash of everything that
defines the run (task, technique, method, target, seed, steps, hyperparameters, overrides, the
run it derives from and the sweep's variant), so re-running a sweep finds its finished runs in
the store, and two sweep files sharing a point share its run. Retraining and small-dense
points derive from the best finished magnitude-pruning run at each sparsity, so they are
planned in a second phase, from the store (:func:`plan_phase2`).

The package: :mod:`.spec` reads and validates the file, :mod:`.plan` turns a spec (and the
finished runs) into points, :mod:`.in_store` keeps a sweep's rows and text in the run store and
plans phase 2 from it. Every name callers use is importable from here.
"""

from .in_store import (
    best_magnitude_runs,
    current_phase2_sources,
    model_family,
    orphaned_phase2_runs,
    pending_row,
    plan_phase2,
    save_sweep_definition,
    save_sweep_text,
    sweep_definitions,
)
from .load import load_sweep, parse_sweep
from .plan import (
    Point,
    _read_parameters,  # noqa: F401  (the tests read a run's nonzero count through it)
    best_magnitude_runs_among,
    coarse_to_fine,
    magnitude_run_ids,
    mp_v2_layer_targets,
    phase2_source_of,
    plan_phase1,
    plan_phase2_from_runs,
    retraining_points,
    reusable_run_ids,
    width_for_parameters,
)
from .spec import (
    MPv2Spec,
    RetrainingSpec,
    SearchSpec,
    SmallDenseSpec,
    SweepError,
    SweepSpec,
)

__all__ = [
    "MPv2Spec",
    "Point",
    "RetrainingSpec",
    "SearchSpec",
    "SmallDenseSpec",
    "SweepError",
    "SweepSpec",
    "best_magnitude_runs",
    "best_magnitude_runs_among",
    "coarse_to_fine",
    "current_phase2_sources",
    "load_sweep",
    "magnitude_run_ids",
    "model_family",
    "mp_v2_layer_targets",
    "orphaned_phase2_runs",
    "parse_sweep",
    "pending_row",
    "phase2_source_of",
    "plan_phase1",
    "plan_phase2",
    "plan_phase2_from_runs",
    "retraining_points",
    "reusable_run_ids",
    "save_sweep_definition",
    "save_sweep_text",
    "sweep_definitions",
    "width_for_parameters",
]


def __getattr__(name: str):
    if name == "RETRAINING_KINDS":  # kept for code written against it
        import warnings

        from ...methods import catalogue

        warnings.warn("sparsebench.study.sweep.RETRAINING_KINDS is deprecated; ask "
                      "sparsebench.methods.catalogue.retraining_kinds().", DeprecationWarning,
                      stacklevel=2)
        return tuple(catalogue.retraining_kinds())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
