"""Parallel text in the WMT layout, encoded for a sequence-to-sequence model.

Layouts read:

* two aligned plain-text files per split, ``<prefix>.<src>`` / ``<prefix>.<tgt>`` (e.g.
  ``train.en`` / ``train.de``, ``newstest2014.en`` / ``newstest2014.de``), line *i* of one the
  translation of line *i* of the other;
* a TSV file of pairs, one ``source<TAB>target`` per line.

Problems are reported with the file and the 1-based line number: files of different lengths,
empty lines (they silently misalign or train the model to emit nothing) and invalid UTF-8.

Encoded examples follow the Transformer's conventions (pad=0, bos=1, eos=2): the source is
``ids + [eos]`` and the target ``[bos] + ids + [eos]``, so the decoder's input is ``tgt[:-1]`` and
its label ``tgt[1:]``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "ParallelTextDataset",
    "ParallelTextError",
    "TextEncoder",
    "TokenBatchSampler",
    "collate_pairs",
    "read_lines",
    "read_parallel",
    "read_split",
    "read_tsv",
]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class ParallelTextError(ValueError):
    """A text file that is misaligned, has an empty line or is not valid UTF-8."""


class TextEncoder(Protocol):
    """Anything that turns a sentence into token ids (e.g. ``vocab.SubwordVocab``)."""

    def encode(self, text: str) -> list[int]: ...


def _decode_lines(data: bytes, path: Path) -> list[str]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    out: list[str] = []
    for number, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise ParallelTextError(
                f"{path}:{number}: invalid UTF-8 at byte {exc.start} of the line "
                f"({raw[max(0, exc.start - 10) : exc.start + 10]!r}); re-encode the file as UTF-8"
            ) from None
    return out


def read_lines(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Read a UTF-8 text file as lines without their line endings.

    Args:
        path: the file.
        allow_empty: accept empty (whitespace-only) lines instead of raising.

    Returns:
        The lines, in order (a trailing newline does not add an empty line).

    Raises:
        FileNotFoundError: the file does not exist.
        ParallelTextError: invalid UTF-8 or an empty line, naming ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    lines = _decode_lines(path.read_bytes(), path)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a UTF-8 byte-order mark is not part of the text
    if not allow_empty:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise ParallelTextError(f"{path}:{number}: empty line")
    return lines


def read_parallel(source: str | Path, target: str | Path) -> list[tuple[str, str]]:
    """Read two aligned files into sentence pairs.

    Returns:
        ``[(source_line, target_line), ...]`` in file order.

    Raises:
        ParallelTextError: the files have different line counts (both counts named), or either
            has an empty line or invalid UTF-8 (``file:line``).
    """
    src, tgt = read_lines(source), read_lines(target)
    if len(src) != len(tgt):
        raise ParallelTextError(
            f"misaligned parallel files: {source} has {len(src)} lines but {target} has "
            f"{len(tgt)}; line {min(len(src), len(tgt)) + 1} has no partner"
        )
    return list(zip(src, tgt, strict=True))


def read_tsv(path: str | Path) -> list[tuple[str, str]]:
    """Read a TSV file of ``source<TAB>target`` pairs.

    Returns:
        ``[(source, target), ...]`` in file order.

    Raises:
        ParallelTextError: a line without exactly one tab, an empty side, or invalid UTF-8,
            naming ``file:line``.
    """
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ParallelTextError(
                f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}"
            )
        src, tgt = fields
        if not src.strip() or not tgt.strip():
            side = "source" if not src.strip() else "target"
            raise ParallelTextError(f"{path}:{number}: empty {side} side")
        pairs.append((src, tgt))
    return pairs


def read_split(
    directory: str | Path, split: str, src_lang: str = "en", tgt_lang: str = "de"
) -> list[tuple[str, str]]:
    """Read one split from ``directory``: ``<split>.<src>`` + ``<split>.<tgt>``, or ``<split>.tsv``.

    Returns:
        The sentence pairs of that split.

    Raises:
        FileNotFoundError: neither layout exists (one sentence naming what was looked for).
        ParallelTextError: as ``read_parallel`` / ``read_tsv``.
    """
    directory = Path(directory)
    src, tgt = directory / f"{split}.{src_lang}", directory / f"{split}.{tgt_lang}"
    if src.is_file() and tgt.is_file():
        return read_parallel(src, tgt)
    tsv = directory / f"{split}.tsv"
    if tsv.is_file():
        return read_tsv(tsv)
    raise FileNotFoundError(
        f"no split {split!r} in {directory}: expected {src.name} and {tgt.name}, or {tsv.name}; "
        "pass the directory that holds them."
    )


class ParallelTextDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Sentence pairs encoded once into ``(source_ids, target_ids)`` int64 tensors.

    Args:
        pairs: ``(source, target)`` sentences, e.g. from ``read_split``.
        source_vocab: encoder for the source side.
        target_vocab: encoder for the target side; defaults to ``source_vocab`` (joint vocab).
        max_length: drop pairs whose source or target has more tokens than this, *counting*
            the added bos/eos; ``None`` keeps all. The number dropped is in ``num_filtered``.
        bos_id, eos_id: ids added around the sequences (see module docstring).

    Items are ``(source_ids, target_ids)``: source ``ids + [eos]``, target ``[bos] + ids + [eos]``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        source_vocab: TextEncoder,
        target_vocab: TextEncoder | None = None,
        max_length: int | None = None,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
    ) -> None:
        if max_length is not None and max_length < 3:
            raise ValueError(f"max_length={max_length} must be >= 3 (bos, one token, eos)")
        target_vocab = target_vocab if target_vocab is not None else source_vocab
        self.sources: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.indices: list[int] = []  # position of each kept example in ``pairs``
        self.num_filtered = 0
        for i, (src, tgt) in enumerate(pairs):
            src_ids = source_vocab.encode(src) + [eos_id]
            tgt_ids = [bos_id] + target_vocab.encode(tgt) + [eos_id]
            if max_length is not None and max(len(src_ids), len(tgt_ids)) > max_length:
                self.num_filtered += 1
                continue
            self.sources.append(torch.tensor(src_ids, dtype=torch.int64))
            self.targets.append(torch.tensor(tgt_ids, dtype=torch.int64))
            self.indices.append(i)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(source_ids, target_ids)`` as 1-D int64 tensors."""
        return self.sources[index], self.targets[index]

    def lengths(self) -> list[int]:
        """Return each example's length, ``max(len(source), len(target))``, for batching."""
        return [max(len(s), len(t)) for s, t in zip(self.sources, self.targets, strict=True)]


def collate_pairs(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of ``(source_ids, target_ids)`` into two batch tensors.

    Returns:
        ``(source, target)``: int64 tensors of shape ``(B, S)`` and ``(B, T)`` padded at the end
        with ``pad_id`` to the longest sequence of each side.
    """
    if not batch:
        raise ValueError("collate_pairs got an empty batch")
    sources = torch.nn.utils.rnn.pad_sequence(
        [s for s, _ in batch], batch_first=True, padding_value=pad_id
    )
    targets = torch.nn.utils.rnn.pad_sequence(
        [t for _, t in batch], batch_first=True, padding_value=pad_id
    )
    return sources, targets


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of similar-length examples holding at most ``max_tokens`` padded tokens each.

    Examples are sorted by length (ties broken by a seeded shuffle), cut into batches whose
    ``len(batch) * longest`` stays within ``max_tokens``, and the batch order is shuffled with
    ``seed + epoch``; so an epoch is the same on every machine and call ``set_epoch`` to vary it.
    Every example lands in exactly one batch; one longer than ``max_tokens`` gets a batch alone.

    Args:
        lengths: per-example lengths, e.g. ``ParallelTextDataset.lengths()``.
        max_tokens: the padded-token budget per batch (source or target side, whichever longer).
        shuffle: shuffle within equal lengths and the batch order; False gives length order.
        seed: base seed for the shuffles.
        max_sentences: optional cap on examples per batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        max_sentences: int | None = None,
    ) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens={max_tokens} must be positive")
        if max_sentences is not None and max_sentences <= 0:
            raise ValueError(f"max_sentences={max_sentences} must be positive")
        self.lengths = list(lengths)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.max_sentences = max_sentences
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle ``__iter__`` produces."""
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Return this epoch's batches as lists of example indices."""
        # Cached per epoch: DataLoader calls len() and iter(), and sorting 500k lengths twice
        # per epoch is wasted work.
        if self._cache is not None and self._cache[0] == self.epoch:
            return [list(b) for b in self._cache[1]]
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        order.sort(key=lambda i: self.lengths[i])  # stable: the shuffle breaks ties
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order:
            new_longest = max(longest, self.lengths[i])
            too_many = self.max_sentences is not None and len(current) >= self.max_sentences
            if current and (new_longest * (len(current) + 1) > self.max_tokens or too_many):
                batches.append(current)
                current, new_longest = [], self.lengths[i]
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        self._cache = (self.epoch, batches)
        return [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
