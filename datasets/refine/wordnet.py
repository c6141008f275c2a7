"""WordNet synonym replacement (EDA, Wei & Zou 2019): the non-transformer text augmentation baseline.

Reads the WordNet 3.0 database files of Debian's `wordnet-base` (/usr/share/wordnet, or $WORDNET_DIR)
directly: index.<pos> gives a lemma's synsets (most frequent sense first), data.<pos> a synset's words.
A word's synonyms are the other one-word lemmas of its first sense, looked up as adjective, adverb,
verb, then noun (sentiment lives mostly in adjectives and adverbs).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

POS_ORDER = ("adj", "adv", "verb", "noun")
STOPWORDS = set("""a an the and or but if of at by for with about against between into through during before
after above below to from up down in out on off over under again further then once here there when where
why how all any both each few more most other some such no nor not only own same so than too very s t can
will just don should now is are was were be been being have has had having do does did doing i me my we our
you your he him his she her it its they them their what which who whom this that these those am 's""".split())


def wordnet_dir() -> Path:
    folder = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
    if not (folder / "data.noun").exists():
        raise FileNotFoundError(f"WordNet database not found in {folder} (no data.noun): install Debian's "
                                "wordnet-base (`sudo apt-get install wordnet-base`; `make` does it when it runs as "
                                "root) or set WORDNET_DIR to a folder with the WordNet 3.0 dict files")
    return folder


def _first_senses(index_file: Path) -> dict[str, int]:
    """lemma -> byte offset of its most frequent synset."""
    senses = {}
    with open(index_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split()
            pointer_count = int(fields[3])
            offsets = fields[4 + pointer_count + 2:]
            if offsets:
                senses[fields[0]] = int(offsets[0])
    return senses


def _synset_words(data_file: Path, offset: int) -> list[str]:
    with open(data_file, "rb") as f:  # offsets are byte offsets
        f.seek(offset)
        fields = f.readline().decode("utf-8", errors="replace").split()
    count = int(fields[3], 16)
    return [fields[4 + 2 * i].split("(")[0].lower() for i in range(count)]


@lru_cache(maxsize=4)
def _senses(folder: str) -> dict[str, dict[str, int]]:
    return {pos: _first_senses(Path(folder) / f"index.{pos}") for pos in POS_ORDER}


@lru_cache(maxsize=50_000)
def synonyms(word: str, folder: str | None = None) -> tuple[str, ...]:
    """One-word synonyms of `word` in its first sense (empty for stopwords and unknown words)."""
    word = word.lower()
    if word in STOPWORDS or not word.isalpha() or len(word) < 3:
        return ()
    folder = folder or str(wordnet_dir())
    for pos in POS_ORDER:
        offset = _senses(folder)[pos].get(word)
        if offset is not None:
            words = _synset_words(Path(folder) / f"data.{pos}", offset)
            return tuple(dict.fromkeys(w for w in words if w != word and "_" not in w and w.isalpha()))
    return ()


def replace_synonyms(text: str, fraction: float, rng: np.random.Generator) -> str:
    """`text` with about `fraction` of its words (at least one, if any has a synonym) replaced."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if synonyms(w)]
    if not candidates:
        return text
    n = max(1, round(fraction * len(words)))
    for i in rng.choice(candidates, size=min(n, len(candidates)), replace=False):
        options = synonyms(words[i])
        words[i] = options[int(rng.integers(len(options)))]
    return " ".join(words)
