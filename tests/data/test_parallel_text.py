"""Parallel text: reading, errors with file:line, encoding, padding and batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsebench.data.parallel_text import (
    ParallelTextDataset,
    ParallelTextError,
    TokenBatchSampler,
    collate_pairs,
    read_parallel,
    read_split,
    read_tsv,
)


class CharVocab:
    """Each character becomes one id (ord + 10), enough to check lengths and ids by hand."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 10 for c in text]


def test_read_aligned_files(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_text("a house\nthe cat\n", encoding="utf-8")
    (tmp_path / "train.de").write_text("ein Haus\ndie Katze\n", encoding="utf-8")
    assert read_split(tmp_path, "train") == [("a house", "ein Haus"), ("the cat", "die Katze")]


def test_misaligned_files(tmp_path: Path) -> None:
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    with pytest.raises(ParallelTextError, match=r"a\.en has 3 lines but .*a\.de has 2; line 3"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")


def test_empty_line_reported_with_line_number(tmp_path: Path) -> None:
    (tmp_path / "b.en").write_text("one\n\nthree\n", encoding="utf-8")
    (tmp_path / "b.de").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    with pytest.raises(ParallelTextError, match=r"b\.en:2: empty line"):
        read_parallel(tmp_path / "b.en", tmp_path / "b.de")


def test_invalid_utf8_reported_with_line_number(tmp_path: Path) -> None:
    (tmp_path / "c.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "c.de").write_bytes(b"eins\n" + "Grüße\n".encode("latin-1"))
    with pytest.raises(ParallelTextError, match=r"c\.de:2: invalid UTF-8"):
        read_parallel(tmp_path / "c.en", tmp_path / "c.de")


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("hello\thallo\nbye\ttschüss\n", encoding="utf-8")
    assert read_tsv(path) == [("hello", "hallo"), ("bye", "tschüss")]
    path.write_text("hello\thallo\nno tab here\n", encoding="utf-8")
    with pytest.raises(ParallelTextError, match=r"pairs\.tsv:2: expected 2 tab-separated"):
        read_tsv(path)


def test_missing_split_names_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test\.en and test\.de, or test\.tsv"):
        read_split(tmp_path, "test")


def test_dataset_encoding_and_length_filter() -> None:
    pairs = [("ab", "xyz"), ("a" * 10, "b")]
    ds = ParallelTextDataset(pairs, CharVocab(), max_length=6)
    assert len(ds) == 1 and ds.num_filtered == 1
    src, tgt = ds[0]
    # source: ids + eos(2); target: bos(1) + ids + eos(2); ids are ord + 10.
    assert src.tolist() == [ord("a") + 10, ord("b") + 10, 2]
    assert tgt.tolist() == [1, ord("x") + 10, ord("y") + 10, ord("z") + 10, 2]
    assert ds.lengths() == [5]


def test_collate_pads_with_zero() -> None:
    batch = [(torch.tensor([5, 2]), torch.tensor([1, 7, 2])), (torch.tensor([5, 6, 7, 2]),
             torch.tensor([1, 2]))]
    src, tgt = collate_pairs(batch)
    assert src.tolist() == [[5, 2, 0, 0], [5, 6, 7, 2]]
    assert tgt.tolist() == [[1, 7, 2], [1, 2, 0]]


def test_token_batch_sampler() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6]
    sampler = TokenBatchSampler(lengths, max_tokens=12, seed=3)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(10))  # every example exactly once
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 12 or len(b) == 1
    assert batches == list(TokenBatchSampler(lengths, max_tokens=12, seed=3))  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new epoch reshuffles
    assert sorted(i for b in sampler for i in b) == list(range(10))
    # Without shuffling, batches follow length order: [1,2,3,3] -> 4*3=12 fits; then [4,5] ...
    ordered = list(TokenBatchSampler(lengths, max_tokens=12, shuffle=False))
    assert [[lengths[i] for i in b] for b in ordered] == [[1, 2, 3, 3], [4, 5], [6], [7], [8], [9]]
    assert len(TokenBatchSampler(lengths, max_tokens=12, shuffle=False)) == 6
