"""sentencepiece vocabulary: special ids, round trip, caching."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.data.vocab import SubwordVocab, train_joint_vocab, train_vocab

EN = [
    "the house is small",
    "the cat sleeps in the house",
    "a small cat and a big dog",
    "the dog runs to the garden",
    "I've made one or two modifications to the original design.",
]
DE = [
    "das Haus ist klein",
    "die Katze schläft im Haus",
    "eine kleine Katze und ein großer Hund",
    "der Hund läuft in den Garten",
    "Ich habe am ursprünglichen Entwurf ein paar Änderungen vorgenommen.",
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "train.en").write_text("\n".join(EN * 4) + "\n", encoding="utf-8")
    (tmp_path / "train.de").write_text("\n".join(DE * 4) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_round_trip_and_special_ids(corpus: Path, model_type: str) -> None:
    vocab = train_joint_vocab(corpus, vocab_size=60, model_type=model_type)
    assert len(vocab) == 60
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    for sentence in EN + DE:
        ids = vocab.encode(sentence)
        assert all(i >= 4 or i == 3 for i in ids)  # no pad/bos/eos inside a sentence
        assert vocab.decode(ids) == sentence
    # decode stops at eos and skips bos and padding, as a model's output row looks.
    ids = vocab.encode("die Katze")
    assert vocab.decode([1, *ids, 2, 0, 0]) == "die Katze"
    assert vocab.decode([1, *ids, 2, *vocab.encode("Hund")]) == "die Katze"


def test_cached_by_content_and_settings(corpus: Path) -> None:
    files = [corpus / "train.en", corpus / "train.de"]
    first = train_vocab(files, corpus, vocab_size=60)
    mtime = first.model_path.stat().st_mtime_ns
    again = train_vocab(files, corpus, vocab_size=60)
    assert again.model_path == first.model_path
    assert again.model_path.stat().st_mtime_ns == mtime  # reused, not retrained
    other = train_vocab(files, corpus, vocab_size=50)
    assert other.model_path != first.model_path and len(other) == 50
    (corpus / "train.en").write_text("\n".join(EN * 5) + "\n", encoding="utf-8")
    changed = train_vocab(files, corpus, vocab_size=60)
    assert changed.model_path != first.model_path
    assert not [p for p in corpus.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_type='word'"):
        train_vocab([tmp_path / "x"], tmp_path, model_type="word")
    with pytest.raises(FileNotFoundError, match="training file not found"):
        train_vocab([tmp_path / "x"], tmp_path)
    with pytest.raises(FileNotFoundError, match="train_vocab"):
        SubwordVocab(tmp_path / "none.model")


def test_too_large_vocab_is_a_clear_error(corpus: Path) -> None:
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        train_joint_vocab(corpus, vocab_size=5000)
    assert not [p for p in corpus.iterdir() if p.name.startswith(".")]
