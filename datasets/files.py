"""Text classification tasks from local CSV / JSONL / parquet files (`data=files`).

Missing splits are carved from train (stratified, `data.split_seed`). Every bad input fails with a
message naming the file, the column and the row.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import TASKS
from .splitting import TooFewToStratify, stratified_split
from .task import Split, Task

READERS = {
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".parquet": pd.read_parquet,
}


class DataError(ValueError):
    """Bad task input; the message names the file / key / row."""


def _row_name(source: str, i: int) -> str:
    # CSV has a header line, so data row i (0-based) is on line i + 2; JSONL row i is on line i + 1.
    if source.endswith((".csv", ".tsv")):
        return f"row {i + 1} (line {i + 2})"
    if source.endswith((".jsonl", ".json")):
        return f"row {i + 1} (line {i + 1})"
    return f"row {i + 1}"


def read_table(path_value, key: str) -> pd.DataFrame:
    path = Path(str(path_value)).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file '{path_value}' does not exist (looked for {path.resolve()})")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{key}: cannot read '{path}': expected one of {', '.join(sorted(READERS))}")
    try:
        return reader(path)
    except Exception as e:  # parser errors differ per format; name the file either way
        raise DataError(f"{key}: cannot parse '{path}' as {path.suffix[1:]}: {e}") from e


def _label_key(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def infer_classes(frame: pd.DataFrame, label_column: str) -> list[str]:
    keys = sorted({_label_key(v) for v in frame[label_column]})
    return sorted(keys, key=int) if all(k.lstrip("-").isdigit() for k in keys) else keys


def label_index(raw, index_of: dict[str, int], classes: list[str], where: str, column: str) -> int:
    """A label is a class name, or a 0-based index into the declared classes; `where` names file and row."""
    key = _label_key(raw)
    if not key:
        raise DataError(f"{where}: column '{column}' is empty: expected a class label")
    if key in index_of:
        return index_of[key]
    if key.isdigit() and int(key) < len(classes):
        return int(key)
    raise DataError(f"{where}: label {raw!r} in column '{column}' is not one of the declared classes {classes} "
                    f"(nor an index 0..{len(classes) - 1})")


def frame_to_split(frame: pd.DataFrame, source: str, text_column: str, label_column: str, classes: list[str]) -> Split:
    """Validate columns, texts and labels; labels may be class names or indices into `classes`."""
    for column in (text_column, label_column):
        if column not in frame.columns:
            raise DataError(f"{source}: no column '{column}'; columns are {list(frame.columns)}")
    index_of = {name: i for i, name in enumerate(classes)}
    texts, labels = [], []
    for i, (text, raw_label) in enumerate(zip(frame[text_column], frame[label_column])):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}, {_row_name(source, i)}: column '{text_column}' is empty or not text ({text!r})")
        texts.append(text)
        labels.append(label_index(raw_label, index_of, classes, f"{source}, {_row_name(source, i)}", label_column))
    return Split(texts, np.asarray(labels, dtype=np.int64), source=source, rows=np.arange(len(texts)))


def assemble_task(name: str, splits: dict[str, Split | None], classes: list[str], cfg, meta: dict,
                  modality: str = "text") -> Task:
    """Carve missing validation / test splits and the pool from train, stratified and seeded."""
    train = splits["train"]
    source = train.source or str(meta.get("source") or "the training data")
    column = cfg.get("label_column") or "label"
    if len(train) == 0:
        raise DataError(f"{source}: no data rows (a header only?); expected labelled rows in column '{column}'")
    carve = {k: cfg.get(f"{k}_size") for k in ("test", "validation") if splits.get(k) is None}
    carve["pool"] = cfg.get("pool_size") or 0
    try:
        parts = stratified_split(train.y, {**carve, "train": cfg.get("train_size")}, seed=int(cfg.get("split_seed", 0)))
    except TooFewToStratify as e:
        raise DataError(f"{source}: class '{classes[e.label]}' in column '{column}' has {e.count} example(s), too few "
                        f"to carve {e.what}={e.size} stratified (at least 2 per class): add examples, drop the "
                        f"class, or give data.validation / data.test files") from None
    except ValueError as e:
        raise DataError(f"{source} ({len(train)} rows): {e}") from None
    made = {k: train.subset(idx) for k, idx in parts.items()}
    given = {k: splits[k] for k in ("validation", "test") if splits.get(k) is not None}
    task = Task(
        name=name,
        modality=modality,
        classes=list(classes),
        train=made["train"],
        validation=given.get("validation", made.get("validation")),
        test=given.get("test", made.get("test")),
        pool=replace(made["pool"], labeled=False),  # keeps captions of image-text pairs
        meta=meta,
    )
    for part in ("train", "validation", "test"):
        if len(getattr(task, part)) == 0:
            if part in given:
                raise DataError(f"{given[part].source or source}: no data rows (a header only?); expected the {part} split's examples")
            raise DataError(f"{source} ({len(train)} rows): the {part} split is empty (carved from train by "
                            f"data.{part}_size={cfg.get(part + '_size')}); expected at least one example: add rows, "
                            f"raise data.{part}_size, or give data.{part} as a file")
    return task


@TASKS.register("files")
def local_files(cfg) -> Task:
    if not cfg.get("train"):
        raise DataError("data.train: give the training file, e.g. data=files data.train=path/to/train.csv")
    frames = {k: read_table(cfg[k], f"data.{k}") for k in ("train", "validation", "test") if cfg.get(k)}
    classes = [str(c) for c in cfg.classes] if cfg.get("classes") else infer_classes(frames["train"], cfg.label_column)
    splits = {k: frame_to_split(f, str(cfg[k]), cfg.text_column, cfg.label_column, classes) for k, f in frames.items()}
    name = cfg.get("task_name") or Path(str(cfg.train)).stem
    return assemble_task(name, splits, classes, cfg, {"max_length": int(cfg.max_length), "source": {k: str(cfg[k]) for k in frames}})
