"""BLEU and chrF against sacrebleu's documented example and hand-worked cases."""

from __future__ import annotations

import math

import pytest

from sparsebench.metrics.translation import bleu, chrf

# The example in sacrebleu's README ("Using SacreBLEU from Python"): two reference streams.
README_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
README_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_sacrebleu_readme_example() -> None:
    # README: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)" and "chrF2 = 59.73".
    assert bleu(README_SYS, README_REFS) == pytest.approx(48.53, abs=0.005)
    assert chrf(README_SYS, README_REFS) == pytest.approx(59.73, abs=0.005)
    assert isinstance(bleu(README_SYS, README_REFS), float)


def test_identical_is_100() -> None:
    refs = ["Das ist ein Test.", "Noch ein Satz, bitte."]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)


def test_brevity_penalty_by_hand() -> None:
    # Every n-gram of the 4-token hypothesis matches; only the brevity penalty acts:
    # BP = exp(1 - 5/4).
    assert bleu(["a b c d"], ["a b c d e"]) == pytest.approx(100 * math.exp(-0.25), abs=1e-6)


def test_case_sensitive_by_hand() -> None:
    # "The" != "the": precisions 5/6, 4/5, 3/4, 2/3, no brevity penalty -> (1/3) ** (1/4).
    score = bleu(["The cat sat on the mat"], ["the cat sat on the mat"])
    assert score == pytest.approx(100 * (1 / 3) ** 0.25, abs=1e-6)


def test_length_mismatch_is_clear() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but reference stream 1 has 1"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference stream 2 has 2"):
        chrf(README_SYS, [README_REFS[0], README_REFS[1][:2]])
    with pytest.raises(ValueError, match="empty corpus"):
        bleu([], [[]])
