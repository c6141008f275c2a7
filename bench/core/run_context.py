"""The method contract: what a method gets for one run, and what it gives back.

A method receives its own config node (`method`), the run's shared training settings, the task,
the model, the meter and a way to make the engine; it never reads another config group (`data`,
`refine`) nor the root config, and it reports back only through its `Result`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunebench.core.checkpoint import RunCheckpoint
from tunebench.core.engine import Engine, Hook, TrainJob, TrainSettings, autocast, device_type, lr_for
from tunebench.core.meter import CostMeter


@dataclass
class RunContext:
    method: Any                 # the method's own config node (cfg.method)
    train: TrainSettings        # train.*, validated
    seed: int
    task: Any                   # tunebench.datasets.task.Task
    model: Any                  # tunebench.core.models.Model (net already adapted and on its device)
    meter: CostMeter
    cache_dir: Path | None = None
    checkpoint: RunCheckpoint | None = None
    log_metrics: Callable[[dict, int], None] | None = None
    load_task: Callable[[str], Any] | None = None  # another task by name, with the run's data settings (continual domains)

    @property
    def lr(self) -> float:
        """method.lr (image_lr on image tasks) times train.lr_scale."""
        return lr_for(self.method, self.train, self.task.modality)

    @property
    def device(self) -> str:
        return device_type(self.model.net)

    def engine(self, job: TrainJob, steps: int, hooks: tuple[Hook, ...] = (), steps_per_epoch: int | None = None) -> Engine:
        return Engine(job, steps, self.train, self.meter, lr=self.lr, checkpoint=self.checkpoint,
                      log_metrics=self.log_metrics, hooks=hooks, steps_per_epoch=steps_per_epoch)

    def autocast(self):
        """The run's precision for forward passes outside the engine (test predictions)."""
        return autocast(self.train, self.device)


@dataclass
class Result:
    metrics: dict
    curve: list = field(default_factory=list)
    resumed_from_step: int = 0
    engine: dict | None = None  # the scale knobs as applied (precision, accumulation, ...)
