"""Built-in offline image tasks.

- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): tiny, for fast
  tests and for refinements that are natural on images.
"""
from __future__ import annotations

import numpy as np

from . import TASKS
from .builtin import split_task
from .task import Task

DIGIT_CLASSES = [str(d) for d in range(10)]


@TASKS.register("digits")
def digits(cfg) -> Task:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [img.astype(np.float32) / 16.0 for img in bunch.images]  # (8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    meta = {"image_size": [8, 8], "channels": 1, "source": "scikit-learn load_digits"}
    return split_task("digits", images, labels, DIGIT_CLASSES, cfg, meta=meta, modality="image")
