"""The synthetic clinical corpus: deterministic, non-IID across sites, held-out
notes apart from training notes, and a file layout that reads back."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.federation.corpus import (
    GENERAL,
    MAX_WORDS,
    MIN_WORDS,
    SPECIALTIES,
    generate_site_corpus,
    read_notes,
    write_corpus,
)

N_SITES = 4
DEPARTMENTS = [s.name for s in (*SPECIALTIES, GENERAL)]


def department(note: str) -> str:
    """The department its header (the first sentence) names."""
    header = note.split(".")[0]
    named = [d for d in DEPARTMENTS if d in header]
    assert len(named) == 1, header
    return named[0]


def vocabulary(notes: list[str]) -> set[str]:
    return {w.strip(".,;:").lower() for n in notes for w in n.split()}


@pytest.fixture(scope="module")
def corpora() -> list[tuple[list[str], list[str]]]:
    return [generate_site_corpus(i, N_SITES, 200, 40, seed=3) for i in range(N_SITES)]


def test_deterministic_for_a_seed(corpora: list[tuple[list[str], list[str]]]) -> None:
    assert generate_site_corpus(1, N_SITES, 200, 40, seed=3) == corpora[1]
    assert generate_site_corpus(1, N_SITES, 200, 40, seed=4) != corpora[1]
    # A site's data does not depend on how many sites the federation has.
    assert generate_site_corpus(1, 9, 200, 40, seed=3) == corpora[1]


def test_notes_are_short_ascii_lines(corpora: list[tuple[list[str], list[str]]]) -> None:
    for train, heldout in corpora:
        assert (len(train), len(heldout)) == (200, 40)
        for note in train + heldout:
            assert note.isascii() and "\n" not in note
            assert MIN_WORDS <= len(note.split()) <= MAX_WORDS, note
            assert " mg " in note or " mcg " in note or " units " in note or " g " in note \
                or " percent " in note  # a medication with its dose


def test_sites_differ_in_their_main_department(
        corpora: list[tuple[list[str], list[str]]]) -> None:
    top = [Counter(map(department, train)).most_common(1)[0][0] for train, _ in corpora]
    assert len(set(top)) == N_SITES
    assert GENERAL.name not in top
    # ... and share a minority of common notes.
    for train, _ in corpora:
        share = sum(department(n) == GENERAL.name for n in train) / len(train)
        assert 0.1 < share < 0.35


def test_vocabulary_overlaps_only_partly(corpora: list[tuple[list[str], list[str]]]) -> None:
    vocab = [vocabulary(train) for train, _ in corpora]
    for i in range(N_SITES):
        for j in range(i + 1, N_SITES):
            jaccard = len(vocab[i] & vocab[j]) / len(vocab[i] | vocab[j])
            assert 0.1 < jaccard < 0.7, (i, j, jaccard)


def test_heldout_is_disjoint_and_from_the_same_distribution(
        corpora: list[tuple[list[str], list[str]]]) -> None:
    for train, heldout in corpora:
        assert not set(train) & set(heldout)
        assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
        assert (Counter(map(department, heldout)).most_common(1)[0][0]
                == Counter(map(department, train)).most_common(1)[0][0])


def test_files_round_trip(tmp_path: Path) -> None:
    dirs = write_corpus(tmp_path / "corpus", 3, n_train=20, n_heldout=5, seed=1)
    assert dirs == [tmp_path / "corpus" / f"site-{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        train, heldout = generate_site_corpus(i, 3, 20, 5, seed=1)
        assert read_notes(d / "train.txt") == train
        assert read_notes(d / "heldout.txt") == heldout
        assert len((d / "train.txt").read_text().splitlines()) == 20


@pytest.mark.parametrize(("site", "n_sites", "n_train", "match"), [
    (0, 0, 10, "n_sites"),
    (0, -2, 10, "n_sites"),
    (3, 3, 10, "site_index"),
    (-1, 3, 10, "site_index"),
    (0, 3, -1, "note counts"),
])
def test_bad_arguments(site: int, n_sites: int, n_train: int, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        generate_site_corpus(site, n_sites, n_train, 5)


def test_write_corpus_refuses_no_sites(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="n_sites"):
        write_corpus(tmp_path, 0)
    assert list(tmp_path.iterdir()) == []
