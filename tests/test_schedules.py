import pytest

from sparsebench.schedules import GradualSchedule, cubic_sparsity, exact_zero_count, linear_warmup


def test_cubic_formula_by_hand():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3 with t0=0, nΔt=100, s_f=0.8, s_i=0.
    assert cubic_sparsity(0, 0.8, 0, 100) == 0.0
    assert cubic_sparsity(50, 0.8, 0, 100) == pytest.approx(0.8 - 0.8 * 0.125)
    assert cubic_sparsity(100, 0.8, 0, 100) == 0.8
    assert cubic_sparsity(250, 0.8, 0, 100) == 0.8
    # with an initial sparsity of 0.2 and a begin of 10: t=35 is a quarter of the way.
    assert cubic_sparsity(35, 0.9, 10, 110, 0.2) == pytest.approx(0.9 - 0.7 * 0.75**3)
    assert cubic_sparsity(5, 0.9, 10, 110, 0.2) == 0.2


def test_schedule_is_stepped_on_its_frequency():
    s = GradualSchedule(begin_step=0, end_step=100, frequency=30)
    assert [t for t in range(0, 130) if s.is_update_step(t)] == [0, 30, 60, 90, 100]
    # Off the grid the last update holds: step 59 uses step 30's value.
    assert s.sparsity_at(59, 0.8) == pytest.approx(0.8 * (1 - 0.7**3))
    assert s.sparsity_at(95, 0.8) == pytest.approx(0.8 * (1 - 0.1**3))
    assert s.sparsity_at(100, 0.8) == 0.8
    assert s.sparsity_at(10_000, 0.8) == 0.8


def test_before_begin_the_initial_sparsity_holds():
    s = GradualSchedule(begin_step=1000, end_step=2000, frequency=100)
    assert s.sparsity_at(0, 0.9) == 0.0
    assert s.sparsity_at(999, 0.9) == 0.0
    assert s.sparsity_at(1000, 0.9) == 0.0
    assert s.sparsity_at(1100, 0.9) == pytest.approx(0.9 * (1 - 0.9**3))
    assert s.last_update_step(999) is None


def test_a_zero_length_schedule_jumps_at_begin():
    s = GradualSchedule(begin_step=5, end_step=5, frequency=1)
    assert s.sparsity_at(4, 0.5) == 0.0
    assert s.sparsity_at(5, 0.5) == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(begin_step=10, end_step=5), "precedes begin_step"),
        (dict(end_step=5, frequency=0), "frequency must be positive"),
        (dict(begin_step=-1, end_step=5), "begin_step must be >= 0"),
        (dict(end_step=5, initial_sparsity=1.0), "initial_sparsity must lie in [0, 1)"),
        (dict(end_step=5.5), "end_step must be an integer"),
    ],
)
def test_schedule_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        GradualSchedule(**kwargs)


def test_linear_warmup():
    assert linear_warmup(0, 10, 20) == 0.0
    assert linear_warmup(15, 10, 20) == 0.5
    assert linear_warmup(20, 10, 20) == 1.0
    assert linear_warmup(0, 0, 0) == 1.0


def test_exact_zero_count_rounds_half_up():
    assert exact_zero_count(0.9, 1000) == 900
    assert exact_zero_count(0.5, 3) == 2
    assert exact_zero_count(0.25, 2) == 1
    assert exact_zero_count(0.0, 7) == 0
    assert exact_zero_count(0.98, 50) == 49
