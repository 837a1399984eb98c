"""Corpus-level BLEU and chrF with sacrebleu, on detokenized text.

BLEU is computed as the study reports it: case-sensitive, sacrebleu's default ``13a``
tokenization, exponential smoothing (sacrebleu's defaults), on *detokenized* hypotheses and
references — decode subwords back to plain text first, never score subword pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

__all__ = ["bleu", "chrf"]


def _reference_streams(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """Return references as sacrebleu's list of streams, checking every length."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a sequence of sentences, not one string")
    if len(references) == 0:
        raise ValueError("no references given")
    # One reference per hypothesis (a list of strings) or several streams (a list of lists),
    # as in sacrebleu's own API.
    if isinstance(references[0], str):
        streams = [list(references)]
    else:
        streams = [list(r) for r in references]
    for number, stream in enumerate(streams, start=1):
        if len(stream) != len(hypotheses):
            raise ValueError(
                f"length mismatch: {len(hypotheses)} hypotheses but reference stream {number} has "
                f"{len(stream)} sentences"
            )
        if not all(isinstance(s, str) for s in stream):
            raise TypeError(f"reference stream {number} must contain strings")
    if not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be strings (detokenized text)")
    if len(hypotheses) == 0:
        raise ValueError("BLEU/chrF of an empty corpus is undefined")
    return streams


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Return corpus BLEU (0–100) of detokenized ``hypotheses`` against ``references``.

    Args:
        hypotheses: one system output per segment.
        references: one reference per segment, or a list of reference streams (each as long as
            ``hypotheses``) for several references.

    Raises:
        ValueError: empty input or a reference stream whose length differs from the hypotheses'.
    """
    streams = _reference_streams(hypotheses, references)
    return float(BLEU().corpus_score(list(hypotheses), streams).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Return corpus chrF (chrF2: character 6-grams, β=2; 0–100), same arguments as ``bleu``."""
    streams = _reference_streams(hypotheses, references)
    return float(CHRF().corpus_score(list(hypotheses), streams).score)
