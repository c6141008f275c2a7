"""Tasks: the built-in splits are the documented ones; files and hub loaders validate their input."""
import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tunebench.datasets import load
from tunebench.datasets.files import DataError

CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf" / "data"


def data_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def test_rotten_tomatoes_has_the_documented_fixed_stratified_splits():
    task = load(data_cfg("rotten_tomatoes"))
    sizes = {k: len(v) for k, v in task.splits().items()}
    assert sizes == {"train": 4398, "validation": 1066, "test": 1066, "pool": 2000}
    assert sum(sizes.values()) == 8530
    for split in task.splits().values():
        counts = split.class_counts(2)
        assert abs(counts[0] - counts[1]) <= 1  # stratified: the source is 4,265 / 4,265
    texts = [set(s.x) for s in task.splits().values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts))  # disjoint
    assert not task.pool.labeled and task.train.labeled
    assert task.majority_baseline() == pytest.approx(0.5, abs=0.001)


def test_split_is_deterministic_and_independent_of_train_size():
    a = load(data_cfg("rotten_tomatoes"))
    b = load(data_cfg("rotten_tomatoes"))
    assert a.data_hash() == b.data_hash()
    small = load(data_cfg("rotten_tomatoes", train_size=500))
    assert len(small.train) == 500 and small.train.class_counts(2) == [250, 250]
    assert small.test.x == a.test.x  # same test set whatever the training size: runs stay comparable
    assert set(small.train.x) <= set(a.train.x)
    other = load(data_cfg("rotten_tomatoes", split_seed=1))
    assert other.data_hash() != a.data_hash()


def test_imdb_is_the_second_builtin_task():
    task = load(data_cfg("imdb"))
    assert {k: len(v) for k, v in task.splits().items()} == {"train": 17000, "validation": 1000, "test": 2000, "pool": 5000}
    assert task.meta["max_length"] == 256
    assert np.mean([len(t.split()) for t in task.test.x[:200]]) > 100  # long inputs


def write_rows(path, rows, fmt):
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame.to_parquet(path)


def toy_rows(n=40):
    return [{"sentence": f"example number {i} is {'good' if i % 2 else 'bad'}", "y": "pos" if i % 2 else "neg"} for i in range(n)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_local_files_load_in_every_format(tmp_path, fmt):
    path = tmp_path / f"train.{fmt}"
    write_rows(path, toy_rows(), fmt)
    task = load(data_cfg("files", train=str(path), text_column="sentence", label_column="y", classes=["neg", "pos"]))
    assert task.classes == ["neg", "pos"]
    assert len(task.train) + len(task.validation) + len(task.test) == 40
    assert len(task.test) == 8 and len(task.validation) == 4  # 20% and 10% carved from train
    assert task.name == "train"
    for split in (task.train, task.test):
        for text, label in zip(split.x, split.y):
            assert text.endswith("good" if label == 1 else "bad")


def test_files_accept_integer_labels_and_given_splits(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(30)]
    write_rows(tmp_path / "tr.csv", rows, "csv")
    write_rows(tmp_path / "te.csv", rows[:6], "csv")
    task = load(data_cfg("files", train=str(tmp_path / "tr.csv"), test=str(tmp_path / "te.csv")))
    assert task.classes == ["0", "1", "2"]
    assert task.test.y.tolist() == [0, 1, 2, 0, 1, 2]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data.train: file 'missing.csv' does not exist"):
        load(data_cfg("files", train="missing.csv"))


def test_label_outside_declared_classes_names_file_row_and_value(tmp_path):
    rows = toy_rows(10)
    rows[6]["y"] = "neutral"
    path = tmp_path / "bad.csv"
    write_rows(path, rows, "csv")
    with pytest.raises(DataError) as info:
        load(data_cfg("files", train=str(path), text_column="sentence", label_column="y", classes=["neg", "pos"]))
    message = str(info.value)
    assert str(path) in message and "row 7 (line 8)" in message and "'neutral'" in message and "['neg', 'pos']" in message


def test_missing_column_and_empty_text_are_named(tmp_path):
    path = tmp_path / "cols.jsonl"
    write_rows(path, toy_rows(10), "jsonl")
    with pytest.raises(DataError, match=r"no column 'text'; columns are \['sentence', 'y'\]"):
        load(data_cfg("files", train=str(path), label_column="y"))
    rows = toy_rows(10)
    rows[3]["sentence"] = "  "
    write_rows(path, rows, "jsonl")
    with pytest.raises(DataError, match=r"row 4 \(line 4\): column 'sentence' is empty"):
        load(data_cfg("files", train=str(path), text_column="sentence", label_column="y"))


def test_unknown_extension_is_rejected(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"expected one of .*\.csv"):
        load(data_cfg("files", train=str(path)))


def test_hf_loader_reads_a_local_dataset_folder_through_load_dataset(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_rows(folder / "train.csv", [{"text": r["sentence"], "label": r["y"]} for r in toy_rows(40)], "csv")
    write_rows(folder / "test.csv", [{"text": r["sentence"], "label": r["y"]} for r in toy_rows(10)], "csv")
    task = load(data_cfg("hf", path=str(folder)))
    assert task.name == "my_dataset"
    assert task.classes == ["neg", "pos"]
    assert len(task.test) == 10  # the folder's own test split
    assert len(task.validation) == 4  # carved from train (10%)
    assert task.meta["source"] == f"hf:{folder}"


def test_hf_loader_names_a_missing_split(tmp_path):
    folder = tmp_path / "only_test"
    folder.mkdir()
    write_rows(folder / "test.csv", [{"text": "a", "label": 0}], "csv")
    with pytest.raises(DataError, match=r"no split 'train'; it has \['test'\]"):
        load(data_cfg("hf", path=str(folder)))
