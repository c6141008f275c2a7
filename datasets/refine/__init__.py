"""Dataset refinements: `apply(task, ctx) -> Refined(task, init, report)`, chained in config order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunebench.registry import Registry

from ..task import Task

REFINEMENTS: Registry = Registry("refinement", plugin_modules=tuple(
    f"tunebench.datasets.refine.{name}" for name in ("none", "validated", "synthetic", "augmented", "ssl", "active")))


class AwaitingLabels(Exception):
    """A human oracle must label the queries written to `path` before the run can go on.

    Not a failure: the runner records status `awaiting_labels` and re-running the same command
    after the labels are filled in resumes from that round."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = path


def refinement_seed(cfg, ctx) -> int:
    """The seed of a refinement's artefacts: `refine.<name>.seed` if set (default 0 in the YAMLs, so
    every method and run seed shares one artefact), else the run seed (`seed: null`)."""
    seed = cfg.get("seed")
    return int(ctx.get("seed", 0)) if seed is None else int(seed)


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
