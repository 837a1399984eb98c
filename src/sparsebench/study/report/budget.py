"""The report's section on issue 28: does the training budget explain where our study disagrees
with the paper? Drawn from a store of its own (the budget sweep trains the image task's arms at
several budgets, which must not enter the study's frontiers), passed to ``sparsebench report``
with ``--budget STORE``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..budget import MEASURES, budget_gaps, compared, dense_by_budget, gap_sentence, paper_gaps
from ..our_figures import budget_figure
from ..store import Run
from .shared import Section, Table

__all__ = ["budget_section"]


def budget_section(runs: Sequence[Run], published: Sequence[Run], out_dir: Path
                   ) -> Section | None:
    """Returns the section (figure per target sparsity, the gaps' table, one computed sentence
    per comparison and measure, the dense model against the budget), or None when the runs hold
    no comparison yet."""
    gaps = budget_gaps(runs)
    if not gaps:
        return None
    dense = dense_by_budget(runs)
    section = Section(
        id="budget", title="The training budget (image task)",
        question="Does the short budget explain where our study disagrees with the paper "
                 "(random pruning not behind magnitude pruning; retraining beating the joint "
                 "pruning run that found the mask)? Each arm's gap to magnitude pruning at "
                 "several step budgets, 3 seeds each: a gap counts only above the wider seed "
                 "range of the two.")
    rows = []
    for target in sorted({g.target for g in gaps}):
        at = [g for g in gaps if g.target == target]
        name = f"ours_budget_{100 * target:g}.png"
        paper = paper_gaps(published, target)
        budget_figure(at, dense, out_dir / name, paper=paper)
        section.figures.append((name, f"Gap to magnitude pruning against the budget at "
                                      f"{100 * target:g}%"))
        for comparison in compared():
            for measure in MEASURES:
                cells = [g for g in at if g.comparison == comparison and g.measure == measure]
                if cells:
                    section.sentences.append(gap_sentence(cells))
        if paper:
            section.sentences.append(
                f"The paper's own gaps at {100 * target:g}% (its best published ResNet-50 run "
                "of each kind minus magnitude pruning's, at its converged budget), in top-1 "
                "points: " + ", ".join(f"{k} {v:+.1f}" for k, v in paper.items()) + ".")
        rows += [[g.budget, f"{100 * g.target:g}", g.comparison, g.measure, f"{g.gap:.3f}",
                  f"{g.spread:.3f}", g.arm.n, g.reference.n,
                  "decisive" if g.decisive else ("tie" if g.judged else "one seed")]
                 for g in at]
    if dense:
        section.sentences.append(
            "The dense model's test top-1 by budget (mean of its seeds): "
            + ", ".join(f"{100 * s.mean:.2f}% at {b:,} steps (n={s.n})"
                        for b, s in dense.items()) + ".")
    section.tables.append(Table(
        "ours_budget_gaps",
        ["budget", "sparsity", "arm", "measure", "gap (arm - magnitude; points or nats)",
         "seed spread", "arm seeds", "magnitude seeds", "verdict"], rows,
        "Each arm's mean minus magnitude pruning's (the best-by-validation setting over its "
        "seeds); loss gaps below 0 favour the arm."))
    return section
