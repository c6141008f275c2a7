"""The identity refinement: the task as loaded (the baseline every variant is compared with)."""
from . import REFINEMENTS, Refined


@REFINEMENTS.register("none")
def no_refinement(task, cfg, ctx) -> Refined:
    return Refined(task=task, report={"changed": False})
