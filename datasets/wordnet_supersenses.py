"""Built-in offline text task `wordnet_supersenses`: a WordNet gloss -> its supersense (lexicographer file).

WordNet 3.0 files every synset in one of 45 lexicographer files ("supersenses": noun.animal,
verb.motion, adj.all, ...). The input is the synset's gloss (definition and usage examples, the text
after `| ` in data.<pos>), the label its lexicographer file number (the 2nd field of the line): 117,659
glosses in 45 classes, from 42 (noun.motive) to 14,435 (adj.all). Many classes make it the text
setting for N-way K-shot learning (methods/fewshot.py).

Read from Debian's `wordnet-base` (/usr/share/wordnet, or data.root, or $WORDNET_DIR). Knobs
(conf/data/wordnet_supersenses.yaml): data.max_per_class (glosses sampled per class, seeded by
data.split_seed, so the classes are nearly balanced; null: all), data.*_size (stratified split),
data.max_length (tokens).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import TASKS
from .builtin import split_task
from .task import Task

# The standard lexicographer file names, by number (WordNet's lexnames file, which Debian does not ship).
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def wordnet_folder(root=None) -> Path:
    folder = Path(str(root) if root else os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
    missing = [name for name in DATA_FILES if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"data=wordnet_supersenses: WordNet 3.0 database files {missing} not found in {folder}: install the Debian "
            "package wordnet-base (`sudo apt-get install wordnet-base`) or set data.root (or $WORDNET_DIR) to a folder "
            "with the WordNet dict files data.noun / data.verb / data.adj / data.adv")
    return folder


def parse_line(line: str) -> tuple[str, int] | None:
    """(gloss, lexicographer file number) of one data.<pos> line; None for the licence header."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields = line.split(" ", 2)
    return line.split(" | ", 1)[1].strip(), int(fields[1])


@lru_cache(maxsize=2)
def read_glosses(folder: str) -> tuple[tuple[str, ...], np.ndarray]:
    """All glosses and their supersense numbers, in file order (noun, verb, adj, adv)."""
    glosses, labels = [], []
    for name in DATA_FILES:
        with open(Path(folder) / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                parsed = parse_line(line)
                if parsed is not None:
                    glosses.append(parsed[0])
                    labels.append(parsed[1])
    labels = np.asarray(labels, dtype=np.int64)
    if labels.max() >= len(LEXNAMES):
        raise ValueError(f"WordNet in {folder}: lexicographer file number {labels.max()} beyond the 45 known ones")
    return tuple(glosses), labels


def per_class_sample(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most `max_per_class` examples of each class (seeded), in their original order."""
    if max_per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:int(max_per_class)] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


@TASKS.register("wordnet_supersenses")
def wordnet_supersenses(cfg) -> Task:
    folder = wordnet_folder(cfg.get("root"))
    glosses, labels = read_glosses(str(folder))
    keep = per_class_sample(labels, cfg.get("max_per_class"), int(cfg.split_seed))
    meta = {"max_length": int(cfg.max_length), "source": f"WordNet 3.0 in {folder} (Debian wordnet-base)",
            "description": "WordNet glosses (dictionary definitions)"}
    return split_task("wordnet_supersenses", [glosses[i] for i in keep], labels[keep], LEXNAMES, cfg, meta=meta)
