"""The report's sections in reading order, the one place that order is set: the answers open the
page, then every scope's sections in :data:`SECTION_BUILDERS` order (published scopes first),
then the budget sweep's section."""

from __future__ import annotations

from collections.abc import Sequence

from ..store import Run
from .answers import answers_section
from .budget import budget_section
from .cost import training_cost_section
from .frontiers import (
    dense_section,
    published_comparison_section,
    retraining_section,
    technique_section,
)
from .layers import per_layer_section
from .loss import loss_section, retraining_loss_section
from .magnitude import mp_v2_section, pruned_weights_section, small_dense_section
from .one_shot import one_shot_section
from .records import off_target_section, sweep_definition_section
from .sampling import sampling_section
from .seeds import seed_section
from .shared import ReportContext, Section, SectionBuilder
from .speed import block_section, inference_section

__all__ = ["SECTION_BUILDERS", "build_sections"]

#: The sections built for each (model family, source), in report order. Each returns None
#: when the store has nothing for it (most of them for the published runs).
SECTION_BUILDERS: tuple[SectionBuilder, ...] = (
    # The study's first question; the loss and seed sections read beside its frontiers.
    dense_section,
    technique_section,
    loss_section,
    seed_section,
    # Pruning a trained model once, without training, against pruning while training.
    one_shot_section,
    # Its second question, in the headline metric and in loss; then ours beside the study's.
    retraining_section,
    retraining_loss_section,
    published_comparison_section,
    # Our own runs only.
    per_layer_section,
    pruned_weights_section,
    training_cost_section,
    mp_v2_section,
    small_dense_section,
    off_target_section,
    sweep_definition_section,
    # What sparsity buys at inference.
    inference_section,
    sampling_section,
    block_section,
)


def build_sections(
    ctx: ReportContext,
    builders: Sequence[SectionBuilder] | None = None,
    budget_runs: Sequence[Run] | None = None,
) -> tuple[list[Section], list[Section]]:
    """Returns the answers that open the page and the sections after them, in order.

    Args:
        ctx: what the sections read.
        builders: the sections to build per scope instead of :data:`SECTION_BUILDERS`; the
            answers are left out then (a report of those sections alone).
        budget_runs: the runs of a budget sweep's own store (issue 28), drawn in a section of
            their own after the others, kept out of the frontiers.
    """
    sections = [s for scope in ctx.scopes() for build in (builders or SECTION_BUILDERS)
                if (s := build(ctx, scope)) is not None]
    if budget_runs:
        published_runs = [r for r in ctx.runs if r.source == "published"]
        if (budget := budget_section(budget_runs, published_runs, ctx.out_dir)) is not None:
            sections.append(budget)
    # The answers open the page, before the figures they summarise (ours only: the study's
    # published runs have no seed spread of ours to judge their gaps against).
    answers = [] if builders is not None else [
        s for scope in ctx.scopes() if (s := answers_section(ctx, scope)) is not None]
    return answers, sections
