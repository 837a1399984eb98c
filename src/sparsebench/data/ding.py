"""An English→German parallel corpus built from the Ding dictionary (Debian dict-freedict-eng-deu).

Our CPU-size stand-in for WMT14 EN-DE: real sentences and phrases that nobody here wrote.

Source format (``/usr/share/dictd/freedict-eng-deu.dict.dz``, dictzip = gzip-compatible, FreeDict
edition 1.9-fd1). Each entry is a headword line ``english /IPA/``, one line of German
translations with annotations (``<masc>``, ``[coll.]``), then optional ``Note:`` lines, example
lines, ``Synonyms:`` and ``see:`` lines. An example line is indented six spaces::

          "the Aachen Cathedral"  - der Aachener Dom

English in double quotes (it may itself contain quotes: ``"The terms "black" and "white" are
opposites."``), two spaces, ``- ``, German. An entry may hold several example lines, and the same
example is repeated under every inflected headword (``modification`` and ``modifications``), hence
the duplicates. In this edition no example line is wrapped: every line that starts with six spaces
and a quote carries the ``"  - `` separator on the same line (the longest is 4,350 characters), so
the parser reads one line per example and counts (and skips) any line that does not match.
The optional headword pairs are the English headword (IPA removed) and the first German
alternative of its translation line (annotations removed); entries are located through the
``.index`` file, whose offsets are byte offsets into the uncompressed text.

Cleaning: Unicode NFC, whitespace runs collapsed to one space, ends stripped; pairs with an empty
side are dropped. Deduplication is on the exact (English, German) pair, keeping first occurrence.
Splits are decided by a SHA-256 hash of the *English* side alone, so one English sentence never
appears in two splits even when it has several German translations.

Counts from the Debian file (1.9-fd1, valid/test fractions 0.05/0.05, measured by this module):

    examples only (the default)
        example lines in the file        63,306   (0 malformed)
        pairs after deduplication        55,241   (54,772 distinct English sentences)
        train / valid / test             49,721 / 2,786 / 2,734
    with headword pairs (include_headwords=True)
        headword pairs                  460,285
        pairs after deduplication       510,957   (425,353 distinct English sides)
        train / valid / test            459,433 / 25,785 / 25,739

The corpus is written in the WMT layout (``train.en``, ``train.de``, ``valid.*``, ``test.*``) plus
``manifest.json`` into ``$SPARSEBENCH_DATA/ding`` (default ``~/.cache/sparsebench/ding``); a build
whose manifest matches the source file and settings is reused instead of rebuilt.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sparsebench.data._files import atomic_write_text, data_home

__all__ = [
    "DING_DICT_PATH",
    "DING_INDEX_PATH",
    "DingCorpus",
    "build_ding_corpus",
    "clean_text",
    "deduplicate",
    "parse_examples",
    "parse_headwords",
    "split_of",
]

DING_DICT_PATH = Path("/usr/share/dictd/freedict-eng-deu.dict.dz")
DING_INDEX_PATH = Path("/usr/share/dictd/freedict-eng-deu.index")
SPLITS = ("train", "valid", "test")
# Bump when parsing or cleaning changes, so cached corpora are rebuilt.
_FORMAT_VERSION = 1

_INSTALL_HINT = (
    "install it with `apt-get install dict-freedict-eng-deu` or pass dict_path=<freedict-eng-deu"
    ".dict.dz>"
)

# Six-space indent, quoted English (greedy: it may contain quotes), two spaces, "- ", German.
_EXAMPLE = re.compile(r'^ {6}"(?P<en>.*)" {2}- (?P<de>.*)$')
_IPA = re.compile(r"\s+/[^/]*/\s*$")
_ANNOTATION = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}|/[^/]*/")


def _cp1252_repairs() -> dict[int, str]:
    # A few Ding lines hold C1 control characters (U+0085, U+0096) where the Windows-1252 bytes
    # for "…" and "–" were read as Latin-1; map every C1 code point back through cp1252.
    table: dict[int, str] = {}
    for code in range(0x80, 0xA0):
        try:
            table[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            continue
    return table


_CP1252_REPAIRS = _cp1252_repairs()


def clean_text(text: str) -> str:
    """Return ``text`` with cp1252 mojibake repaired, NFC-normalised, whitespace runs collapsed
    to one space and the ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text.translate(_CP1252_REPAIRS)).split())


def parse_examples(text: str) -> tuple[list[tuple[str, str]], int]:
    """Extract the example pairs from the dictionary text.

    Args:
        text: the uncompressed ``.dict`` text (or any slice of it).

    Returns:
        ``(pairs, malformed)``: the cleaned ``(english, german)`` pairs in file order, duplicates
        kept, and the number of example-looking lines (six spaces then a quote) that did not
        match the format or had an empty side after cleaning.
    """
    pairs: list[tuple[str, str]] = []
    malformed = 0
    # split("\n"), not splitlines(): the latter also breaks at U+0085, which occurs mid-line.
    for line in text.split("\n"):
        if not line.startswith('      "'):
            continue
        match = _EXAMPLE.match(line)
        if match is None:
            malformed += 1
            continue
        en, de = clean_text(match["en"]), clean_text(match["de"])
        if not en or not de:
            malformed += 1
            continue
        pairs.append((en, de))
    return pairs, malformed


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def _b64_number(token: str) -> int:
    """Decode a dictd index number (base 64, most significant digit first)."""
    value = 0
    for ch in token:
        value = value * 64 + _B64_VALUE[ch]
    return value


def parse_headwords(data: bytes, index_text: str) -> list[tuple[str, str]]:
    """Extract (English headword, first German translation) pairs.

    Args:
        data: the uncompressed ``.dict`` bytes.
        index_text: the ``.index`` file's text (``headword<TAB>offset<TAB>length`` lines).

    Returns:
        Cleaned pairs in entry order, one per distinct entry; the dictionary's own information
        entries (``00-database-*``) are skipped.
    """
    spans: set[tuple[int, int]] = set()
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith(("00-database", "00database")):
            continue
        spans.add((_b64_number(parts[1]), _b64_number(parts[2])))
    pairs: list[tuple[str, str]] = []
    for offset, length in sorted(spans):
        lines = data[offset : offset + length].decode("utf-8", errors="replace").split("\n")
        if len(lines) < 2 or lines[0].startswith("00-database") or not lines[0].strip():
            continue
        english = clean_text(_IPA.sub("", lines[0]))
        german_line = _ANNOTATION.sub(" ", lines[1])
        german = clean_text(re.split(r"[,;]", german_line)[0])
        if english and german:
            pairs.append((english, german))
    return pairs


def deduplicate(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return ``pairs`` without exact repeats, keeping each pair's first occurrence in order."""
    return list(dict.fromkeys(pairs))


def split_of(english: str, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Return ``"test"``, ``"valid"`` or ``"train"`` for an English sentence.

    The decision is a pure function of the sentence (SHA-256 mapped to [0, 1)), so it is the same
    on every machine and Python version (unlike ``hash()``), and every translation of one English
    sentence lands in the same split.
    """
    digest = hashlib.sha256(english.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


@dataclass(frozen=True)
class DingCorpus:
    """A built Ding corpus: where its files are and how many pairs each holds."""

    directory: Path
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def files(self, split: str) -> tuple[Path, Path]:
        """Return the ``(english, german)`` file paths of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; allowed: {list(SPLITS)}")
        return self.directory / f"{split}.en", self.directory / f"{split}.de"


def _source_fingerprint(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build_ding_corpus(
    out_dir: str | Path | None = None,
    dict_path: str | Path = DING_DICT_PATH,
    index_path: str | Path | None = None,
    include_headwords: bool = False,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    force: bool = False,
) -> DingCorpus:
    """Build (or reuse) the Ding English→German corpus in the WMT layout.

    Args:
        out_dir: output directory; default ``data_home()/"ding"`` (``$SPARSEBENCH_DATA`` or
            ``~/.cache/sparsebench``), with ``-headwords`` appended when ``include_headwords``.
        dict_path: the ``.dict.dz`` (or plain ``.dict``) file.
        index_path: the ``.index`` file (needed only for headwords); default beside ``dict_path``.
        include_headwords: add headword/translation pairs to the example pairs.
        valid_fraction, test_fraction: expected shares of *English sentences* per split.
        force: rebuild even if an up-to-date build exists.

    Returns:
        A ``DingCorpus`` with the directory, per-split pair counts and build statistics
        (``example_lines``, ``malformed_lines``, ``headword_pairs``, ``pairs``, ``unique_pairs``,
        ``unique_english``).

    Raises:
        FileNotFoundError: the dictionary is missing (one sentence on what to install).
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(
            f"valid_fraction={valid_fraction}, test_fraction={test_fraction} must be in [0, 1)"
        )
    if valid_fraction + test_fraction >= 1:
        raise ValueError(
            f"valid_fraction + test_fraction = {valid_fraction + test_fraction} leaves no training "
            "data; it must be below 1"
        )
    dict_path = Path(dict_path)
    if not dict_path.is_file():
        raise FileNotFoundError(f"Ding dictionary not found at {dict_path}; {_INSTALL_HINT}.")
    if index_path is None:
        index_path = dict_path.with_name(dict_path.name.removesuffix(".dz").removesuffix(".dict"))
        index_path = index_path.with_name(index_path.name + ".index")
    index_path = Path(index_path)
    if include_headwords and not index_path.is_file():
        raise FileNotFoundError(
            f"Ding index not found at {index_path}; install it with "
            "`apt-get install dict-freedict-eng-deu` or pass index_path=<freedict-eng-deu.index>."
        )
    if out_dir is None:
        out_dir = data_home() / ("ding-headwords" if include_headwords else "ding")
    out_dir = Path(out_dir)
    settings = {
        "format_version": _FORMAT_VERSION,
        "source": _source_fingerprint(dict_path),
        "include_headwords": include_headwords,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
    }
    manifest_path = out_dir / "manifest.json"
    if not force and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = None
        corpus = DingCorpus(out_dir)
        complete = all(p.is_file() for s in SPLITS for p in corpus.files(s))
        if manifest and manifest.get("settings") == settings and complete:
            return DingCorpus(out_dir, dict(manifest["counts"]), dict(manifest["stats"]))

    with open(dict_path, "rb") as fh:
        is_gzip = fh.read(2) == b"\x1f\x8b"
    if is_gzip:
        with gzip.open(dict_path, "rb") as fh:
            data = fh.read()
    else:
        data = dict_path.read_bytes()
    text = data.decode("utf-8")
    pairs, malformed = parse_examples(text)
    stats = {"example_lines": len(pairs) + malformed, "malformed_lines": malformed}
    if include_headwords:
        headwords = parse_headwords(data, index_path.read_text(encoding="utf-8"))
        stats["headword_pairs"] = len(headwords)
        pairs = pairs + headwords
    unique = deduplicate(pairs)
    stats.update(
        pairs=len(pairs), unique_pairs=len(unique), unique_english=len({en for en, _ in unique})
    )
    by_split: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for en, de in unique:
        by_split[split_of(en, valid_fraction, test_fraction)].append((en, de))
    counts = {s: len(by_split[s]) for s in SPLITS}
    corpus = DingCorpus(out_dir, counts, stats)
    for split in SPLITS:
        en_path, de_path = corpus.files(split)
        atomic_write_text(en_path, "".join(en + "\n" for en, _ in by_split[split]))
        atomic_write_text(de_path, "".join(de + "\n" for _, de in by_split[split]))
    # The manifest goes last: its presence (with matching settings) marks a finished build.
    manifest = {"settings": settings, "counts": counts, "stats": stats}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return corpus


