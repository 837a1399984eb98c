"""Frontier logic on a hand-made table, then the study's frontiers against FRONTIERS.md."""

from __future__ import annotations

import pytest

from sparsebench.methods import catalogue
from sparsebench.study import pareto as P
from sparsebench.study.pareto import Point

# A hand-made table. Bins at ±1 pp: 0.495 and 0.505 go to 50 %, 0.899 to 90 %, 0.93 nowhere.
HAND = [
    Point("magnitude", 0.500, 10.0, "m1"),
    Point("magnitude", 0.505, 12.0, "m2"),
    Point("magnitude", 0.899, 8.0, "m3"),
    Point("magnitude", 0.930, 99.0, "m4"),  # outside every bin: dropped from the frontier
    Point("vd", 0.495, 11.0, "v1"),
    Point("vd", 0.901, 9.0, "v1"),  # the same trained model at another threshold
    Point("vd", 0.902, 8.5, "v2"),
]


def test_binned_frontier_by_hand():
    table = P.frontiers(HAND)
    mp, vd = table["magnitude"], table["vd"]
    assert sorted(mp) == [0.5, 0.9] and sorted(vd) == [0.5, 0.9]
    assert (mp[0.5].value, mp[0.5].n, mp[0.5].train_id, mp[0.5].sparsity) == (12.0, 2, "m2", 0.505)
    assert (mp[0.9].value, mp[0.9].n) == (8.0, 1)
    assert (vd[0.5].value, vd[0.5].n) == (11.0, 1)
    assert (vd[0.9].value, vd[0.9].n) == (9.0, 2)  # two models (v1, v2), three points
    tight = P.binned_frontier([p for p in HAND if p.series == "magnitude"], tolerance_pp=0.2)
    assert sorted(tight) == [0.5, 0.9] and tight[0.5].value == 10.0  # 0.505 is 0.5 pp away


def test_lower_is_better_and_level_edges():
    pts = [Point("a", 0.5, 3.0, "x"), Point("a", 0.5, 2.0, "y")]
    assert P.binned_frontier(pts, higher_is_better=False)[0.5].value == 2.0
    assert P.nearest_level(0.59) == 0.6 and P.nearest_level(0.61) == 0.6  # exactly 1 pp
    assert P.nearest_level(0.6101) is None and P.nearest_level(0.925) is None
    assert P.nearest_level(0.0) is None


def test_pareto_envelope_by_hand():
    pts = [Point("a", 0.5, 10.0, "1"), Point("a", 0.6, 11.0, "2"), Point("a", 0.7, 9.0, "3"),
           Point("a", 0.7, 8.0, "4"), Point("a", 0.9, 5.0, "5"), Point("a", 0.8, 4.0, "6")]
    # 0.5/10 is beaten by 0.6/11; 0.7/8 by 0.7/9; 0.8/4 by 0.9/5.
    assert [p.train_id for p in P.pareto_envelope(pts)] == ["2", "3", "5"]


def test_summaries_normalise_and_sentences():
    baseline = P.summarise([20.0, 22.0, 24.0])
    assert baseline == P.Summary(22.0, 20.0, 24.0, 3)
    table = P.frontiers(HAND)
    assert P.normalise(table["magnitude"], baseline)[0.5].value == pytest.approx(12.0 / 22.0)
    assert P.best_at_level_sentence(table, 0.9, "bleu") == (
        "At 90% sparsity, vd has the best frontier point: 9.00 BLEU, "
        "vs magnitude pruning 8.00 BLEU.")
    assert P.leaders_sentence(table) == (
        "Magnitude pruning has the best frontier point at 50% sparsity; vd at 90%.")
    tie = {"magnitude": {0.5: table["magnitude"][0.5]}, "l0": {0.5: table["magnitude"][0.5]}}
    assert "magnitude pruning and L0 regularization share" in P.best_at_level_sentence(
        tie, 0.5, "bleu")
    assert P.dense_sentence(baseline, "bleu") == (
        "The dense baseline reaches 22.00 BLEU (mean of 3 runs, 20.00 BLEU to 24.00 BLEU).")
    reps = P.replica_summaries([Point("lottery", 0.5, v, str(v)) for v in (9.0, 11.0, 13.0)])
    assert reps["lottery"][0.5] == P.Summary(11.0, 9.0, 13.0, 3)
    sentences = P.retraining_sentences(reps, table["magnitude"], "bleu")
    assert sentences[0] == "Retraining reaches the magnitude pruning frontier at 50%."
    assert "lottery (13.00 BLEU, best of 3), 1.00 BLEU above" in sentences[1]
    with pytest.raises(ValueError):
        P.summarise([])


# ---- the study's numbers (FRONTIERS.md, tolerance ±1 pp) ------------------------------------

def _family(runs, family):
    return [r for r in runs if r.model_family == family]


def _table(runs):
    sparsifiers = catalogue.sparsifiers()
    return P.frontiers(P.points_from_runs(r for r in runs if r.technique in sparsifiers))


def test_dense_baselines_match_frontiers_md(published_runs):
    rn50 = P.dense_baseline(_family(published_runs, "resnet50"))
    assert (round(100 * rn50.mean, 2), round(100 * rn50.min, 2), round(100 * rn50.max, 2),
            rn50.n) == (76.69, 76.59, 76.80, 3)
    t = P.dense_baseline(_family(published_runs, "transformer"))
    assert (round(t.mean, 2), t.min, t.max, t.n) == (27.29, 27.12, 27.52, 5)


# (technique, level) -> (best value as FRONTIERS.md prints it, number of models in the bin)
TRANSFORMER = {
    ("magnitude", 0.9): (23.26, 72), ("magnitude", 0.5): (26.33, 72),
    ("magnitude", 0.98): (16.37, 72), ("variational_dropout", 0.9): (22.02, 203),
    ("variational_dropout", 0.95): (19.66, 174), ("l0", 0.5): (26.79, 23),
    ("l0", 0.98): (18.03, 5), ("random", 0.98): (10.94, 90), ("random", 0.5): (24.56, 90),
}
RESNET50 = {
    ("variational_dropout", 0.95): (72.48, 19), ("magnitude", 0.95): (70.59, 22),
    ("magnitude", 0.98): (57.90, 1), ("variational_dropout", 0.98): (69.69, 30),
    ("magnitude", 0.9): (73.91, 51), ("variational_dropout", 0.6): (76.21, 1),
    ("random", 0.9): (65.00, 54), ("l0", 0.95): (0.14, 12),
}


def test_transformer_frontier_matches_frontiers_md(published_runs):
    table = _table(_family(published_runs, "transformer"))
    got = {key: (round(table[key[0]][key[1]].value, 2), table[key[0]][key[1]].n)
           for key in TRANSFORMER}
    assert got == TRANSFORMER
    assert 0.6 not in _table(_family(published_runs, "resnet50"))["magnitude"]  # no 60 % runs
    # FRONTIERS.md: the L0 "98 %" cell is a run at 97.24 % sparsity.
    assert round(table["l0"][0.98].sparsity, 4) == 0.9724
    assert P.leaders_sentence(table) == (
        "L0 regularization has the best frontier point at 50, 60, 70 and 98% sparsity; "
        "magnitude pruning at 80, 90 and 95%.")
    assert P.best_at_level_sentence(table, 0.9, "bleu") == (
        "At 90% sparsity, magnitude pruning has the best frontier point: 23.26 BLEU, "
        "vs L0 regularization 22.97 BLEU, variational dropout 22.02 BLEU, "
        "random pruning 20.67 BLEU.")


def test_resnet50_frontier_matches_frontiers_md(published_runs):
    table = _table(_family(published_runs, "resnet50"))
    got = {key: (round(100 * table[key[0]][key[1]].value, 2), table[key[0]][key[1]].n)
           for key in RESNET50}
    assert got == RESNET50
    assert P.leaders_sentence(table).startswith(
        "Variational dropout has the best frontier point at 50, 60, 90, 95 and 98% sparsity; "
        "magnitude pruning at 70 and 80%")


def test_retraining_summaries_match_frontiers_md(published_runs):
    kinds = catalogue.retraining_kinds()
    t = [r for r in _family(published_runs, "transformer") if r.technique in kinds]
    reps = P.replica_summaries(P.points_from_runs(t))
    # best (max), min, mean, n
    e80 = reps["scratch-e"][0.8]
    assert (round(e80.max, 2), e80.min, round(e80.mean, 2), e80.n) == (22.97, 0.0, 21.79, 25)
    assert round(reps["lottery"][0.6].min, 2) == 15.17
    assert round(reps["lottery"][0.6].mean, 2) == 22.54
    assert round(reps["augmented (scratch-b)"][0.98].max, 2) == 13.58
    assert round(reps["scratch-b"][0.5].max, 2) == 26.24
    kinds = catalogue.retraining_kinds()
    r = [x for x in _family(published_runs, "resnet50") if x.technique in kinds]
    rn = P.replica_summaries(P.points_from_runs(r))
    s = rn["scratch-b (lr_scaled)"][0.5]  # scratch_lr_scaled, time multiplier 2, init baseline
    assert (round(100 * s.max, 2), round(100 * s.min, 2), round(100 * s.mean, 2), s.n) == \
        (75.86, 75.42, 75.67, 9)
    assert round(100 * rn["lottery"][0.98].mean, 2) == 51.28 and rn["lottery"][0.98].n == 3
    mp = _table(_family(published_runs, "transformer"))["magnitude"]
    sentences = P.retraining_sentences(reps, mp, "bleu")
    assert sentences[0] == "No retraining run reaches the magnitude pruning frontier at any level."
    assert ("At 90%, the best retrained run is lottery (22.04 BLEU, best of 25), 1.22 BLEU below "
            "the magnitude pruning frontier (23.26 BLEU).") in sentences


def test_retraining_sentences_set_scratch_e_beside_a_longer_trained_best():
    # Hand-made: the frontier is 80.0 at 90%; scratch-b (twice the steps) reaches 90 at best,
    # scratch-e averages (84 + 85 + 86) / 3 = 85, 5 points above the frontier.
    frontier = P.frontiers([Point("magnitude", 0.9, 0.8, "mp")])["magnitude"]
    reps = P.replica_summaries([Point("scratch-b", 0.9, v, f"b{v}") for v in (0.88, 0.9)]
                               + [Point("scratch-e", 0.9, v, f"e{v}")
                                  for v in (0.84, 0.85, 0.86)])
    sentences = P.retraining_sentences(reps, frontier, "top1")
    assert sentences[0] == "Retraining reaches the magnitude pruning frontier at 90%."
    assert "scratch-b (90.00%, best of 2), 10.00 points above" in sentences[1]
    assert sentences[2] == ("At 90%, scratch-e, with the pruning run's steps, averages 85.00% "
                            "over 3: 5.00 points above the frontier.")
    assert sentences[-1].startswith("The series marked scratch-b train twice the steps")


def test_a_sentence_starts_upper_case_without_lowering_the_rest():
    assert P.sentence_start("RigL") == "RigL"
    assert P.sentence_start("magnitude pruning") == "Magnitude pruning"
    assert P.sentence_start("") == ""
