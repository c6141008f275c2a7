"""The Task interface every refinement and method sees: splits, an unlabeled pool, classes, modality."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np


def update_with_inputs(h, inputs: list) -> None:
    """Feed a list of inputs (strings, or same-shaped arrays) into hash `h`, by content."""
    if inputs and isinstance(inputs[0], np.ndarray):
        h.update(np.ascontiguousarray(np.stack(inputs)).tobytes())
    else:
        h.update(json.dumps(list(inputs), ensure_ascii=False).encode())


def inputs_digest(inputs: list) -> str:
    h = hashlib.sha256()
    update_with_inputs(h, inputs)
    return h.hexdigest()


@dataclass(frozen=True)
class Split:
    x: list  # inputs: strings for text tasks, float32 arrays (H, W) or (C, H, W) in [0, 1] for images
    y: np.ndarray  # int64 class indices; -1 = no class (image-text pairs without a label column)
    labeled: bool = True  # False for the pool: its labels are hidden, only an oracle may reveal them
    captions: list | None = None  # image-text tasks: one caption string per input (None for the others)
    targets: list | None = None  # generation tasks: the completion a model should write after each prompt
    # Provenance, for reports a user can act on: the file (or dataset) the examples came from and each
    # one's 0-based data row in it. None where examples were made (generated, augmented) or merged.
    source: str | None = None
    rows: np.ndarray | None = None

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")
        if self.captions is not None:
            if len(self.captions) != len(self.x):
                raise ValueError(f"split has {len(self.x)} inputs but {len(self.captions)} captions")
            bad = next((i for i, c in enumerate(self.captions) if not isinstance(c, str)), None)
            if bad is not None:
                raise ValueError(f"split caption {bad} is {self.captions[bad]!r}: expected a string")
        if self.targets is not None and len(self.targets) != len(self.x):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.targets)} targets")
        if self.rows is not None and len(self.rows) != len(self.x):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.rows)} source rows")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, indices) -> "Split":
        indices = np.asarray(indices, dtype=np.int64)
        captions = None if self.captions is None else [self.captions[i] for i in indices]
        rows = None if self.rows is None else self.rows[indices]
        targets = None if self.targets is None else [self.targets[i] for i in indices]
        return replace(self, x=[self.x[i] for i in indices], y=self.y[indices], captions=captions, rows=rows, targets=targets)

    def origin(self, position: int) -> tuple[str | None, int | None]:
        """(source, 1-based data row) of one example, or (None, None) where it has no provenance."""
        if self.rows is None:
            return None, None
        return self.source, int(self.rows[position]) + 1

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.y[self.y >= 0], minlength=num_classes).tolist()


@dataclass(frozen=True)
class Task:
    name: str
    modality: str  # "text" | "image" | "image-text" | "generation" (prompt -> completion, for causal LMs)
    classes: list[str]
    train: Split
    validation: Split
    test: Split
    pool: Split
    meta: dict = field(default_factory=dict)
    # examples the source holds before the splits are carved (None: not known): what `sizes` leaves unused could
    # enlarge the test set (`tunebench plan` says what that would buy)
    source_examples: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "validation": self.validation, "test": self.test, "pool": self.pool}

    def data_hash(self) -> str:
        """Content hash of all splits and the class list (keys refinement caches and records)."""
        h = hashlib.sha256(json.dumps([self.name, self.modality, self.classes]).encode())
        for split_name, split in self.splits().items():
            h.update(split_name.encode())
            update_with_inputs(h, split.x)
            h.update(np.ascontiguousarray(split.y, dtype=np.int64).tobytes())
            if split.captions is not None:  # only then: the hashes of caption-less tasks stay as they were
                h.update(b"captions")
                update_with_inputs(h, split.captions)
            if split.targets is not None:
                h.update(b"targets")
                update_with_inputs(h, split.targets)
        return h.hexdigest()[:16]

    def majority_baseline(self) -> float:
        """Test accuracy of always predicting the most frequent training class (generation tasks without
        classes: of always writing the most frequent training answer)."""
        if self.meta.get("answers") == "gsm8k":
            from tunebench.datasets.generation import final_answer, most_frequent_answer_accuracy

            return most_frequent_answer_accuracy([final_answer(t) for t in self.train.targets],
                                                 [final_answer(t) for t in self.test.targets])
        if not self.num_classes:  # caption pairs without classes
            return float("nan")
        majority = int(np.bincount(self.train.y, minlength=self.num_classes).argmax())
        return float(np.mean(self.test.y == majority)) if len(self.test) else float("nan")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "modality": self.modality,
            "classes": self.classes,
            "sizes": {k: len(v) for k, v in self.splits().items()},
            "train_class_counts": self.train.class_counts(self.num_classes),
            "majority_baseline_test_acc": self.majority_baseline(),
            "data_hash": self.data_hash(),
            **({"source_examples": self.source_examples} if self.source_examples is not None else {}),
            **self.meta,
        }

    def with_train(self, train: Split) -> "Task":
        return replace(self, train=train)
