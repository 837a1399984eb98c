"""The timing helpers on fake clocks, rounds and loads, against values worked by hand."""

from __future__ import annotations

import math

import pytest

from sparsebench.inference import timing
from sparsebench.inference.timing import (
    Comparison,
    Spread,
    choose_threads,
    interleaved_rounds,
    load_problem,
    own_load_share,
    unreliable_line,
)


class FakeClock:
    """A clock that only moves when a fake candidate says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str, durations: list[float]):  # noqa: ANN201
        queue = iter(durations)

        def call() -> None:
            self.calls.append(name)
            self.now += next(queue)

        return call


def test_interleaved_rounds_rotates_the_order_and_keeps_each_round():
    clock = FakeClock()
    cands = {"a": clock.candidate("a", [1, 2, 3]), "b": clock.candidate("b", [10, 20, 30])}
    rounds = interleaved_rounds(cands, repeats=3, warmup=0, clock=clock)
    assert rounds == {"a": [1, 2, 3], "b": [10, 20, 30]}
    assert clock.calls == ["a", "b", "b", "a", "a", "b"]


def test_interleaved_rounds_stops_at_the_budget_after_three_rounds():
    clock = FakeClock()
    cands = {"a": clock.candidate("a", [1.0] * 10), "b": clock.candidate("b", [10.0] * 10)}
    rounds = interleaved_rounds(cands, repeats=10, warmup=0, budget_s=25, clock=clock)
    # 11 s per round: past 25 s after the 3rd round, the earliest a budget may stop.
    assert rounds == {"a": [1.0] * 3, "b": [10.0] * 3}


def test_spread_is_the_median_and_inclusive_quartiles():
    s = Spread.of([3, 1, 4, 1, 5])  # sorted 1 1 3 4 5: quartiles are the 2nd and 4th
    assert (s.q1, s.median, s.q3, s.n) == (1, 3, 4, 5)
    assert s.relative == pytest.approx((4 - 1) / 3)
    s = Spread.of([4, 1, 3, 2])  # positions 0.75, 1.5, 2.25 between 1 2 3 4
    assert (s.q1, s.median, s.q3) == pytest.approx((1.75, 2.5, 3.25))
    assert Spread.of([7.0]) == Spread(7.0, 7.0, 7.0, 1)
    with pytest.raises(ValueError, match="zero rounds"):
        Spread.of([])


def test_comparison_flags_a_noisy_side():
    # Batch 1 of the loaded fake in test_commands: dense sorted .10 .11 .12 .30 .50 ms.
    c = Comparison.of([0.10, 0.30, 0.11, 0.12, 0.50], [0.10] * 5)
    assert c.headline == pytest.approx(1.2)  # .12 / .10
    assert c.baseline.relative == pytest.approx((0.30 - 0.11) / 0.12)  # 158%
    assert (c.low, c.high) == pytest.approx((0.11 / 0.10, 0.30 / 0.10))
    assert c.problems() == ["dense rounds spread 158.3% of their median"]
    assert c.cell() == "1.20x [1.10-3.00] !"


def test_comparison_flags_a_ratio_range_that_spans_one():
    # Each side within 20%: dense sorted .9 1.1 1.2 1.3 2.0 (quartiles 1.1-1.3, 17%), sparse
    # .8 .95 1 1.12 1.5 (.95-1.12, 17%); the medians claim 1.2x, but the ratio's range runs
    # from 1.1/1.12 = .98 to 1.3/.95 = 1.37.
    c = Comparison.of([0.9, 1.1, 1.2, 1.3, 2.0], [1.5, 1.12, 0.95, 1.0, 0.8])
    assert c.headline == pytest.approx(1.2)
    assert c.baseline.relative == pytest.approx(0.2 / 1.2)
    assert c.candidate.relative == pytest.approx(0.17)
    assert (c.low, c.high) == pytest.approx((1.1 / 1.12, 1.3 / 0.95))
    assert c.problems() == ["the ratio's range over the quartiles (0.98-1.37) spans 1.0"]
    # The same range around a ratio that claims no difference is no problem.
    rounds = [0.9, 0.95, 1.0, 1.05, 1.1]  # quartiles .95-1.05 (10%)
    same = Comparison.of(rounds, rounds[::-1])
    assert (same.headline, same.low, same.high) == pytest.approx((1.0, 0.95 / 1.05, 1.05 / 0.95))
    assert same.problems() == []


def test_comparison_of_quiet_rounds_has_no_problem():
    c = Comparison.of([1.00, 1.02, 0.98, 1.01, 0.99], [0.5] * 5)
    assert c.problems() == []
    assert c.cell() == "2.00x [1.98-2.02]"  # .99/.50 to 1.01/.50


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 5.0, 1), (2, 1.12, 1), (2, 0.49, 2), (2, 0.5, 1), (16, 3.4, 13), (2, 0.0, 2)],
)
def test_default_threads_are_the_idle_cores_at_least_one(cores, load, threads):
    choice = choose_threads(None, cores=cores, load=load)
    assert (choice.threads, choice.requested) == (threads, False)
    assert "chosen: never more than the idle cores" in choice.describe()


def test_requested_threads_are_kept_and_checked():
    choice = choose_threads(2, cores=2, load=5.0)
    assert (choice.threads, choice.requested) == (2, True)
    assert choice.describe() == (
        "threads: 2 (as requested; 2 cores, load average 5.00 leaves 0 idle)"
    )
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        choose_threads(0)


def test_load_problem_discounts_this_process_own_threads():
    assert own_load_share(1, 60.0) == pytest.approx(1 - math.exp(-1))
    quiet = choose_threads(1, cores=2, load=0.5)
    # After 60 s: others = max(0.5, 1.6 - 0.632) = 0.968, leaving 1 idle core for 1 thread.
    assert load_problem(quiet, 1.6, 60.0) is None
    two = choose_threads(2, cores=2, load=0.5)
    # Two threads add 1.264: others = max(0.5, 0.336) = 0.5, rounded up to 1: 1 idle core.
    assert load_problem(two, 1.6, 60.0) == (
        "other jobs' load average 0.50 on 2 cores leaves 1 idle for 2 thread(s)"
    )
    unknown = timing.ThreadChoice(1, 2, None, True)  # an OS without load averages
    assert load_problem(unknown, None, 1.0) is None
    assert "load average unknown" in unknown.describe()


def test_unreliable_line_is_one_line_or_none():
    assert unreliable_line({"batch 1": [], "batch 16": []}) is None
    line = unreliable_line({"batch 1": ["a", "b"], "batch 16": []}, "busy")
    assert line is not None and "\n" not in line
    assert line.startswith("WARNING: unreliable ratios")
    assert "batch 1: a; b | busy." in line and "batch 16" not in line


def test_load_watch_sets_and_restores_torch_threads(monkeypatch):
    import torch

    monkeypatch.setattr(timing, "available_cores", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    before = torch.get_num_threads()
    watch = timing.LoadWatch()
    try:
        assert watch.threads == 1 and torch.get_num_threads() == 1
        assert watch.problem() is not None and "leaves 0 idle for 1 thread" in watch.problem()
    finally:
        watch.restore()
    assert torch.get_num_threads() == before
