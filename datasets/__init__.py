"""Tasks: built-in offline tasks, local files, HuggingFace hub datasets and image-text pairs, behind one `load`."""
from __future__ import annotations

from tunebench.core.registry import Registry

from .task import Split, Task

# name -> builder(cfg) -> Task; modules below register themselves.
TASKS: Registry = Registry("task", package=__name__)


def load(cfg) -> Task:
    """Build the task that `cfg.data.name` names (the `data` config group)."""
    return TASKS.get(cfg.name)(cfg)


__all__ = ["Split", "Task", "TASKS", "load"]
