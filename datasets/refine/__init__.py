"""Dataset refinements: `refinement(task, cfg, ctx: RefineContext) -> Refined(task, init, report)`,
chained in config order. A refinement reads its own config node and the context; it returns what it
produces (data, init weights) and never builds the run's model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunebench.core.registry import Registry
from tunebench.core.seeding import isolated_rng

from ..task import Task

REFINEMENTS: Registry = Registry("refinement", package=__name__)  # every module here that registers one


class AwaitingLabels(Exception):
    """A human oracle must label the queries written to `path` before the run can go on.

    Not a failure: the runner records status `awaiting_labels` and re-running the same command
    after the labels are filled in resumes from that round."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = path


def entry_for_modality(registry: Registry, task: Task, name: str, defaults: dict, key: str) -> str:
    """Resolve `auto` to the modality's default and check that registry entry `name` (a
    `(modality, function)` pair) handles the task's modality; `key` names the config key in errors."""
    if name == "auto":
        name = defaults.get(task.modality, "")
    modality, _ = registry.get(name)
    if modality != task.modality:
        fitting = [n for n in registry.names() if registry.get(n)[0] == task.modality]
        article = "an" if task.modality[0] in "aeiou" else "a"
        raise ValueError(f"{key}={name!r} works on {modality} data; data={task.name} is {article} {task.modality} task "
                         f"(use one of {fitting})")
    return name


@dataclass(frozen=True)
class RefineContext:
    """What the runner gives every refinement (read-only)."""
    seed: int = 0  # the run seed
    cache_dir: Path | None = None  # None: build artefacts in a throwaway folder (unit tests)
    # Untrained copies of the run's architecture for the task (tunebench.core.models.ModelFactory):
    # `ssl` pretrains one and returns its weights as `init`; the run's model is built by the runner.
    architecture: Callable | None = None


def refinement_seed(cfg, ctx: RefineContext) -> int:
    """The seed of a refinement's artefacts: `refine.<name>.seed` if set (default 0 in the YAMLs, so
    every method and run seed shares one artefact), else the run seed (`seed: null`)."""
    seed = cfg.get("seed")
    return ctx.seed if seed is None else int(seed)


@dataclass
class Refined:
    task: Task
    init: Any = None  # e.g. self-supervised weights to initialise the model with
    report: dict = field(default_factory=dict)


DEFAULT_MODALITIES = ("image", "text")  # a refinement handles more by setting `.modalities` on its function


def check_modality(name: str, refinement, task: Task) -> None:
    supported = getattr(refinement, "modalities", DEFAULT_MODALITIES)
    if task.modality not in supported:
        fitting = [n for n in REFINEMENTS.names()
                   if n != "none" and task.modality in getattr(REFINEMENTS.get(n), "modalities", DEFAULT_MODALITIES)]
        article = "an" if task.modality[0] in "aeiou" else "a"
        raise ValueError(f"refine={name} works on {'/'.join(supported)} tasks; data={task.name} is {article} {task.modality} task "
                         f"(use refine={' or refine='.join(['none', *fitting])})")


def apply_chain(task: Task, refine_cfg, ctx: RefineContext) -> tuple[Task, Any, list[dict]]:
    """Apply each configured refinement in order; `none` entries are skipped."""
    init, reports = None, []
    for key, cfg in (refine_cfg or {}).items():
        name = cfg.get("name", key)
        if name == "none":
            continue
        refinement = REFINEMENTS.get(name)
        check_modality(name, refinement, task)
        with isolated_rng():  # same model init and data order whether artefacts are built or loaded
            refined = refinement(task, cfg, ctx)
        task, init = refined.task, refined.init if refined.init is not None else init
        reports.append({"name": name, **refined.report})
    return task, init, reports


def split_refinements(refine_cfg) -> list[str]:
    """The configured refinements that change the training split (not only the model's initialisation)."""
    names = [cfg.get("name", key) for key, cfg in (refine_cfg or {}).items()]
    return [n for n in names if n != "none" and getattr(REFINEMENTS.get(n), "changes_training_split", True)]


def chain_name(refine_cfg) -> str:
    names = [cfg.get("name", key) for key, cfg in (refine_cfg or {}).items()]
    return "+".join(n for n in names if n != "none") or "none"
