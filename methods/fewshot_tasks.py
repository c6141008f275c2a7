"""N-way K-shot tasks from a tunebench task, with learn2learn's task sampler, on disjoint class sets.

Classes: the task's classes; on image tasks each rotated copy (method.rotations, degrees, multiples of
90: exact) is a class of its own, in the Omniglot manner (digits: 10 x 4 = 40 classes). The classes are
split at random (method.class_split_seed, fixed by default so every run seed sees the same split) into
meta-test (method.meta_test_classes), meta-validation (method.meta_val_classes) and meta-train (the
rest). Examples: a meta-train class draws its examples from the task's training split (so training-split
refinements act on meta-training only), a meta-validation class from the validation split and a
meta-test class from the test split: no test example is ever seen in training, in any orientation.
A class with fewer than shots + query examples in its split is left out (recorded as `dropped`).

Tasks: learn2learn's TaskDataset over a MetaDataset of example indices, with the transforms NWays,
KShots(shots + query), LoadData, RemapLabels, ConsecutiveLabels; in each class the first `shots`
examples are the support set, the others the query set. learn2learn draws from Python's `random`;
sample_tasks seeds it for the draw and restores it, so the same seed gives the same tasks to every method.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

IMAGE_ROTATIONS = (0, 90, 180, 270)


@dataclass
class MetaSplit:
    """The examples of one side of the class split: inputs indexed by position, global class ids."""
    name: str                 # meta_train | meta_val | meta_test
    classes: list[int]        # global (expanded) class ids
    class_names: list[str]
    inputs: object            # torch.Tensor (N, C, H, W) for images, list[str] for text
    labels: np.ndarray        # global class id per example
    dropped: list[str]        # classes with too few examples for one task

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FewShotTask:
    """One N-way K-shot task: positions into a MetaSplit and labels 0..N-1."""
    support: np.ndarray
    support_y: np.ndarray
    query: np.ndarray
    query_y: np.ndarray
    classes: list[int]        # global class id of each task label


def rotations_of(cfg, modality: str) -> list[int]:
    angles = cfg.rotations
    if angles == "auto" or angles is None:
        return list(IMAGE_ROTATIONS) if modality == "image" else [0]
    angles = [int(a) for a in angles]
    if modality != "image" and angles != [0]:
        raise ValueError(f"method.rotations={angles}: rotated copies as extra classes exist for image tasks only "
                         f"(text tasks: method.rotations=auto or [0])")
    if not angles or any(a % 90 for a in angles) or len(set(a % 360 for a in angles)) != len(angles):
        raise ValueError(f"method.rotations={angles}: expected distinct multiples of 90 degrees, e.g. [0, 90, 180, 270]")
    return angles


def class_split(n_classes: int, n_test: int, n_val: int, seed: int) -> dict[str, list[int]]:
    if n_test < 1 or n_val < 0 or n_test + n_val >= n_classes:
        raise ValueError(f"method.meta_test_classes={n_test}, method.meta_val_classes={n_val}: with {n_classes} "
                         f"classes, meta-train needs at least one (test + val < {n_classes})")
    order = np.random.default_rng(seed).permutation(n_classes).tolist()
    return {"meta_test": sorted(order[:n_test]), "meta_val": sorted(order[n_test:n_test + n_val]),
            "meta_train": sorted(order[n_test + n_val:])}


def _rotate(pixels: torch.Tensor, angle: int) -> torch.Tensor:
    return torch.rot90(pixels, k=(angle // 90) % 4, dims=(-2, -1)).contiguous()


def image_tensor(split) -> torch.Tensor:
    pixels = torch.as_tensor(np.stack([np.asarray(x, dtype=np.float32) for x in split.x]))
    return pixels.unsqueeze(1) if pixels.ndim == 3 else pixels


def build_meta_split(name: str, split, modality: str, classes: list[int], angles: list[int], base_names: list[str],
                     min_examples: int) -> MetaSplit:
    """The examples of `classes` (expanded ids: base * len(angles) + rotation index) from one task split."""
    n_rot = len(angles)
    pixels = image_tensor(split) if modality == "image" and len(split) else None
    inputs, labels, kept, dropped = [], [], [], []
    for cls in classes:
        base, rot = divmod(cls, n_rot)
        rows = np.flatnonzero(split.y == base)
        label = class_name(base_names, angles, cls)
        if len(rows) < min_examples:
            dropped.append(f"{label} ({len(rows)} examples)")
            continue
        kept.append(cls)
        labels.append(np.full(len(rows), cls, dtype=np.int64))
        inputs.append(_rotate(pixels[torch.as_tensor(rows)], angles[rot]) if pixels is not None
                      else [split.x[i] for i in rows])
    if modality == "image":
        all_inputs = torch.cat(inputs) if inputs else torch.zeros(0)
    else:
        all_inputs = [x for part in inputs for x in part]
    return MetaSplit(name, kept, [class_name(base_names, angles, c) for c in kept], all_inputs,
                     np.concatenate(labels) if labels else np.zeros(0, np.int64), dropped)


def class_name(base_names: list[str], angles: list[int], cls: int) -> str:
    base, rot = divmod(cls, len(angles))
    return base_names[base] if len(angles) == 1 else f"{base_names[base]}@{angles[rot]}"


def meta_splits(task, cfg, ways: int, min_examples: int) -> dict[str, MetaSplit]:
    """meta_train / meta_val / meta_test from the task's train / validation / test splits (see the module doc)."""
    angles = rotations_of(cfg, task.modality)
    n_classes = task.num_classes * len(angles)
    seed = cfg.get("class_split_seed")
    split_of = class_split(n_classes, int(cfg.meta_test_classes), int(cfg.meta_val_classes), int(seed or 0))
    sources = {"meta_train": task.train, "meta_val": task.validation, "meta_test": task.test}
    out = {name: build_meta_split(name, sources[name], task.modality, split_of[name], angles, task.classes, min_examples)
           for name in ("meta_train", "meta_val", "meta_test")}
    for name in ("meta_test", "meta_val"):
        if split_of[name] and len(out[name].classes) < ways:
            raise ValueError(
                f"method.ways={ways}: {name} has only {len(out[name].classes)} classes with >= method.shots + "
                f"method.query = {min_examples} examples in data={task.name}'s {sources_name(name)} split "
                f"(too few: {out[name].dropped}); raise method.{name}_classes or lower ways / shots / query")
    return out


def sources_name(meta: str) -> str:
    return {"meta_train": "train", "meta_val": "validation", "meta_test": "test"}[meta]


def task_dataset(meta: MetaSplit, ways: int, shots: int, query: int):
    """learn2learn's TaskDataset over the MetaSplit's example positions."""
    import learn2learn as l2l
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels

    positions = torch.arange(len(meta))
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(positions, torch.as_tensor(meta.labels)))
    transforms = [NWays(dataset, ways), KShots(dataset, shots + query), LoadData(dataset), RemapLabels(dataset),
                  ConsecutiveLabels(dataset)]
    return l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)


def split_support_query(positions: torch.Tensor, labels: torch.Tensor, meta: MetaSplit, shots: int) -> FewShotTask:
    """The first `shots` examples of each class (labels are consecutive) are the support set."""
    positions, labels = positions.numpy(), labels.numpy().astype(np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    support = rank < shots
    classes = [int(meta.labels[positions[labels == c][0]]) for c in range(int(labels.max()) + 1)]
    return FewShotTask(positions[support], labels[support], positions[~support], labels[~support], classes)


class TaskSampler:
    """N-way K-shot tasks (+ query) from one MetaSplit, through learn2learn."""

    def __init__(self, meta: MetaSplit, ways: int, shots: int, query: int):
        if len(meta.classes) < ways:
            raise ValueError(f"method.ways={ways}: {meta.name} has only {len(meta.classes)} usable classes")
        self.meta, self.shots = meta, shots
        self.tasks = task_dataset(meta, ways, shots, query)

    def sample(self) -> FewShotTask:
        positions, labels = self.tasks.sample()
        return split_support_query(positions, labels, self.meta, self.shots)

    def sample_many(self, n: int, seed: int) -> list[FewShotTask]:
        """`n` tasks drawn with Python's `random` seeded to `seed` (its state is restored afterwards)."""
        state = random.getstate()
        random.seed(seed)
        try:
            return [self.sample() for _ in range(n)]
        finally:
            random.setstate(state)


def confidence_interval(accuracies: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean task accuracy (mean +- t * std / sqrt(n))."""
    from scipy import stats

    n = len(accuracies)
    mean = float(np.mean(accuracies))
    if n < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(accuracies, ddof=1) / np.sqrt(n))
    return mean - half, mean + half
