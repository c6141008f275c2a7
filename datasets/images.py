"""Built-in offline image tasks.

- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): tiny, for fast
  tests and for refinements that are natural on images. digits_holdout: the same images, raw 0-16, split
  by scikit-learn's train_test_split as its tutorials do.
- fashion_mnist: Zalando's Fashion-MNIST (70,000 28x28 grey images, 10 classes) from the Debian
  package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or any folder of its idx files.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from . import TASKS
from .builtin import split_task
from .task import Split, Task

DIGIT_CLASSES = [str(d) for d in range(10)]


@TASKS.register("digits")
def digits(cfg) -> Task:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [img.astype(np.float32) / 16.0 for img in bunch.images]  # (8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    meta = {"image_size": [8, 8], "channels": 1, "source": "scikit-learn load_digits"}
    return split_task("digits", images, labels, DIGIT_CLASSES, cfg, meta=meta, modality="image")


@TASKS.register("digits_holdout")
def digits_holdout(cfg) -> Task:
    """load_digits split the way scikit-learn tutorials split it, `model_selection.train_test_split(X, y,
    test_size, random_state=split_seed)`, in that function's order; pixel values as load_digits gives them
    (0-16, not rescaled); no validation or pool part. Protocol of the Scipy Lecture Notes' classifier table."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = [img.astype(np.float32) for img in bunch.images]  # (8, 8) in [0, 16]
    labels = bunch.target.astype(np.int64)
    train_rows, test_rows = train_test_split(np.arange(len(labels)), test_size=float(cfg.test_size),
                                             random_state=int(cfg.split_seed))
    meta = {"image_size": [8, 8], "channels": 1, "source": "scikit-learn load_digits (digits_holdout)",
            "split": "train_test_split"}
    return train_test_task("digits_holdout", images, labels, DIGIT_CLASSES, train_rows, test_rows, meta)


def train_test_task(name: str, images: list, labels: np.ndarray, classes: list[str], train_rows: np.ndarray,
                    test_rows: np.ndarray, meta: dict) -> Task:
    """A task with the given train and test rows and no validation or pool part (a published protocol's own split)."""
    def part(rows: np.ndarray, labeled: bool = True) -> Split:
        return Split([images[i] for i in rows], labels[rows], labeled=labeled, source=meta["source"], rows=rows)

    empty = np.arange(0)
    return Task(name=name, modality="image", classes=list(classes), train=part(train_rows), validation=part(empty),
                test=part(test_rows), pool=part(empty, False), meta=meta)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
TRAIN_FILE_SIZE = 60_000  # train-images-idx3-ubyte: the first 60,000 of the pooled 70,000
FASHION_HELP = ("install the Debian package (`sudo apt-get install dataset-fashion-mnist`; `make` does it when it "
                "runs as root) or put the four files {files} from https://github.com/zalandoresearch/fashion-mnist "
                "in a folder and set data.root to it")


def read_idx(path: Path, offset: int) -> np.ndarray:
    """An idx file (gzipped): images after a 16-byte header, labels after an 8-byte one."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _fashion_pixels(cfg) -> tuple[list, np.ndarray, dict]:
    """All 70,000 images (the train file's 60,000, then t10k's 10,000) as float32 in [0, 1], their labels, meta."""
    root = Path(str(cfg.root))
    missing = [name for name in FASHION_FILES.values() if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST: {missing} not found in data.root={root}: "
                                + FASHION_HELP.format(files=list(FASHION_FILES.values())))
    images = np.concatenate([read_idx(root / FASHION_FILES[k], 16) for k in ("train_images", "test_images")])
    labels = np.concatenate([read_idx(root / FASHION_FILES[k], 8) for k in ("train_labels", "test_labels")])
    images = images.reshape(-1, 28, 28)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST in {root}: {len(images)} images but {len(labels)} labels")
    pixels = [img.astype(np.float32) / 255.0 for img in images]
    meta = {"image_size": [28, 28], "channels": 1, "source": f"Fashion-MNIST idx files in {root}"}
    return pixels, labels.astype(np.int64), meta


@TASKS.register("fashion_mnist")
def fashion_mnist(cfg) -> Task:
    pixels, labels, meta = _fashion_pixels(cfg)
    return split_task("fashion_mnist", pixels, labels, FASHION_CLASSES, cfg, meta=meta, modality="image")


@TASKS.register("fashion_mnist_standard")
def fashion_mnist_standard(cfg) -> Task:
    """The dataset's own split (train file / t10k file), as its authors' benchmark uses it: no validation or
    pool part (the benchmark has none); data.train_size caps the training part (its first N, file order)."""
    pixels, labels, meta = _fashion_pixels(cfg)
    n_train = TRAIN_FILE_SIZE if cfg.get("train_size") is None else min(int(cfg.train_size), TRAIN_FILE_SIZE)
    meta = {**meta, "source": f"{meta['source']} (fashion_mnist_standard)", "split": "standard"}
    return train_test_task("fashion_mnist_standard", pixels, labels, FASHION_CLASSES, np.arange(n_train),
                           np.arange(TRAIN_FILE_SIZE, len(labels)), meta)
