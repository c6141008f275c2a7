"""HuggingFace datasets by name (`data=hf data.path=rotten_tomatoes`) through `datasets.load_dataset`.

The same call loads a local folder of csv / json / parquet files, which is how it is tested offline.
"""
from __future__ import annotations

from . import TASKS
from .files import DataError, assemble_task, frame_to_split, infer_classes
from .task import Task


def _class_names(dataset, label_column: str) -> list[str] | None:
    feature = dataset.features.get(label_column)
    return list(feature.names) if hasattr(feature, "names") else None


@TASKS.register("hf")
def hub_dataset(cfg) -> Task:
    import datasets as hf_datasets  # HuggingFace datasets (our package is tunebench.datasets)

    if not cfg.get("path"):
        raise DataError("data.path: give a hub dataset name or a local folder, e.g. data=hf data.path=imdb")
    try:
        loaded = hf_datasets.load_dataset(str(cfg.path), cfg.get("config_name"), revision=cfg.get("revision"))
    except Exception as e:
        raise DataError(f"data.path: cannot load dataset '{cfg.path}': {type(e).__name__}: {e}") from e
    split_names = {"train": cfg.train_split, "validation": cfg.validation_split, "test": cfg.test_split}
    if split_names["train"] not in loaded:
        raise DataError(f"data.train_split: dataset '{cfg.path}' has no split '{cfg.train_split}'; it has {list(loaded)}")
    train_ds = loaded[split_names["train"]]
    frames = {k: loaded[v].to_pandas() for k, v in split_names.items() if v in loaded}
    classes = (
        [str(c) for c in cfg.classes] if cfg.get("classes")
        else _class_names(train_ds, cfg.label_column) or infer_classes(frames["train"], cfg.label_column)
    )
    splits = {
        k: frame_to_split(f, f"{cfg.path}[{split_names[k]}]", cfg.text_column, cfg.label_column, classes)
        for k, f in frames.items()
    }
    name = cfg.get("task_name") or str(cfg.path).rstrip("/").split("/")[-1]
    return assemble_task(name, splits, classes, cfg, {"source": f"hf:{cfg.path}"})
