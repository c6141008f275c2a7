"""Dataset refinements: `apply(task, ctx) -> Refined(task, init, report)`, chained in config order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunebench.registry import Registry

from ..task import Task

REFINEMENTS: Registry = Registry("refinement", plugin_modules=("tunebench.datasets.refine.none", "tunebench.datasets.refine.validated"))


@dataclass
class Refined:
    task: Task
    init: Any = None  # e.g. self-supervised weights to initialise the model with
    report: dict = field(default_factory=dict)


def apply_chain(task: Task, refine_cfg, ctx) -> tuple[Task, Any, list[dict]]:
    """Apply each configured refinement in order; `none` entries are skipped."""
    init, reports = None, []
    for key, cfg in (refine_cfg or {}).items():
        name = cfg.get("name", key)
        if name == "none":
            continue
        refined = REFINEMENTS.get(name)(task, cfg, ctx)
        task, init = refined.task, refined.init if refined.init is not None else init
        reports.append({"name": name, **refined.report})
    return task, init, reports


def chain_name(refine_cfg) -> str:
    names = [cfg.get("name", key) for key, cfg in (refine_cfg or {}).items()]
    return "+".join(n for n in names if n != "none") or "none"
