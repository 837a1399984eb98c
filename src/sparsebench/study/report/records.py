"""The report's record-keeping sections for our runs: the runs that missed their target
sparsity, and the sweep files that produced the runs."""

from __future__ import annotations

from .. import pareto as P
from ..sweep import sweep_definitions
from .shared import ReportContext, Scope, Section, Table

__all__ = ["off_target_section", "sweep_definition_section"]


def off_target_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """Runs whose achieved sparsity misses their target by more than the tolerance."""
    if scope.source != "ours":
        return None
    targeted = [r for r in ctx.scope_runs(scope) if r.target_sparsity is not None
                and r.achieved_sparsity is not None and r.status == "finished"]
    if not targeted:
        return None
    missed = P.off_target(targeted, tolerance=ctx.tolerance_pp / 100)
    rows = [[r.id, P.display_name(r.technique), f"{100 * r.target_sparsity:.2f}",
             f"{100 * r.achieved_sparsity:.2f}",
             f"{100 * (r.achieved_sparsity - r.target_sparsity):+.2f}"] for r in missed]
    sentence = (f"All {len(targeted)} runs with a target reached it within "
                f"{ctx.tolerance_pp:g} pp." if not missed else
                f"{len(missed)} of {len(targeted)} runs with a target miss it by more than "
                f"{ctx.tolerance_pp:g} pp; the report places them at their achieved sparsity.")
    return Section(
        id=f"{scope.key}-off-target", title=f"{scope.title}: runs off their target sparsity",
        sentences=[sentence],
        tables=[Table(f"{scope.key}_off_target", ["run", "technique", "target %",
                                                  "achieved %", "gap pp"], rows,
                      "Runs whose achieved sparsity misses the target.")] if rows else [])


def sweep_definition_section(ctx: ReportContext, scope: Scope) -> Section | None:
    """The sweep files that produced the runs of this scope, as recorded by the sweep."""
    if scope.source != "ours":
        return None
    runs = ctx.scope_runs(scope) + ctx.scope_runs(scope, structured=True)
    names = {r.sweep for r in runs if r.sweep}
    definitions = {n: t for n, t in sweep_definitions(ctx.store).items() if n in names}
    if not definitions:
        return None
    rows = [[name, len([r for r in runs if r.sweep == name]), text]
            for name, text in sorted(definitions.items())]
    # Shown as text: in a table cell the YAML's line breaks and indents collapse into one
    # paragraph. The CSV keeps the same rows.
    return Section(id=f"{scope.key}-sweeps", title=f"{scope.title}: sweep definitions",
                   texts=[(f"{name} ({count} runs)", text) for name, count, text in rows],
                   tables=[Table(f"{scope.key}_sweeps", ["sweep", "runs", "file"], rows,
                                 "The sweep files as run (YAML), as a table:", shown=False)])
