"""Continual-learning streams from a task, as Avalanche benchmarks (train / valid / test streams).

Two kinds (`method.stream`):
- class_incremental: the task's classes split into `method.experiences` groups (`method.class_order`:
  sorted, or a permutation from the run seed); experience i holds the examples of group i in every
  split. One shared head over all classes (class-incremental, no task labels).
- domain_incremental: the same classes in a new input domain per experience. Images: the whole task
  rotated by one angle per experience (`method.angles`, or `method.experiences` angles spaced by
  `method.angle_step` degrees from 0). Text: the run's task, then each task in `method.domain_tasks`
  (e.g. Rotten Tomatoes sentences, then IMDB reviews), loaded with the run's data sizes.

Inputs become one tensor per example, because Avalanche strategies call `model(x)`: images as
float (C, H, W), text as token ids padded to the task's max_length (the model wrapper trims them).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tunebench.datasets.task import Split, Task

log = logging.getLogger("tunebench")

STREAM_KINDS = ("class_incremental", "domain_incremental")
SPLIT_STREAMS = {"train": "train", "validation": "valid", "test": "test"}  # task split -> Avalanche stream name


@dataclass
class Experience:
    """One experience: its name, classes, and the encoded inputs / labels of each split."""
    name: str
    classes: list[int]
    splits: dict = field(default_factory=dict)  # "train" / "validation" / "test" -> (inputs tensor, labels tensor)


@dataclass
class Streams:
    kind: str
    experiences: list[Experience]
    refined_experiences: list[int]  # experiences built from the (possibly refined) run task

    def benchmark(self):
        """The Avalanche benchmark: one dataset per experience in each of the train / valid / test streams."""
        from avalanche.benchmarks.scenarios import benchmark_from_datasets, with_task_labels

        streams = {stream: [avalanche_dataset(*e.splits[split]) for e in self.experiences]
                   for split, stream in SPLIT_STREAMS.items()}
        return with_task_labels(benchmark_from_datasets(**streams))

    def summary(self) -> list[dict]:
        return [{"name": e.name, "classes": e.classes, **{f"{k}_size": int(len(v[1])) for k, v in e.splits.items()}}
                for e in self.experiences]


def avalanche_dataset(inputs: torch.Tensor, labels: torch.Tensor):
    """(x, y, task label 0) examples with the `targets` attributes Avalanche's strategies and metrics read."""
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset

    targets = labels.tolist()
    return TaskAwareSupervisedClassificationDataset(
        [TensorDataset(inputs, labels)],
        data_attributes=[DataAttribute(targets, "targets"),
                         DataAttribute([0] * len(targets), "targets_task_labels", use_in_getitem=True)],
    )


# -- encoding ----------------------------------------------------------------------------------------
def image_tensor(inputs: list) -> torch.Tensor:
    pixels = torch.as_tensor(np.stack([np.asarray(x, dtype=np.float32) for x in inputs]))
    return pixels.unsqueeze(1) if pixels.ndim == 3 else pixels


def token_tensor(tokenizer, inputs: list, max_length: int) -> torch.Tensor:
    if tokenizer is None:
        raise ValueError("continual methods need a tokenizer for text tasks; this model has none (config-only model)")
    return tokenizer(list(inputs), padding="max_length", truncation=True, max_length=max_length,
                     return_tensors="pt")["input_ids"]


def encode_split(split: Split, task: Task, tokenizer, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = image_tensor(split.x) if task.modality == "image" else token_tensor(tokenizer, split.x, max_length)
    return inputs, torch.as_tensor(np.asarray(split.y, dtype=np.int64))


# -- class-incremental -------------------------------------------------------------------------------
def class_groups(task: Task, experiences: int, order: str, seed: int) -> list[list[int]]:
    """The task's classes in `order`, split into `experiences` contiguous groups (sizes differ by at most 1)."""
    if task.num_classes < experiences:
        raise ValueError(
            f"method.stream=class_incremental with method.experiences={experiences}: data={task.name} has only "
            f"{task.num_classes} classes ({', '.join(task.classes)}), fewer than the experiences, so some "
            f"experiences would have no class. Use method.experiences<={task.num_classes}, or "
            f"method.stream=domain_incremental (text: method.domain_tasks, e.g. rotten_tomatoes then imdb)")
    if order == "sorted":
        classes = list(range(task.num_classes))
    elif order == "seed":
        classes = np.random.default_rng(seed).permutation(task.num_classes).tolist()
    else:
        raise ValueError(f"method.class_order={order!r}: expected 'sorted' or 'seed'")
    return [[int(c) for c in group] for group in np.array_split(classes, experiences)]


def class_incremental(task: Task, cfg, seed: int, tokenizer) -> Streams:
    groups = class_groups(task, int(cfg.experiences), str(cfg.class_order), seed)
    max_length = int(task.meta.get("max_length", 128))
    encoded = {name: encode_split(split, task, tokenizer, max_length)
               for name, split in (("train", task.train), ("validation", task.validation), ("test", task.test))}
    experiences = []
    for group in groups:
        splits = {}
        for name, (inputs, labels) in encoded.items():
            keep = torch.as_tensor(np.isin(labels.numpy(), group))
            if not keep.any():
                raise ValueError(f"class-incremental experience with classes {group} has no {name} examples "
                                 f"in data={task.name} (after refinement)")
            splits[name] = (inputs[keep], labels[keep])
        experiences.append(Experience("classes " + ",".join(task.classes[c] for c in group), group, splits))
    return Streams("class_incremental", experiences, list(range(len(experiences))))


# -- domain-incremental ------------------------------------------------------------------------------
def rotation_angles(cfg) -> list[float]:
    if cfg.get("angles") is not None:
        return [float(a) for a in cfg.angles]
    return [float(cfg.angle_step) * i for i in range(int(cfg.experiences))]


def rotate_images(pixels: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate (N, C, H, W) images about their centre, keeping the size; corners fill with 0 (background)."""
    if angle % 360 == 0:
        return pixels.clone()
    from scipy.ndimage import rotate

    rotated = rotate(pixels.numpy(), angle, axes=(2, 3), reshape=False, order=1, mode="constant", cval=0.0)
    return torch.as_tensor(np.clip(rotated, 0.0, 1.0), dtype=torch.float32)


def rotated_domains(task: Task, cfg) -> Streams:
    angles = rotation_angles(cfg)
    if cfg.get("angles") is not None and cfg.get("experiences") is not None and int(cfg.experiences) != len(angles):
        raise ValueError(f"method.experiences={cfg.experiences} but method.angles has {len(angles)} angles; "
                         f"set one of them (method.experiences=null to follow the angles)")
    classes = list(range(task.num_classes))
    encoded = {name: encode_split(split, task, None, 0)
               for name, split in (("train", task.train), ("validation", task.validation), ("test", task.test))}
    experiences = [Experience(f"rotated {angle:g} deg", classes,
                              {name: (rotate_images(x, angle), y) for name, (x, y) in encoded.items()})
                   for angle in angles]
    return Streams("domain_incremental", experiences, list(range(len(experiences))))


def text_domains(task: Task, cfg, load_task, tokenizer) -> Streams:
    names = [str(n) for n in (cfg.get("domain_tasks") or [])]
    if not names:
        raise ValueError("method.stream=domain_incremental on a text task needs method.domain_tasks: the tasks that "
                         "follow the run's task, e.g. method.domain_tasks=[imdb] after data=rotten_tomatoes")
    if cfg.get("experiences") is not None and int(cfg.experiences) != 1 + len(names):
        raise ValueError(f"method.experiences={cfg.experiences}: a text domain stream has 1 + len(method.domain_tasks) "
                         f"= {1 + len(names)} experiences (data={task.name}, then {names}); set method.experiences=null")
    max_length = int(task.meta.get("max_length", 128))
    tasks = [task]
    for name in names:
        # The run's data sizes and split seed, another source; never refined (refinements apply to the run's task).
        domain = load_task(name)
        if domain.classes != task.classes:
            raise ValueError(f"method.domain_tasks: {name} has classes {domain.classes}, data={task.name} has "
                             f"{task.classes}; a domain-incremental stream needs the same classes in every experience")
        tasks.append(domain)
    experiences = [Experience(t.name, list(range(t.num_classes)),
                              {name: encode_split(split, t, tokenizer, max_length)
                               for name, split in (("train", t.train), ("validation", t.validation), ("test", t.test))})
                   for t in tasks]
    return Streams("domain_incremental", experiences, [0])


def build_streams(task: Task, cfg, load_task, seed: int, tokenizer=None) -> Streams:
    """The stream `cfg.stream` names (cfg: the `method` node; load_task(name): another task with the run's data settings)."""
    kind = str(cfg.stream)
    if kind not in STREAM_KINDS:
        raise ValueError(f"method.stream={kind!r}: expected one of {', '.join(STREAM_KINDS)}")
    if kind == "class_incremental":
        return class_incremental(task, cfg, seed, tokenizer)
    if task.modality == "image":
        return rotated_domains(task, cfg)
    return text_domains(task, cfg, load_task, tokenizer)
