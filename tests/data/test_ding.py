"""The Ding parser on real entries copied from freedict-eng-deu 1.9-fd1, and the corpus build."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sparsebench.data.ding import (
    DING_DICT_PATH,
    build_ding_corpus,
    clean_text,
    deduplicate,
    parse_examples,
    parse_headwords,
    split_of,
)

# Verbatim entries from /usr/share/dictd/freedict-eng-deu.dict.dz (lines 155-162, 548-556,
# 35222-35227, 1969855-1969858 of the uncompressed file). "\x85" is a stray C1 character that
# the real file holds where Windows-1252 meant "…".
ENTRIES = [
    'Eel /ˈiːl/\n'
    'Aal <masc> [cook.]\n'
    '         Note: auf der Speisekarte\n'
    '      "Eel au bleu"  - Aal blau, blauer Aal\n'
    '      "Eel steamed and served with Butter"  - Aal blau, blauer Aal\n'
    '      "Boiled Eel served with Parsley Sauce"  - Aal grün, grüner Aal\n'
    ' see: {Jellied Eel}\n\n',
    'modification /mˌɒdɪfɪkˈeɪʃən/\n'
    'Abänderung <fem>, Modifikation <fem>, Modifizierung <fem>, Änderung <fem> [teilweise]\n'
    '         Note: an etw.\n'
    '      "I\'ve made one or two modifications to the original design."  - Ich habe am '
    'ursprünglichen Entwurf ein paar Änderungen vorgenommen.\n'
    ' see: {modifications}\n\n'
    '         Note: to sth.\n',
    'modifications /mˌɒdɪfɪkˈeɪʃənz/\n'
    'Abänderungen <pl>, Modifikationen <pl>, Modifizierungen <pl>, Änderungen <pl>\n'
    '      "I\'ve made one or two modifications to the original design."  - Ich habe am '
    'ursprünglichen Entwurf ein paar Änderungen vorgenommen.\n'
    ' see: {modification}\n\n',
    'AIDS /ˈeɪdz/\n'
    'AIDS <neut> [med.]\n'
    '         Note: erworbene Immunschwächekrankheit\n'
    '      "AIDS means "Acquired Immune Deficiency Syndrome"."  - AIDS bedeutet „erworbenes '
    'Immundefektsyndrom“.\n'
    '         Note: acquired immune deficiency syndrome\n',
    'number of cycles /nˈʌmbəɹ ɒv sˈaɪkəlz/\n'
    'Zyklenzahl <fem>\n'
    '      "with a number of cycles greater than \x85"  - bei einer Zyklenzahl von über \x85\n'
    '   Synonym: {cycle number}\n\n',
    'the nuts and bolts /ðə nˈʌts and bˈəʊlts/\n [coll.] das A und O [ugs.]\n',
]

EXPECTED_EXAMPLES = [
    ("Eel au bleu", "Aal blau, blauer Aal"),
    ("Eel steamed and served with Butter", "Aal blau, blauer Aal"),
    ("Boiled Eel served with Parsley Sauce", "Aal grün, grüner Aal"),
    (
        "I've made one or two modifications to the original design.",
        "Ich habe am ursprünglichen Entwurf ein paar Änderungen vorgenommen.",
    ),
    (
        "I've made one or two modifications to the original design.",
        "Ich habe am ursprünglichen Entwurf ein paar Änderungen vorgenommen.",
    ),
    (
        'AIDS means "Acquired Immune Deficiency Syndrome".',
        "AIDS bedeutet „erworbenes Immundefektsyndrom“.",
    ),
    ("with a number of cycles greater than …", "bei einer Zyklenzahl von über …"),
]

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if n == 0:
            return out


def write_mini_dict(root: Path) -> Path:
    """A dictzip-like .dict.dz plus a dictd .index over ENTRIES (offsets in bytes)."""
    header = "00-database-info\nThis is a test dictionary.\n"
    data, index, offset = header.encode(), [], len(header.encode())
    for entry in ENTRIES:
        raw = entry.encode()
        headword = entry.split(" /")[0].lower()
        index.append(f"{headword}\t{b64(offset)}\t{b64(len(raw))}")
        data += raw
        offset += len(raw)
    index.append(f"00-database-info\t{b64(0)}\t{b64(len(header.encode()))}")
    dict_path = root / "freedict-eng-deu.dict.dz"
    dict_path.write_bytes(gzip.compress(data))
    (root / "freedict-eng-deu.index").write_text("\n".join(sorted(index)) + "\n")
    return dict_path


def test_parse_examples_on_real_entries() -> None:
    pairs, malformed = parse_examples("".join(ENTRIES))
    assert pairs == EXPECTED_EXAMPLES
    assert malformed == 0


def test_malformed_example_line_is_counted() -> None:
    pairs, malformed = parse_examples('      "no separator here"\n      "ok"  - gut\n')
    assert pairs == [("ok", "gut")] and malformed == 1


def test_clean_and_deduplicate() -> None:
    assert clean_text("  a\t b \u00a0 c ") == "a b c"
    assert clean_text("u\u0308ber") == "über"  # NFC: u + combining diaeresis -> ü
    assert deduplicate([("a", "1"), ("b", "2"), ("a", "1"), ("a", "3")]) == [
        ("a", "1"),
        ("b", "2"),
        ("a", "3"),
    ]


def test_parse_headwords(tmp_path: Path) -> None:
    dict_path = write_mini_dict(tmp_path)
    data = gzip.decompress(dict_path.read_bytes())
    pairs = parse_headwords(data, (tmp_path / "freedict-eng-deu.index").read_text())
    assert pairs == [
        ("Eel", "Aal"),
        ("modification", "Abänderung"),
        ("modifications", "Abänderungen"),
        ("AIDS", "AIDS"),
        ("number of cycles", "Zyklenzahl"),
        ("the nuts and bolts", "das A und O"),
    ]


def test_split_is_deterministic_and_by_english() -> None:
    sentences = [f"sentence number {i}" for i in range(2000)]
    first = [split_of(s) for s in sentences]
    assert first == [split_of(s) for s in sentences]
    shares = {name: first.count(name) / len(first) for name in ("train", "valid", "test")}
    assert shares["train"] == pytest.approx(0.90, abs=0.03)
    assert shares["valid"] == pytest.approx(0.05, abs=0.02)
    assert shares["test"] == pytest.approx(0.05, abs=0.02)
    assert split_of("x", valid_fraction=0.0, test_fraction=0.0) == "train"


def test_build_corpus_is_disjoint_atomic_and_cached(tmp_path: Path) -> None:
    dict_path = write_mini_dict(tmp_path)
    out = tmp_path / "out"
    # Large valid/test shares so the 6 distinct English sentences spread over all splits.
    corpus = build_ding_corpus(out, dict_path, valid_fraction=0.3, test_fraction=0.3)
    assert corpus.stats["example_lines"] == 7 and corpus.stats["unique_pairs"] == 6
    assert sum(corpus.counts.values()) == 6
    english: dict[str, set[str]] = {}
    for split in ("train", "valid", "test"):
        en_path, de_path = corpus.files(split)
        en = en_path.read_text(encoding="utf-8").splitlines()
        de = de_path.read_text(encoding="utf-8").splitlines()
        assert len(en) == len(de) == corpus.counts[split]
        english[split] = set(en)
        assert all(split_of(s, 0.3, 0.3) == split for s in en)
    assert not english["train"] & english["valid"]
    assert not english["train"] & english["test"]
    assert not english["valid"] & english["test"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == corpus.counts
    # A second call with the same settings reuses the files untouched.
    mtime = (out / "train.en").stat().st_mtime_ns
    again = build_ding_corpus(out, dict_path, valid_fraction=0.3, test_fraction=0.3)
    assert again.counts == corpus.counts and (out / "train.en").stat().st_mtime_ns == mtime
    # Other settings rebuild; headwords add 6 pairs.
    with_heads = build_ding_corpus(
        out, dict_path, include_headwords=True, valid_fraction=0.3, test_fraction=0.3
    )
    assert with_heads.stats["headword_pairs"] == 6 and with_heads.stats["unique_pairs"] == 12


def test_default_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dict_path = write_mini_dict(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "cache"))
    corpus = build_ding_corpus(dict_path=dict_path)
    assert corpus.directory == tmp_path / "cache" / "ding"
    assert (tmp_path / "cache" / "ding" / "train.en").is_file()


def test_missing_dictionary_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dict-freedict-eng-deu"):
        build_ding_corpus(tmp_path, tmp_path / "missing.dict.dz")
    with pytest.raises(ValueError, match="leaves no training data"):
        build_ding_corpus(tmp_path, valid_fraction=0.5, test_fraction=0.5)


@pytest.mark.skipif(
    not DING_DICT_PATH.is_file(),
    reason="Ding dictionary not installed (apt-get install dict-freedict-eng-deu)",
)
def test_real_ding_corpus(tmp_path: Path) -> None:
    corpus = build_ding_corpus(tmp_path)
    # The counts documented in sparsebench/data/ding.py for the Debian 1.9-fd1 file.
    assert corpus.stats["example_lines"] == 63306
    assert corpus.stats["unique_pairs"] == 55241
    assert corpus.counts == {"train": 49721, "valid": 2786, "test": 2734}
