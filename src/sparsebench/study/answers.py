"""The study's answers for one scope of our runs, each gap judged against how far one setting
moves with the seed alone: the sentences and rows the report's opening section
(:mod:`sparsebench.study.report.answers`) shows.

A frontier point is the best run of a bin, often one seed of one setting, so a gap between
two techniques says something only when it is larger than the seed spread
(:func:`~sparsebench.study.seeds.seed_spread`). Every comparison here is worded from
that test: a gap within the spread is a tie ("level"), a larger one "ahead" or "behind";
with no repeated setting there is no spread, and the sentences say so instead of ranking on
noise. Where the runs carry a test loss beside another headline metric, the same answers
follow in loss, against the loss's own seed spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..methods import catalogue
from . import pareto as P
from .seeds import SeedSpread, seed_spread
from .store import Run

__all__ = [
    "Gap",
    "amount",
    "compared_techniques",
    "gap_verdict",
    "levels_text",
    "measure_answers",
    "pair_gaps",
    "pair_sentence",
    "quantity",
]


def compared_techniques() -> list[str]:
    """Returns the techniques whose frontiers the first question compares: the sparsifiers
    (MP v2 trains 1.5x the steps, so it is no peer here; its own section compares it)."""
    return catalogue.sparsifiers()


def _challengers() -> list[str]:
    """Returns the sparsifiers set against the reference: the other pruning ones first (same
    target, same schedule), then those a regularization weight steers."""
    others = [t for t in catalogue.entries(catalogue.SPARSIFIER)
              if t.name != catalogue.reference()]
    return [t.name for t in sorted(others, key=lambda t: not t.takes_target)]
_UNITS = {"top1": "points", "bleu": "BLEU", "loss": "nats"}


@dataclass(frozen=True)
class Gap:
    """One comparison at one ``level``: how much better ``first`` is than ``second`` (in the
    metric's units, negative when worse) and the verdict against the seed spread."""

    level: float
    first: str
    second: str
    gap: float
    verdict: str  # "ahead", "behind" or "level"


def gap_verdict(gap: float, spread: SeedSpread | None) -> str:
    """Returns "level" when ``gap`` (how much better one side is) is no larger than the seed
    spread, else "ahead" or "behind"; without a spread only an exact tie is level."""
    limit = spread.value if spread is not None else 0.0
    if abs(gap) <= limit + 1e-12:
        return "level"
    return "ahead" if gap > 0 else "behind"


def quantity(value: float, metric: str) -> str:
    """Returns a value in the metric's units as the sentences and tables write it: top-1 in
    percent or points (two decimals), a loss with three, others with two."""
    if metric == "top1":
        return f"{100 * value:.2f}"
    return f"{value:.3f}" if metric == "loss" else f"{value:.2f}"


def amount(value: float, metric: str) -> str:
    """Returns a gap with its unit, e.g. "3.51 points", "0.020 nats"."""
    return f"{quantity(abs(value), metric)} {_UNITS.get(metric, '')}".rstrip()


def _span(values: Sequence[float], metric: str) -> str:
    """Returns "0.55 points" for one value, "0.55–3.51 points" for several."""
    low, high = min(map(abs, values)), max(map(abs, values))
    if quantity(low, metric) == quantity(high, metric):
        return amount(low, metric)
    return f"{quantity(low, metric)}–{amount(high, metric)}"


def levels_text(levels: Sequence[float]) -> str:
    """Returns levels as a sentence lists them: "50%", "50, 70 and 90%"."""
    texts = [f"{100 * lv:g}" for lv in sorted(levels)]
    return (texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]) + "%"


def _spread_words(spread: SeedSpread, metric: str) -> str:
    return f"the seed spread of {amount(spread.value, metric)}"


# ---- the comparisons --------------------------------------------------------------------------

def _frontiers(runs: Sequence[Run], tolerance_pp: float, higher: bool
               ) -> dict[str, P.Frontier]:
    # Runs with a variant (a sweep's "4x steps") are not at the study's budget: the answers
    # compare the techniques at equal budget, and the frontiers draw the variants apart.
    points = P.points_from_runs(
        [r for r in runs if r.technique in compared_techniques() and not r.variant],
        series=lambda r: r.technique)
    return P.frontiers(points, tolerance_pp=tolerance_pp, higher_is_better=higher)


def pair_gaps(table: Mapping[str, P.Frontier], first: str, second: str, *, higher: bool,
              spread: SeedSpread | None) -> list[Gap]:
    """Returns ``first`` against ``second`` at every level both frontiers reach."""
    sign = 1.0 if higher else -1.0
    mine, theirs = table.get(first, {}), table.get(second, {})
    gaps = []
    for level in sorted(set(mine) & set(theirs)):
        gap = sign * (mine[level].value - theirs[level].value)
        gaps.append(Gap(level, first, second, gap, gap_verdict(gap, spread)))
    return gaps


def pair_sentence(name: str, other: str, gaps: Sequence[Gap], metric: str,
                   spread: SeedSpread | None) -> str:
    """E.g. "Random pruning against magnitude pruning: level at 50–90% (...); ahead at 95%
    by 3.51 points." — the levels grouped by verdict, in order of their first level."""
    groups: dict[str, list[Gap]] = {}
    for gap in gaps:
        groups.setdefault(gap.verdict, []).append(gap)
    parts = []
    for verdict, members in sorted(groups.items(), key=lambda kv: kv[1][0].level):
        levels, values = levels_text([g.level for g in members]), [g.gap for g in members]
        if verdict == "level":
            within = f", within {_spread_words(spread, metric)}" if spread else ""
            parts.append(f"level at {levels} ({_span(values, metric)} apart{within})")
        else:
            parts.append(f"{verdict} at {levels} by {_span(values, metric)}")
    return f"{name} against {other}: " + "; ".join(parts) + "."


def _winners_sentence(table: Mapping[str, P.Frontier], metric: str, higher: bool,
                      spread: SeedSpread | None) -> tuple[str, list[Gap]]:
    """Returns the sentence naming the best technique at each level (with every technique
    tied with it) and the leader's gap to the runner-up per level."""
    sign = 1.0 if higher else -1.0
    parts, gaps = [], []
    for level in P.LEVELS:
        ranked = P.leaders(table, level, higher_is_better=higher)
        if len(ranked) < 2:
            continue
        (best, top), (second, runner_up) = ranked[0], ranked[1]
        lead = sign * (top.value - runner_up.value)
        gaps.append(Gap(level, best, second, lead, gap_verdict(lead, spread)))
        # Ranked best first, so the techniques tied with the leader come right after it.
        tied = [(n, sign * (top.value - fp.value)) for n, fp in ranked[1:]
                if gap_verdict(sign * (top.value - fp.value), spread) == "level"]
        if tied:
            names = [P.display_name(n) for n in (best, *(n for n, _ in tied))]
            parts.append(f"at {100 * level:g}% {', '.join(names[:-1])} and {names[-1]} tie "
                         f"(within {amount(tied[-1][1], metric)})")
        else:
            parts.append(f"at {100 * level:g}% {P.display_name(best)}, "
                         f"{amount(lead, metric)} ahead of {P.display_name(second)}")
    if not parts:
        return "", gaps
    return "best technique at each sparsity: " + "; ".join(parts) + ".", gaps


def _retraining_gaps(runs: Sequence[Run], reference: P.Frontier, tolerance_pp: float,
                     higher: bool, spread: SeedSpread | None
                     ) -> dict[str, tuple[list[Gap], int]]:
    """Returns, per retraining kind, its mean over replicas against the magnitude-pruning
    frontier at each level both have, and its most replicas at a level."""
    kinds = catalogue.retraining_kinds()
    points = P.points_from_runs([r for r in runs if r.technique in kinds],
                                series=lambda r: r.technique)
    summaries = P.replica_summaries(points, tolerance_pp=tolerance_pp)
    sign = 1.0 if higher else -1.0
    out = {}
    for kind in kinds:
        cells = summaries.get(kind, {})
        gaps = []
        for level, summary in sorted(cells.items()):
            if level in reference:
                gap = sign * (summary.mean - reference[level].value)
                gaps.append(Gap(level, kind, catalogue.reference(), gap,
                                gap_verdict(gap, spread)))
        if gaps:
            out[kind] = (gaps, max(summary.n for summary in cells.values()))
    return out


def measure_answers(runs: Sequence[Run], metric: str, higher: bool, *, tolerance_pp: float,
                    prefix: str = "") -> tuple[list[str], list[list[str]]]:
    """Returns the sentences and table rows of one measure's answers (``runs`` carrying it as
    their metric): the seed spread, the best technique at each level, each of random pruning,
    VD and L0 against magnitude pruning and each retraining kind against joint pruning; each
    sentence after ``prefix`` (e.g. "In test loss, "). Frontier bins are ``tolerance_pp``
    wide."""
    spread = seed_spread(runs)
    table = _frontiers(runs, tolerance_pp, higher)
    measure = "test loss" if metric == "loss" else metric
    if spread is not None:
        first = (f"one setting moves by up to {amount(spread.value, metric)} with the seed "
                 f"alone ({spread.setting}, {spread.n} seeds); a gap no larger than that is "
                 "a tie below.")
    else:
        first = ("every setting ran with one seed, so there is no seed spread to tell a gap "
                 "from noise: the gaps below are single runs against single runs.")
    sentences, rows = [first], []

    def row(comparison: str, gap: Gap) -> list[str]:
        return [measure, comparison, f"{100 * gap.level:g}", P.display_name(gap.first),
                P.display_name(gap.second), quantity(gap.gap, metric),
                quantity(spread.value, metric) if spread else "–", gap.verdict]

    winners, gaps = _winners_sentence(table, metric, higher, spread)
    if winners:
        sentences.append(winners)
        rows += [row("best technique vs runner-up", g) for g in gaps]
    reference = catalogue.reference()
    against = P.display_name(reference)
    for technique in _challengers():
        if technique not in table or reference not in table:
            continue
        pairs = pair_gaps(table, technique, reference, higher=higher, spread=spread)
        if pairs:
            sentences.append(pair_sentence(P.display_name(technique), against,
                                            pairs, metric, spread))
            rows += [row(f"{P.display_name(technique)} vs {against}", g) for g in pairs]
        else:
            sentences.append(f"{P.display_name(technique)} has no frontier point at a "
                             f"level {against} reaches.")
    retrained = _retraining_gaps(runs, table.get(reference, {}), tolerance_pp, higher, spread)
    for kind, (gaps, n) in retrained.items():
        sentences.append(pair_sentence(
            f"{kind} ({'one run' if n == 1 else f'mean of {n}'})",
            "joint pruning (the magnitude pruning frontier)",
            gaps, metric, spread))
        rows += [row(f"{kind} (mean) vs magnitude pruning", g) for g in gaps]
    return [_lead(prefix, s) for s in sentences], rows


def _lead(prefix: str, sentence: str) -> str:
    """Returns the sentence after ``prefix`` ("In test loss, ..."), capitalised once."""
    text = prefix + sentence  # sentences start in lower case, as a name does ("L0" aside)
    return text[:1].upper() + text[1:]
